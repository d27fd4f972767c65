// valet-stress: worker threads run a random mix of heap operations on objects whose every byte is
// known, a compaction thread moves objects all the time, and the main thread stops the world
// now and then to check every live object and the heap's invariants. At the end everything is
// freed, the heap shut down, and (host backend) every page must be back with the backend.
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "checkpoint_gate.h"
#include "compaction_driver.h"
#include "exchange_board.h"
#include "object_patterns.h"
#include "stress_heap.h"
#include "stress_options.h"
#include "stress_worker.h"
#include "valet/stats_json.h"

namespace valet::stress {
namespace {

using Clock = std::chrono::steady_clock;

class StressRun {
 public:
  StressRun(const StressOptions& options, StressHeap& opened)
      : o_(options), opened_(opened), heap_(*opened.heap), board_(4 * std::size_t(options.threads)),
        gate_(options.threads + 1) {}

  int execute();

 private:
  WorkerLimits limits_for(int worker) const;
  void compaction_loop();
  // --lock-holder: occupancy() and now and then validate() until the workers stop; a failed
  // validate() is an error.
  void lock_holder_loop();
  // Stop-the-world check: every object's bytes, validate(), and the heap's live counts.
  void checkpoint(const char* when);
  std::vector<TrackedObject> all_objects();
  void finish();
  void print_results(double seconds);

  const StressOptions& o_;
  StressHeap& opened_;
  Heap& heap_;
  StressCounters counters_;
  ErrorSink errors_;
  ExchangeBoard board_;
  CheckpointGate gate_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> stop_compaction_{false};
  std::atomic<int> workers_done_{0};
  std::atomic<std::uint64_t> next_object_id_{1};
  std::vector<std::unique_ptr<StressWorker>> workers_;
  Stream stream_{};
  HeapStats final_stats_;
  struct Overhead {  // mapped beyond the footprint, at checkpoints
    std::size_t samples = 0, sum_bytes = 0, max_bytes = 0, slab_pages_at_max = 0, live_bytes_at_max = 0;
  } overhead_;
};

WorkerLimits StressRun::limits_for(int worker) const {
  WorkerLimits l;
  const std::size_t threads = std::size_t(o_.threads);
  // Together the workers aim just under the capacity (by default): allocations fail now and then,
  // and the heap has to compact (emergency cycles) to serve them.
  l.byte_budget = std::size_t(double(o_.capacity) * o_.budget / double(threads));
  l.max_object_bytes = std::max<std::size_t>(1, std::min(o_.max_object, o_.capacity / (2 * threads)));
  l.max_objects = 2048;
  l.large_share = o_.large_share;
  if (o_.ops) l.ops = o_.ops / threads + (std::size_t(worker) < o_.ops % threads ? 1 : 0);
  return l;
}

void StressRun::compaction_loop() {
  Rng rng(o_.seed ^ 0xc0c0c0c0ull);
  while (!stop_compaction_.load(std::memory_order_relaxed)) {
    if (gate_.requested()) gate_.park();
    drive_compaction_once(heap_, rng, opened_.faults != nullptr, counters_, errors_);
    if (o_.compact_pause_us)
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (2 * o_.compact_pause_us + 1)));
  }
  gate_.leave();
}

void StressRun::lock_holder_loop() {
  // Not one of the gate's parties: its calls read the heap under its lock and change nothing, so
  // a checkpoint may run beside them. occupancy() holds the lock for a walk of every slab page
  // (a policy's reading) and leaves the threads' fast paths open, as a compaction step or the
  // mapper's placement would: large allocations that find the lock held are made pending
  // without it. Every 64th turn is a validate() (which closes the fast paths for its walk).
  // Between turns a pause as long as the turn, about: the workers still get the lock.
  for (std::uint64_t turn = 1; !stop_.load(std::memory_order_relaxed); ++turn) {
    const auto t0 = Clock::now();
    if (turn % 64 == 0) {
      if (auto st = heap_.validate(); !st.ok()) errors_.report("validate beside the workers", st.error());
      counters_.add(counters_.validations);
    } else {
      (void)heap_.occupancy();
    }
    std::this_thread::sleep_for(Clock::now() - t0);
  }
}

std::vector<TrackedObject> StressRun::all_objects() {
  std::vector<TrackedObject> all = board_.snapshot();
  for (auto& w : workers_) {
    auto mine = w->objects();
    all.insert(all.end(), mine.begin(), mine.end());
  }
  return all;
}

