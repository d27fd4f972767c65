// The replayer core (see replayer.h).
#include "replayer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "alloc_tail.h"
#include "latency.h"
#include "live_set.h"
#include "step_log.h"

namespace valet::replay {

namespace {

using Clock = std::chrono::steady_clock;

// The CPU time this thread has used: read around each allocation (outside its timed window), so
// that a slow allocation tells whether it ran or waited off the CPU (descheduled, or asleep on
// a lock or a condition).
std::uint64_t thread_cpu_ns() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return std::uint64_t(t.tv_sec) * 1'000'000'000u + std::uint64_t(t.tv_nsec);
}

std::uint64_t ns_between(Clock::time_point a, Clock::time_point b) {
  return std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
}

// Median and percentiles as the PyTorch baseline replayer computes them (latency.h), so the
// figures compare.
void latency_figures(const LatencyHistogram& alloc, const LatencyHistogram& free, ReplayReport& r) {
  r.alloc_ns_median = alloc.median();
  r.alloc_ns_p90 = alloc.percentile(0.90);
  r.alloc_ns_p95 = alloc.percentile(0.95);
  r.alloc_ns_p99 = alloc.percentile(0.99);
  r.alloc_ns_p999 = alloc.percentile(0.999);
  r.alloc_ns_max = double(alloc.max());
  r.free_ns_median = free.median();
  r.free_ns_p99 = free.percentile(0.99);
  r.free_ns_max = double(free.max());
}
ReplayReport::SizeClassLatency size_class_figures(const LatencyHistogram& h) {
  return {h.count(), h.median(), h.percentile(0.99), double(h.max())};
}
double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Adds the seconds from its construction to its end to `into` (a part of wall_parts_s).
struct TimeInto {
  double& into;
  Clock::time_point since = Clock::now();
  ~TimeInto() { into += seconds_between(since, Clock::now()); }
};

// The heap-lock waits of one kind of call (Heap::this_thread_lock_wait_ns around each).
struct LockWaits {
  LatencyHistogram ns;
  std::uint64_t waited = 0;
  double total_s = 0;
  std::array<double, kLockHolders.size()> by_holder_s{};
  void add(std::uint64_t wait_ns, const HolderWaitsNs& by_holder_ns) {
    ns.add(wait_ns);
    waited += wait_ns > 0;
    total_s += double(wait_ns) / 1e9;
    for (std::size_t i = 0; i < by_holder_s.size(); ++i) by_holder_s[i] += double(by_holder_ns[i]) / 1e9;
  }
  ReplayReport::LockWait figures() const {
    return {waited, total_s, ns.percentile(0.99), double(ns.max()), by_holder_s};
  }
};

// The calling thread's heap-lock waits since `before`, by holder (kLockHolders' order).
HolderWaitsNs waits_since(const Heap::LockWaitsByHolder& before) {
  const Heap::LockWaitsByHolder now = Heap::this_thread_lock_wait_by_holder();
  return {now.callers_ns - before.callers_ns, now.mapper_ns - before.mapper_ns, now.keeper_ns - before.keeper_ns,
          now.compaction_ns - before.compaction_ns};
}

// Ops are read in batches between timed stretches, so that reading the trace (decompression and
// parsing) stays out of wall_s, and memory stays bounded by the batch.
constexpr std::size_t kBatch = 4096;

class Replayer {
 public:
  Replayer(Heap& heap, TraceReader& trace, const TraceSummary& checked, const ReplayOptions& options)
      : heap_(heap),
        trace_(trace),
        checked_(checked),
        options_(options),
        door_(heap.driver_calls()),
        pinner_options_(options.pinners),
        objects_(checked.objects) {
    if (options_.verify) signatures_.emplace(heap_, options_.signature_path);
    if (options_.pinners.threads > 0) {
      live_set_ = std::make_unique<LiveSet>(checked.objects);
      pinner_options_.replay_line = &current_line_;
    }
    if (!options_.step_log.empty() && !step_log_.open(options_.step_log))
      problem("cannot write the step log " + options_.step_log);
  }

  ReplayReport run() {
    if (live_set_) pinners_ = std::make_unique<Pinners>(heap_, *live_set_, pinner_options_);
    replay_ops();
    // No pin may outlive the replay: the heap aborts when destroyed under one.
    if (pinners_) pinners_->stop();
    // Its counters are final from here, and nothing moves while the leftovers are checked.
    if (options_.compactor) options_.compactor->stop();
    free_leftovers();
    if (auto st = heap_.validate(); !st.ok()) problem("validate after the replay: " + st.error().to_string());
    finish();
    return std::move(report_);
  }

