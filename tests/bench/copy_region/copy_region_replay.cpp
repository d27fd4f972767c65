// valet-bench-copy-region: replays a gpuheap-trace through the copying region's bookkeeping
// (heap/src/copy_region.h) alone, with the policy docs/copying_placement.md proposes around it,
// and reports what the heap would pay: chunks mapped and unmapped, bytes copied, objects moved,
// the region's memory figures, and the region's own CPU time. No memory is touched and no driver
// is called; the estimates use the per-call costs and copy bandwidth arena_model.py uses (a 64 MiB
// chunk's create + map + grant ~58 us, its unmap + release ~78 us, copies at 2.9 TB/s read plus
// written), so the two can be set side by side.
//
// Policy: objects of at least --region-min-bytes live in the region (smaller ones are a slab
// page's and left out of every figure). A keeper keeps --headroom-chunks chunks mapped above the
// top and trims the surplus once it reaches --hysteresis chunks. An allocation that finds no
// hole and no mapped room grows the region itself (a "caller growth": a miss on the heap). At
// each step line (and after each free with --eager), while holes exceed --hole-hi of the mapped
// bytes, compaction runs rounds down to --hole-lo, at most --budget-mib a compaction, committing
// every move. A probe that fits nowhere runs compaction without a budget before it counts as
// failed.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <iostream>
#include <vector>

#include "copy_region.h"
#include "trace.h"

namespace {

using valet::detail::CopyRegion;
using Clock = std::chrono::steady_clock;  // the sums per call (cheap to read)
// Thread CPU time, for the longest round and compaction: the region's own work, not the time this
// thread was descheduled (this costs a system call a reading, too much for every call).
struct CpuClock {
  using time_point = std::chrono::nanoseconds;
  static time_point now() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  }
};

struct Options {
  std::string trace;
  double chunk_mib = 64;
  std::uint64_t region_min_bytes = (1u << 20) + 1;
  double hole_hi = 0.035, hole_lo = 0.025;
  double budget_mib = 64;
  std::uint32_t headroom_chunks = 1, hysteresis = 2;
  std::size_t scan = 200, hole_scan = 200;
  bool eager = false, json = false;
};

struct Figures {
  std::uint64_t allocs = 0, region_allocs = 0, caller_growths = 0, chunks_created = 0, chunks_released = 0;
  std::uint64_t compactions = 0, rounds = 0, moves = 0, moved_bytes = 0, growths_for_runs = 0;
  std::uint64_t probes = 0, probes_failed = 0, probe_compactions = 0;
  double live = 0, peak_live = 0, peak_mapped = 0, sum_live = 0, sum_mapped = 0;
  std::uint64_t steps = 0;
  std::uint64_t region_ns = 0, region_calls = 0, compaction_ns = 0, compaction_ns_max = 0, round_ns_max = 0;
};

class Replay {
 public:
  Replay(const Options& o, std::uint64_t capacity) : o_(o), chunk_(std::uint64_t(o.chunk_mib * (1 << 20))) {
    auto r = CopyRegion::create({capacity / chunk_ * chunk_, chunk_, 512});
    if (!r) throw std::runtime_error(r.error().to_string());
    region_.emplace(std::move(r).value());
  }

  void allocate(std::uint32_t object, std::uint64_t bytes) {
    ++f_.allocs;
    if (bytes < o_.region_min_bytes) return;
    ++f_.region_allocs;
    const auto t0 = Clock::now();
    auto at = region_->place(bytes, object);
    if (!at) {
      const auto growth = region_->growth_for(bytes);
      if (!growth) throw std::runtime_error("the region's capacity cannot hold an allocation of " + std::to_string(bytes));
      ++f_.caller_growths;
      grow(*growth);
      at = region_->place(bytes, object);
    }
    timed(t0);
    if (objects_.size() <= object) objects_.resize(object + 1, kNone);
    objects_[object] = *at;
    f_.live += double(bytes);
    if (f_.live > f_.peak_live) {
      f_.peak_live = f_.live;
      f_.peak_mapped = std::max(f_.peak_mapped, double(region_->mapped()));
    }
    keep();
  }