void StressRun::checkpoint(const char* when) {
  const auto objects = all_objects();
  verify_objects(heap_, stream_, objects, when, counters_, errors_);
  if (auto st = heap_.validate(); !st.ok()) errors_.report(std::string("validate ") + when, st.error());
  std::size_t bytes = 0;
  for (const auto& obj : objects) bytes += obj.size;
  const HeapStats s = heap_.stats();
  if (s.live_objects != objects.size() || s.live_bytes != bytes)
    errors_.report(std::string(when) + ": the heap counts " + std::to_string(s.live_objects) + " objects of " +
                   std::to_string(s.live_bytes) + " bytes, the test owns " + std::to_string(objects.size()) +
                   " of " + std::to_string(bytes));
  counters_.add(counters_.checkpoints);
  // What the heap holds beyond its objects' footprint, and in which pages: out-of-memory near the
  // workers' budget comes from there.
  const std::size_t over = s.mapped_bytes > s.footprint_bytes ? s.mapped_bytes - s.footprint_bytes : 0;
  overhead_.sum_bytes += over;
  ++overhead_.samples;
  if (over >= overhead_.max_bytes) {
    overhead_.max_bytes = over;
    overhead_.slab_pages_at_max = s.pages.slab - s.pages.shared_tails;
    overhead_.live_bytes_at_max = s.live_bytes;
  }
}

void StressRun::finish() {
  // Faults are off from here: the end checks the heap's state, not its error paths.
  if (opened_.faults) opened_.faults->disarm_all();
  checkpoint("final check");
  const HeapStats at_end = heap_.stats();
  auto objects = all_objects();
  (void)board_.drain();
  for (const TrackedObject& obj : objects)
    if (auto st = heap_.free(obj.handle); !st.ok()) errors_.report("final free of " + describe(obj), st.error());
  if (auto st = heap_.validate(); !st.ok()) errors_.report("validate after freeing everything", st.error());
  const HeapStats emptied = heap_.stats();
  if (emptied.live_objects != 0 || emptied.live_bytes != 0)
    errors_.report("objects left after freeing everything: " + std::to_string(emptied.live_objects));
  // The heap as the run left it (before the final frees), with the compaction totals of the end.
  final_stats_ = at_end;
  final_stats_.compaction = emptied.compaction;
  if (auto st = heap_.backend().destroy_stream(stream_); !st.ok()) errors_.report("destroy_stream", st.error());
  if (auto st = heap_.shutdown(); !st.ok()) errors_.report("shutdown", st.error());
  if (heap_.allocate(1).code() != Errc::shut_down) errors_.report("allocate after shutdown did not fail with shut_down");
  if (opened_.host && opened_.host->pages_in_use() != 0)
    errors_.report("page leak: " + std::to_string(opened_.host->pages_in_use()) +
                   " host pages still in use after shutdown");
}

int StressRun::execute() {
  auto stream = heap_.backend().create_stream();
  if (!stream.ok()) {
    std::fprintf(stderr, "valet-stress: create_stream: %s\n", stream.error().to_string().c_str());
    return 1;
  }
  stream_ = *stream;
  if (opened_.faults) arm_random_faults(*opened_.faults, o_.fault_rate, o_.seed);
  for (int t = 0; t < o_.threads; ++t) {
    WorkerShared shared{heap_, counters_, errors_, board_, gate_, stop_, next_object_id_, opened_.faults != nullptr};
    workers_.push_back(std::make_unique<StressWorker>(shared, limits_for(t), o_.seed * 1000003 + std::uint64_t(t)));
  }
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (auto& w : workers_)
    threads.emplace_back([&, worker = w.get()] {
      worker->run();
      workers_done_.fetch_add(1);
    });
  std::thread compactor([&] { compaction_loop(); });
  std::thread holder;
  if (o_.lock_holder) holder = std::thread([&] { lock_holder_loop(); });

  const auto deadline = t0 + std::chrono::duration<double>(o_.seconds);
  auto next_check = t0 + std::chrono::duration<double>(o_.checkpoint_seconds);
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto now = Clock::now();
    if (workers_done_.load() == o_.threads || (!o_.ops && now >= deadline)) break;
    if (now >= next_check) {
      gate_.run_paused([&] { checkpoint("checkpoint"); });
      next_check = Clock::now() + std::chrono::duration<double>(o_.checkpoint_seconds);
    }
  }
  stop_ = true;
  for (auto& t : threads) t.join();
  if (holder.joinable()) holder.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  stop_compaction_ = true;
  compactor.join();
  finish();
  print_results(seconds);
  return errors_.count() == 0 ? 0 : 1;
}