 private:
  struct ObjectSlot {
    Handle handle;
    std::uint64_t id = 0;
    std::uint64_t bytes = 0;
    bool live = false;
  };

  void replay_ops() {
    std::vector<TraceOp> batch(kBatch);
    std::uint64_t ops = 0;
    for (bool more = true; more;) {
      std::size_t n = 0;
      while (n < kBatch && (more = trace_.next(batch[n]))) {
        const bool has_slot = batch[n].kind == OpKind::allocate || batch[n].kind == OpKind::free;
        if (has_slot && batch[n].object >= objects_.size()) {
          more = false;  // more objects live at once than when checked: the file changed
          ops = checked_.ops + 1;
          break;
        }
        ++n;
      }
      const auto start = Clock::now();
      for (std::size_t i = 0; i < n; ++i) replay_op(batch[i]);
      report_.wall_s += std::chrono::duration<double>(Clock::now() - start).count();
      ops += n;
      if (n) last_line_ = batch[n - 1].line;
      if (ops > checked_.ops) break;
    }
    // The file was checked before the heap was touched: it changed since, or cannot be read now.
    if (trace_.error())
      report_.trace_error = trace_.error()->to_string();
    else if (ops < checked_.ops)
      report_.trace_error = "the trace changed since it was checked: it ends after " + std::to_string(ops) +
                            " of its " + std::to_string(checked_.ops) + " operations";
    else if (ops > checked_.ops)
      report_.trace_error = "the trace changed since it was checked: it holds more than its " +
                            std::to_string(checked_.ops) + " operations, or more objects live at once";
  }

  void replay_op(const TraceOp& op) {
    current_line_.store(op.line, std::memory_order_relaxed);
    switch (op.kind) {
      case OpKind::allocate:
        return on_allocate(op);
      case OpKind::free:
        return on_free(op);
      case OpKind::step:
        return on_step(op);
      case OpKind::probe:
        return on_probe(op);
    }
  }

  void problem(const std::string& message) {
    ++report_.heap_errors;
    report_.note_problem(message);
  }
  void problem_at(const TraceOp& op, const std::string& what, const Error& e) {
    problem("line " + std::to_string(op.line) + ": " + what + ": " + e.to_string());
  }

  // Adds the driver calls this thread made since `window` began to the alloc path's count. The
  // window opens right before a heap call and is read right after it, outside the timed span.
  // Returns how many it made.
  std::uint64_t count_driver_calls(const ThreadDriverCalls& window, DriverCallCounts& into) {
    const DriverCallCounts made = window.made();
    for (std::size_t i = 0; i < kDriverOpCount; ++i) into.by_op[i] += made.by_op[i];
    return made.total();
  }
  std::uint64_t count_driver_calls(const ThreadDriverCalls& window) {
    return count_driver_calls(window, report_.alloc_path_driver_calls);
  }