  void free(std::uint32_t object, std::uint64_t bytes) {
    if (bytes < o_.region_min_bytes) return;
    const auto t0 = Clock::now();
    check(region_->free(objects_[object]));
    timed(t0);
    objects_[object] = kNone;
    f_.live -= double(bytes);
    if (o_.eager && over_hi()) compact(o_.hole_lo, o_.budget_mib);
    keep();
  }

  void step() {
    ++f_.steps;
    if (over_hi()) {
      compact(o_.hole_lo, o_.budget_mib);
      keep();
    }
    f_.sum_live += f_.live;
    f_.sum_mapped += double(region_->mapped());
    f_.peak_mapped = std::max(f_.peak_mapped, double(region_->mapped()));
  }

  void probe(std::uint64_t bytes) {
    ++f_.probes;
    if (bytes < o_.region_min_bytes) return;
    if (region_->growth_for(bytes)) return;  // a hole, the mapped top, or growth within the capacity
    ++f_.probe_compactions;
    compact(0, 1e12);
    if (!region_->growth_for(bytes)) ++f_.probes_failed;
  }

  void finish() { check(region_->validate()); }

  nlohmann::json report() const {
    const double chunk_s = double(f_.chunks_created) * 58e-6 + double(f_.chunks_released) * 78e-6;
    const double copy_s = double(f_.moved_bytes) * 2 / 2.9e12;
    return {{"trace", o_.trace},
            {"chunk_mib", o_.chunk_mib},
            {"region_min_bytes", o_.region_min_bytes},
            {"peak_mapped_over_live", f_.peak_live > 0 ? f_.peak_mapped / f_.peak_live : 0},
            {"fragmentation_mean", f_.sum_mapped > 0 ? 1 - f_.sum_live / f_.sum_mapped : 0},
            {"allocations", f_.allocs},
            {"region_allocations", f_.region_allocs},
            {"caller_growths", f_.caller_growths},
            {"chunks_created", f_.chunks_created},
            {"chunks_released", f_.chunks_released},
            {"chunk_driver_s_est", chunk_s},
            {"compactions", f_.compactions},
            {"rounds", f_.rounds},
            {"growths_for_runs", f_.growths_for_runs},
            {"objects_moved", f_.moves},
            {"bytes_copied", f_.moved_bytes},
            {"copy_device_s_est", copy_s},
            {"probes", f_.probes},
            {"probes_failed", f_.probes_failed},
            {"probe_compactions", f_.probe_compactions},
            {"place_free_ns_per_call", f_.region_calls ? double(f_.region_ns) / double(f_.region_calls) : 0},
            {"compaction_cpu_s", double(f_.compaction_ns) * 1e-9},
            {"compaction_cpu_ns_max", f_.compaction_ns_max},
            {"round_plan_cpu_ns_max", f_.round_ns_max}};
  }

 private:
  static constexpr CopyRegion::Offset kNone = ~CopyRegion::Offset{0};

  static void check(const valet::Status& s) {
    if (!s) throw std::runtime_error(s.error().to_string());
  }
  void timed(Clock::time_point t0) {
    f_.region_ns += std::uint64_t(std::chrono::nanoseconds(Clock::now() - t0).count());
    ++f_.region_calls;
  }
  bool over_hi() const { return double(region_->hole_bytes()) > o_.hole_hi * double(region_->mapped()); }
  void grow(std::uint64_t bytes) {
    check(region_->grow(bytes));
    f_.chunks_created += bytes / chunk_;
  }
  // The keeper: the headroom mapped above the top, the surplus past the hysteresis trimmed.
  void keep() {
    const std::uint64_t want_end = region_->top() + std::uint64_t(o_.headroom_chunks) * chunk_;
    const std::uint64_t want = std::min(region_->capacity(), (want_end + chunk_ - 1) / chunk_ * chunk_);
    if (region_->mapped() < want) {
      grow(want - region_->mapped());
    } else if (const std::uint64_t extra = region_->surplus(std::uint64_t(o_.headroom_chunks) * chunk_, o_.hysteresis)) {
      check(region_->shrink(extra));
      f_.chunks_released += extra / chunk_;
    }
  }
  void compact(double lo, double budget_mib) {
    ++f_.compactions;
    const auto c0 = CpuClock::now();
    const std::uint64_t budget = std::uint64_t(budget_mib * (1 << 20));
    std::uint64_t spent = 0;
    while (spent < budget) {
      const std::uint64_t target = std::uint64_t(lo * double(region_->mapped()));
      if (region_->hole_bytes() <= target) break;
      const auto r0 = CpuClock::now();
      auto round = region_->plan_round({target, budget - spent, o_.scan, ~std::uint64_t{0}, o_.hole_scan}, [](std::uint32_t) { return true; });
      f_.round_ns_max = std::max(f_.round_ns_max, std::uint64_t((CpuClock::now() - r0).count()));
      ++f_.rounds;
      if (round.growth_wanted) {
        ++f_.growths_for_runs;
        grow(round.growth_wanted);
        continue;
      }
      if (round.moves.empty()) break;
      for (const auto& m : round.moves) {
        check(region_->commit(m));
        objects_[m.owner] = m.to;
        spent += m.bytes;
        ++f_.moves;
        f_.moved_bytes += m.bytes;
      }
    }
    const auto cpu = std::uint64_t((CpuClock::now() - c0).count());
    f_.compaction_ns += cpu;
    f_.compaction_ns_max = std::max(f_.compaction_ns_max, cpu);
  }