void StressRun::print_results(double seconds) {
  const auto& c = counters_;
  const auto& comp = final_stats_.compaction;
  auto get = [](const std::atomic<std::uint64_t>& a) { return a.load(); };
  if (o_.json) {
    nlohmann::json j;
    j["backend"] = final_stats_.backend;
    j["threads"] = o_.threads;
    j["seed"] = o_.seed;
    j["capacity"] = o_.capacity;
    j["seconds"] = seconds;
    j["ops"] = get(c.ops);
    j["ops_per_second"] = double(get(c.ops)) / seconds;
    j["allocations"] = get(c.allocations);
    j["frees"] = get(c.frees);
    j["resizes"] = get(c.resizes);
    j["host_pins"] = get(c.host_pins);
    j["stream_pins"] = get(c.stream_pins);
    j["exchanges"] = get(c.exchanges);
    j["cross_thread_pins"] = get(c.cross_thread_pins);
    j["out_of_memory"] = get(c.out_of_memory);
    j["first_out_of_memory"] = c.first_out_of_memory_message();
    j["refusals_checked"] = get(c.refusals_checked);
    j["compact_calls"] = get(c.compact_calls);
    j["compaction_cycles"] = comp.cycles;
    j["emergency_cycles"] = comp.emergency_cycles;
    j["objects_moved"] = comp.objects_moved;
    j["bytes_moved"] = comp.bytes_moved;
    j["pages_freed"] = comp.pages_freed;
    j["pages_meshed"] = comp.pages_meshed;
    j["chunks_created"] = final_stats_.pages.chunks_created;
    j["bytes_verified"] = get(c.bytes_verified);
    j["objects_verified"] = get(c.objects_verified);
    j["checkpoints"] = get(c.checkpoints);
    j["validations_beside_workers"] = get(c.validations);
    j["unlocked_misses"] = final_stats_.ops.unlocked_misses;
    j["faults_injected"] = faults_injected(opened_);
    j["fault_errors"] = get(c.fault_errors);
    j["errors"] = errors_.count();
    j["overhead_mean_bytes"] = overhead_.samples ? overhead_.sum_bytes / overhead_.samples : 0;
    j["overhead_max_bytes"] = overhead_.max_bytes;
    j["overhead_max_slab_pages"] = overhead_.slab_pages_at_max;
    j["overhead_max_live_bytes"] = overhead_.live_bytes_at_max;
    j["stats"] = to_json(final_stats_);
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  if (get(c.out_of_memory) > 0) std::printf("first out-of-memory: %s\n", c.first_out_of_memory_message().c_str());
  std::printf(
      "valet-stress: %s, %s: %llu ops (%.0f/s), %llu compaction cycles (%llu emergency), %llu objects moved "
      "(%.1f MiB), %llu pages meshed, %.1f GiB verified in %llu checks, %llu checkpoints, %llu faults injected "
      "(%llu surfaced), %llu out-of-memory, %llu errors\n",
      final_stats_.backend.c_str(), describe(o_).c_str(), (unsigned long long)get(c.ops), double(get(c.ops)) / seconds,
      (unsigned long long)comp.cycles, (unsigned long long)comp.emergency_cycles,
      (unsigned long long)comp.objects_moved, double(comp.bytes_moved) / (1 << 20),
      (unsigned long long)comp.pages_meshed, double(get(c.bytes_verified)) / (1 << 30),
      (unsigned long long)get(c.objects_verified), (unsigned long long)get(c.checkpoints),
      (unsigned long long)faults_injected(opened_), (unsigned long long)get(c.fault_errors),
      (unsigned long long)get(c.out_of_memory), (unsigned long long)errors_.count());
  if (o_.lock_holder) std::printf("lock holder: validate() passed %llu times beside the workers\n", (unsigned long long)get(c.validations));
  if (final_stats_.ops.background_misses > 0)
    std::printf("background misses: %llu mapped by the heap's thread, %llu of them made without the heap lock\n",
                (unsigned long long)final_stats_.ops.background_misses,
                (unsigned long long)final_stats_.ops.unlocked_misses);
  if (overhead_.samples > 0)
    std::printf("held beyond the objects' footprint at %zu checkpoints: mean %.1f MiB, max %.1f MiB (%zu slab pages of "
                "their own, %.1f MiB live)\n",
                overhead_.samples, double(overhead_.sum_bytes) / double(overhead_.samples) / (1 << 20),
                double(overhead_.max_bytes) / (1 << 20), overhead_.slab_pages_at_max,
                double(overhead_.live_bytes_at_max) / (1 << 20));
}

}  // namespace
}  // namespace valet::stress

int main(int argc, char** argv) {
  using namespace valet::stress;
  StressOptions options;
  if (auto rc = parse_options(argc, argv, options)) return *rc;
  auto opened = open_stress_heap(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "valet-stress: cannot open the heap: %s\n", opened.error().to_string().c_str());
    return 1;
  }
  if (!opened->skipped.empty()) {
    std::printf("skipped: %s\n", opened->skipped.c_str());
    return 0;
  }
  return StressRun(options, *opened).execute();
}