  void on_allocate(const TraceOp& op) {
    const ThreadDriverCalls window(door_);
    const std::uint64_t waited_before = Heap::this_thread_lock_wait_ns();
    const Heap::LockWaitsByHolder holders_before = Heap::this_thread_lock_wait_by_holder();
    const std::uint64_t misses_before = Heap::this_thread_background_misses();
    const std::uint64_t cpu_before = thread_cpu_ns();
    const auto asked = Clock::now();
    auto h = allocate(op.bytes);
    const auto answered = Clock::now();
    const std::uint64_t cpu_ns = thread_cpu_ns() - cpu_before;
    const std::uint64_t lock_wait_ns = Heap::this_thread_lock_wait_ns() - waited_before;
    const auto by_holder = waits_since(holders_before);
    alloc_lock_waits_.add(lock_wait_ns, by_holder);
    const std::uint64_t ns = ns_between(asked, answered);
    alloc_ns_.add(ns);
    (op.bytes < kPageBytes ? alloc_ns_under_page_ : alloc_ns_pages_).add(ns);
    const bool pending = Heap::this_thread_background_misses() != misses_before;
    if (pending)
      alloc_ns_pending_.add(ns);
    else if (op.bytes >= kPageBytes)
      alloc_ns_pages_not_pending_.add(ns);
    report_.wall_parts_s.allocate += seconds_between(asked, answered);
    const std::uint64_t calls = count_driver_calls(window);
    if (calls > 0) ++report_.allocs_with_calls;
    note_slow_allocation({op.line, op.bytes, ns, lock_wait_ns, calls, pending, cpu_ns});
    alloc_tail_.add(ns, lock_wait_ns, pending, calls > 0, op.bytes < kPageBytes, by_holder);
    ++report_.ops;
    if (!h.ok()) {
      // The trace frees the object later; its slot stays not live and the free is skipped.
      if (h.code() == Errc::out_of_memory)
        ++report_.ooms;
      else
        problem_at(op, "allocate " + std::to_string(op.bytes) + " bytes", h.error());
      return;
    }
    objects_[op.object] = {*h, op.id, op.bytes, true};
    if (pending) unsettled_.push_back(*h);
    live_bytes_ += op.bytes;
    if (live_bytes_ > report_.peak_live_bytes) {
      // Live bytes peak inside a step, between the step lines where mapped bytes are sampled:
      // sample mapped bytes at the live peak too, so the two peaks are compared at one moment.
      report_.peak_live_bytes = live_bytes_;
      const TimeInto timed{report_.wall_parts_s.peak_samples};
      wait_for_pending_objects();
      note_mapped(heap_.stats().mapped_bytes, op.line);
    }
    report_.allocated_bytes += op.bytes;
    if (signatures_) {
      const TimeInto timed{report_.wall_parts_s.signatures};
      if (auto st = signatures_->write(*h, op.id, op.bytes); !st.ok())
        problem_at(op, "writing the signature", st.error());
    }
    // Pinners see the object only once its signature is in place.
    if (live_set_) live_set_->insert(op.object, {*h, op.id, op.bytes});
  }

  // Keeps the kSlowestKept slowest allocations, slowest first (a short sorted list: an
  // allocation slower than its last entry is rare after the first few thousand).
  void note_slow_allocation(const ReplayReport::SlowAllocation& a) {
    auto& kept = report_.slowest_allocations;
    if (kept.size() == ReplayReport::kSlowestKept && a.ns <= kept.back().ns) return;
    const auto at = std::find_if(kept.begin(), kept.end(), [&](const auto& k) { return a.ns > k.ns; });
    kept.insert(at, a);
    if (kept.size() > ReplayReport::kSlowestKept) kept.pop_back();
  }

  void on_free(const TraceOp& op) {
    ObjectSlot& slot = objects_[op.object];
    if (!slot.live) return;  // its allocation was refused
    if (live_set_) live_set_->erase(op.object);
    if (signatures_) {
      const TimeInto timed{report_.wall_parts_s.signatures};
      check_signature(op, slot.handle);
    }
    const ThreadDriverCalls window(door_);
    const std::uint64_t waited_before = Heap::this_thread_lock_wait_ns();
    const Heap::LockWaitsByHolder holders_before = Heap::this_thread_lock_wait_by_holder();
    const auto asked = Clock::now();
    const Status st = free_when_unpinned(slot.handle);
    const auto answered = Clock::now();
    free_lock_waits_.add(Heap::this_thread_lock_wait_ns() - waited_before, waits_since(holders_before));
    free_ns_.add(ns_between(asked, answered));
    report_.wall_parts_s.free += seconds_between(asked, answered);
    if (count_driver_calls(window)) ++report_.frees_with_calls;
    if (!st.ok()) problem_at(op, "free", st.error());
    slot.live = false;
    live_bytes_ -= op.bytes;
  }