  Options o_;
  std::uint64_t chunk_;
  std::optional<CopyRegion> region_;
  std::vector<CopyRegion::Offset> objects_;  // by the trace's object slot
  Figures f_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Replays a gpuheap-trace through the copying region's bookkeeping and estimates its costs"};
  app.add_option("trace", o.trace, "gpuheap-trace v1 file (.gz too)")->required()->check(CLI::ExistingFile);
  app.add_option("--chunk-mib", o.chunk_mib, "physical chunk, the unit of growth and trims")->check(CLI::Range(1.0, 4096.0));
  app.add_option("--region-min-bytes", o.region_min_bytes, "objects of at least this size live in the region")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 40));
  app.add_option("--hole-hi", o.hole_hi, "compact when holes / mapped passes this")->check(CLI::Range(0.0, 1.0));
  app.add_option("--hole-lo", o.hole_lo, "compact down to this")->check(CLI::Range(0.0, 1.0));
  app.add_option("--budget-mib", o.budget_mib, "bytes one compaction copies at most")->check(CLI::Range(0.0, 1e9));
  app.add_option("--headroom-chunks", o.headroom_chunks, "chunks kept mapped above the top")->check(CLI::Range(0, 1024));
  app.add_option("--hysteresis", o.hysteresis, "surplus chunks before a trim")->check(CLI::Range(0, 1024));
  app.add_option("--scan", o.scan, "objects and holes a round looks at")->check(CLI::Range(1, 1 << 24));
  app.add_option("--hole-scan", o.hole_scan, "hole sizes a move looks at, from the tightest, for one below its object")
      ->check(CLI::Range(1, 1 << 24));
  app.add_flag("--eager", o.eager, "compact after frees as well as at step lines");
  app.add_flag("--json", o.json, "one JSON object");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (o.hole_lo > o.hole_hi) {
    std::cerr << "--hole-lo must not exceed --hole-hi\n";
    return 2;
  }
  try {
    valet::replay::TraceReader reader(o.trace);
    valet::replay::TraceOp op;
    std::optional<Replay> replay;
    while (reader.next(op)) {
      if (!replay) replay.emplace(o, reader.summary().header_capacity.value_or(std::size_t{80} << 30));
      switch (op.kind) {
        case valet::replay::OpKind::allocate: replay->allocate(op.object, op.bytes); break;
        case valet::replay::OpKind::free: replay->free(op.object, op.bytes); break;
        case valet::replay::OpKind::step: replay->step(); break;
        case valet::replay::OpKind::probe: replay->probe(op.bytes); break;
      }
    }
    if (reader.error()) {
      std::cerr << o.trace << ": " << reader.error()->to_string() << "\n";
      return 1;
    }
    if (!replay) {
      std::cerr << o.trace << ": no operations\n";
      return 1;
    }
    replay->finish();
    const auto r = replay->report();
    if (o.json) {
      std::cout << r.dump() << "\n";
    } else {
      for (const auto& [k, v] : r.items()) std::cout << k << " " << v << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "valet-bench-copy-region: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