  void on_step(const TraceOp& op) {
    // Sampled before anything the heap does at this step.
    const auto step_began = Clock::now();
    wait_for_pending_objects();
    const auto asked = Clock::now();
    const HeapStats s = heap_.stats();
    const std::uint64_t stats_ns = ns_between(asked, Clock::now());
    note_mapped(s.mapped_bytes, op.line);
    note_cycles(s);
    sum_live_ += double(live_bytes_);
    sum_mapped_ += double(s.mapped_bytes);
    sum_reserve_ += double(s.reserve_bytes);
    ++steps_seen_;
    if (s.mapped_bytes) {
      sum_unweighted_ += 1.0 - double(live_bytes_) / double(s.mapped_bytes);
      ++unweighted_steps_;
    }
    // The step line is the loop's safepoint: the policy may run a (bounded) cycle here.
    std::optional<CompactionRecord> cycle;
    if (options_.compactor) {
      const auto before = Clock::now();
      auto sp = options_.compactor->safepoint();
      const std::uint64_t sp_ns = ns_between(before, Clock::now());
      report_.safepoint_ns_max = std::max(report_.safepoint_ns_max, sp_ns);
      report_.safepoint_ns_total += sp_ns;
      if (!sp.ok()) {
        ++safepoint_failures_;
        problem_at(op, "safepoint", sp.error());
      } else if (*sp) {
        cycle = **sp;
        note_cycle(*cycle);
        report_.safepoint_cycle_ns_max = std::max(report_.safepoint_cycle_ns_max, sp_ns);
      }
    }
    if (step_log_.is_open()) step_log_.row(op.line, live_bytes_, s, stats_ns, cycle ? &*cycle : nullptr);
    report_.wall_parts_s.step += seconds_between(step_began, Clock::now());
    if (options_.think_per_step.count() > 0) {
      const auto before = Clock::now();
      std::this_thread::sleep_for(options_.think_per_step);
      report_.think_s += std::chrono::duration<double>(Clock::now() - before).count();
    }
  }

  void on_probe(const TraceOp& op) {
    const TimeInto timed{report_.wall_parts_s.probe};
    wait_for_pending_objects();
    note_mapped(heap_.stats().mapped_bytes, op.line);
    ++report_.probes;
    // A probe is the benchmark's instrument, not the workload: half the free memory at once,
    // which no reserve within the memory targets holds mapped. Its driver calls are counted
    // apart from the alloc path's (not timed either).
    const ThreadDriverCalls window(door_);
    auto h = allocate(op.bytes);
    const Status st = h.ok() ? free_when_unpinned(*h) : ok_status();
    count_driver_calls(window, report_.probe_driver_calls);
    if (!h.ok()) {
      ++report_.probes_failed;
      if (h.code() != Errc::out_of_memory) problem_at(op, "probe of " + std::to_string(op.bytes) + " bytes", h.error());
      return;
    }
    if (!st.ok()) problem_at(op, "free of a probe", st.error());
  }

  Result<Handle> allocate(std::size_t bytes) {
    if (!options_.fixed) return heap_.allocate(bytes);
    constexpr std::size_t kAlign = 512;  // libvalet_torch's rounding (PyTorch's alignment)
    auto obj = heap_.allocate_fixed((bytes + kAlign - 1) / kAlign * kAlign);
    if (!obj.ok()) return obj.error();
    return obj->handle;
  }

  // A pinner may hold the object for a few microseconds: wait for it, as a service's free waits
  // for the kernels that use the object.
  Status free_when_unpinned(Handle h) {
    for (;;) {
      Status st = options_.free_stream ? heap_.free(h, *options_.free_stream) : heap_.free(h);
      if (st.code() != Errc::pinned) return st;
      ++report_.free_retries;
      std::this_thread::yield();
    }
  }

  void check_signature(const TraceOp& op, Handle h) {
    if (!signatures_) return;
    auto differ = signatures_->check(h, op.id, op.bytes);
    if (!differ.ok()) return problem_at(op, "checking the signature", differ.error());
    ++report_.verified_objects;
    if (*differ == 0) return;
    ++report_.verify_errors;
    report_.note_problem("line " + std::to_string(op.line) + ": object " + std::to_string(op.id) + " (" +
                         std::to_string(op.bytes) + " bytes): " + std::to_string(*differ) +
                         " bytes of its signature differ");
  }

  // Waits until the objects allocated pending since the last sample (background misses) hold
  // their pages: a pending object counts among the live bytes before the mapper has placed and
  // mapped it, so a sample taken meanwhile would count it live but not mapped and flatter the
  // memory figures. A pin waits for the mapping; a service's step uses its objects as well.
  void wait_for_pending_objects() {
    for (Handle h : unsettled_) (void)heap_.pin(h);  // a freed one is stale: nothing to wait for
    unsettled_.clear();
  }

  void note_mapped(std::uint64_t mapped, std::uint32_t line) {
    if (mapped <= report_.peak_mapped_bytes) return;
    report_.peak_mapped_bytes = mapped;
    report_.peak_mapped_line = line;
    // What those pages were (a second reading, at once: the heap's background threads may have
    // moved a page or two between them).
    const HeapStats s = heap_.stats();
    auto& pp = report_.peak_mapped_pages;
    pp.live = (live_bytes_ + kPageBytes - 1) / kPageBytes;
    pp.large = s.pages.large;
    pp.slab_own = s.pages.slab - s.pages.shared_tails;
    pp.reserve = s.pages.reserve;
    pp.releasing = s.pages.releasing;
    pp.moving = s.pages.moving;
  }

  // The heap keeps its last 16 cycle records; emergency cycles run inside allocate(), so the
  // replayer sees their pin waits here, at the next step.
  void note_cycles(const HeapStats& s) {
    for (const CompactionRecord& c : s.recent_cycles) note_cycle(c);
  }
  void note_cycle(const CompactionRecord& c) {
    if (c.longest_pin_wait_ns <= report_.pin_wait_ns_max_cycles) return;
    report_.pin_wait_ns_max_cycles = c.longest_pin_wait_ns;
    report_.pin_wait_max_cycle = c;
  }

  // Objects the trace left live: checked and freed (the trace never resizes, so their signature
  // is still the one written at allocation).
  void free_leftovers() {
    for (ObjectSlot& slot : objects_) {
      if (!slot.live) continue;
      TraceOp leftover;
      leftover.kind = OpKind::allocate;
      leftover.line = last_line_;
      leftover.id = slot.id;
      leftover.bytes = slot.bytes;
      check_signature(leftover, slot.handle);
      if (auto st = heap_.free(slot.handle); !st.ok()) problem_at(leftover, "free at the end", st.error());
      slot.live = false;
      live_bytes_ -= slot.bytes;
    }
  }

  void finish() {
    ReplayReport& r = report_;
    const HeapStats s = heap_.stats();
    note_cycles(s);
    r.compactions = s.compaction.cycles;
    r.emergency_compactions = s.compaction.emergency_cycles;
    r.pages_meshed = s.compaction.pages_meshed;
    r.bytes_meshed = s.compaction.bytes_meshed;
    if (options_.compactor) {
      const Compactor::Counters c = options_.compactor->counters();
      r.compactor = true;
      r.compactor_cycles = c.cycles;
      r.safepoint_calls = c.safepoint_calls;
      r.safepoint_cycles = c.safepoint_cycles;
      r.safepoint_busy = c.safepoint_busy;
      r.background_cycles = c.fragmentation + c.reserve_low + c.idle + c.safepoints + c.tails - c.safepoint_cycles;
      r.cycles_fragmentation = c.fragmentation;
      r.cycles_reserve_low = c.reserve_low;
      r.cycles_idle = c.idle;
      r.cycles_safepoint_trigger = c.safepoints;
      r.cycles_tails = c.tails;
      r.failed_cycles = c.failed_cycles;
      // Failed safepoint cycles were reported where they happened; background ones are here.
      if (c.failed_cycles > safepoint_failures_) {
        r.heap_errors += c.failed_cycles - safepoint_failures_;
        r.note_problem(std::to_string(c.failed_cycles - safepoint_failures_) +
                       " background compaction cycles failed (Heap::compact returned an error)");
      }
    }
    r.bytes_moved = s.compaction.bytes_moved;
    r.objects_moved = s.compaction.objects_moved;
    r.pages_freed = s.compaction.pages_freed;
    r.chunks_created = s.pages.chunks_created;
    r.copy_region = s.copy_region;
    r.background_misses = s.ops.background_misses;
    r.lost_allocations = s.ops.lost_allocations;
    r.misses_placed_by_mapper = s.ops.misses_placed_by_mapper;
    r.small_misses_placed_by_mapper = s.ops.small_misses_placed_by_mapper;
    r.misses_served_by_pins = s.ops.misses_served_by_pins;
    r.mapper_wakes = s.ops.mapper_wakes;
    r.unlocked_misses = s.ops.unlocked_misses;
    r.cached_allocations = s.ops.cached_allocations;
    r.cached_run_allocations = s.ops.cached_run_allocations;
    r.keeper = s.keeper;
    r.lock_holds = s.lock_holds;
    r.under_heap_lock_driver_calls = door_.under_lock();
    r.total_driver_calls = door_.totals();
    r.driver_times = door_.times();
    r.pin_wait_ns_max = r.pin_wait_ns_max_cycles;
    r.moved_fraction = r.allocated_bytes ? double(r.bytes_moved) / double(r.allocated_bytes) : 0.0;
    r.copied_fraction =
        r.allocated_bytes ? double(r.bytes_moved + r.bytes_meshed) / double(r.allocated_bytes) : 0.0;
    r.mean_fragmentation = sum_mapped_ > 0 ? 1.0 - sum_live_ / sum_mapped_ : 0.0;
    r.mean_reserve_bytes = steps_seen_ ? sum_reserve_ / double(steps_seen_) : 0.0;
    r.mean_fragmentation_without_reserve =
        sum_mapped_ > sum_reserve_ ? 1.0 - sum_live_ / (sum_mapped_ - sum_reserve_) : 0.0;
    r.mean_fragmentation_unweighted = unweighted_steps_ ? sum_unweighted_ / double(unweighted_steps_) : 0.0;
    latency_figures(alloc_ns_, free_ns_, r);
    r.alloc_ns_under_page = size_class_figures(alloc_ns_under_page_);
    r.alloc_ns_pages = size_class_figures(alloc_ns_pages_);
    r.alloc_ns_pending = size_class_figures(alloc_ns_pending_);
    r.alloc_ns_pages_not_pending = size_class_figures(alloc_ns_pages_not_pending_);
    r.alloc_lock_wait = alloc_lock_waits_.figures();
    r.free_lock_wait = free_lock_waits_.figures();
    r.alloc_tail = alloc_tail_.figures(r.alloc_ns_p99);
    if (pinners_) {
      const PinnerCounters c = pinners_->counters();
      r.pins = c.pins;
      r.pins_stale = c.stale;
      r.pin_errors = c.errors;
      r.pin_waits_over_100us = c.waits_over_100us;
      r.pin_waits_over_1ms = c.waits_over_1ms;
      r.pins_preempted = c.preempted;
      r.pin_wait_ns_max_unpreempted = c.max_wait_unpreempted_ns;
      r.verify_errors += c.signature_errors;
      r.pin_wait_ns_max = std::max(r.pin_wait_ns_max, c.max_wait_ns);
      r.pin_wait_max_lines[0] = c.max_wait_line;
      r.pin_wait_max_lines[1] = c.max_wait_end_line;
      if (!c.first_error.empty()) r.note_problem("pinner: " + c.first_error);
    }
    if (r.peak_mapped_bytes < r.peak_live_bytes)
      r.note_problem("peak_mapped_bytes (" + std::to_string(r.peak_mapped_bytes) + ") < peak_live_bytes (" +
                     std::to_string(r.peak_live_bytes) + "): the heap cannot hold less than what is live");
  }

  Heap& heap_;
  TraceReader& trace_;
  const TraceSummary& checked_;
  const ReplayOptions& options_;
  const CountingBackend& door_;  // the heap's counting door: the alloc path's driver calls
  PinnerOptions pinner_options_;
  std::atomic<std::uint32_t> current_line_{0};
  std::vector<ObjectSlot> objects_;
  std::vector<Handle> unsettled_;  // allocated pending since the last sample of mapped bytes
  std::optional<Signatures> signatures_;
  std::unique_ptr<LiveSet> live_set_;
  std::unique_ptr<Pinners> pinners_;
  StepLog step_log_;
  ReplayReport report_;
  LatencyHistogram alloc_ns_;
  LatencyHistogram free_ns_;
  LatencyHistogram alloc_ns_under_page_, alloc_ns_pages_, alloc_ns_pending_, alloc_ns_pages_not_pending_;
  LockWaits alloc_lock_waits_, free_lock_waits_;
  AllocTail alloc_tail_;
  std::uint32_t last_line_ = 0;  // of the last op replayed
  std::uint64_t live_bytes_ = 0;
  double sum_live_ = 0, sum_mapped_ = 0, sum_unweighted_ = 0, sum_reserve_ = 0;
  std::uint64_t unweighted_steps_ = 0, steps_seen_ = 0;
  std::uint64_t safepoint_failures_ = 0;
};

}  // namespace

ReplayReport replay(Heap& heap, TraceReader& trace, const TraceSummary& checked, const ReplayOptions& options) {
  return Replayer(heap, trace, checked, options).run();
}

}  // namespace valet::replay
