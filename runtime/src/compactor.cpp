// The background compactor: one thread that serves explicit requests and, when the policy
// engine says so, runs compaction cycles on the heap.
#include "valet/compactor.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "policy_engine.h"

namespace valet {

struct Compactor::Impl {
  explicit Impl(Heap& h, const PolicySettings& s) : heap(h), settings(s) {}

  Heap& heap;
  mutable std::mutex mu;  // settings, queue, counters, stop
  std::condition_variable cv;
  PolicySettings settings;
  policy::EngineState engine;  // touched only under `cycle_mu`
  std::mutex cycle_mu;         // one decision+cycle at a time (thread, safepoint or request)
  // Decisions and requested cycles so far (bumped under `cycle_mu`): the background thread
  // drops an observation made before the latest of them.
  std::atomic<std::uint64_t> decisions{0};
  struct Pending {
    CompactRequest request;
    std::promise<Result<CompactionRecord>> done;
  };
  std::deque<Pending> queue;
  Counters counters;
  bool stopping = false;
  std::thread thread;

  static std::uint64_t now_ns() {
    return std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count());
  }

  policy::Observation observe() {
    policy::Observation o;
    o.now_ns = now_ns();
    const HeapStats s = heap.stats();
    o.allocations = s.ops.allocate;
    o.failed_allocations = s.ops.failed_allocations;
    o.free_pages = s.largest_allocatable_bytes / kPageBytes;
    o.classes = heap.occupancy();
    o.open_tails = heap.open_tail_bytes();
    o.live_bytes = s.live_bytes;
    o.mapped_bytes = s.mapped_bytes;
    o.reserve_bytes = s.reserve_bytes;
    o.region_hole_bytes = s.copy_region.hole_bytes;
    o.region_mapped_bytes = s.copy_region.mapped_bytes;
    o.region_hole_high = heap.config().copy_region_hole_high;
    o.region_chunk_bytes = heap.config().copy_region_chunk_bytes;
    return o;
  }

  // Decides on `obs` and runs the chosen cycle (the caller holds `cycle_mu`). Returns the
  // cycle's record, nothing when the policy wants no cycle now, or the cycle's error.
  Result<std::optional<CompactionRecord>> decide_and_run(const policy::Observation& obs, bool safepoint) {
    PolicySettings s;
    {
      std::lock_guard lock(mu);
      s = settings;
    }
    decisions.fetch_add(1, std::memory_order_relaxed);
    auto d = policy::decide(s, obs, engine, safepoint);
    if (!d) return std::optional<CompactionRecord>{};
    auto rec = heap.compact(d->request);
    std::lock_guard lock(mu);
    if (!rec.ok()) {
      ++counters.failed_cycles;
      return rec.error();
    }
    policy::account(engine, *rec);
    ++counters.cycles;
    if (safepoint) ++counters.safepoint_cycles;
    switch (d->trigger) {
      case CompactionTrigger::fragmentation: ++counters.fragmentation; break;
      case CompactionTrigger::reserve_low: ++counters.reserve_low; break;
      case CompactionTrigger::idle: ++counters.idle; break;
      case CompactionTrigger::safepoint: ++counters.safepoints; break;
      case CompactionTrigger::tails: ++counters.tails; break;
      default: break;
    }
    return std::optional<CompactionRecord>{*rec};
  }

  // The background thread's step. It observes before taking `cycle_mu` (observing waits for the
  // heap lock, and a safepoint must not find the thread holding `cycle_mu` through that wait),
  // and drops its observation if a decision or a cycle (a safepoint's, a request's) came in
  // between: that one saw a newer heap.
  void background_step() {
    const std::uint64_t seen = decisions.load(std::memory_order_relaxed);
    const policy::Observation obs = observe();
    std::lock_guard cl(cycle_mu);
    if (decisions.load(std::memory_order_relaxed) != seen) return;
    (void)decide_and_run(obs, false);
  }

  // A safepoint never waits for another cycle: if one is running (or being decided), the
  // compactor is at work already and the caller goes on.
  Result<std::optional<CompactionRecord>> safepoint_step() {
    {
      std::lock_guard lock(mu);
      if (stopping) return make_error(Errc::shut_down, "the compactor was stopped");
      ++counters.safepoint_calls;
    }
    std::unique_lock cl(cycle_mu, std::try_to_lock);
    if (!cl.owns_lock()) {
      std::lock_guard lock(mu);
      ++counters.safepoint_busy;
      return std::optional<CompactionRecord>{};
    }
    return decide_and_run(observe(), true);
  }

  void run() {
    std::unique_lock lock(mu);
    while (!stopping) {
      cv.wait_for(lock, std::chrono::milliseconds(settings.interval_ms), [&] { return stopping || !queue.empty(); });
      if (stopping) break;
      if (!queue.empty()) {
        Pending p = std::move(queue.front());
        queue.pop_front();
        lock.unlock();
        Result<CompactionRecord> rec = make_error(Errc::internal, "unset");
        {
          std::lock_guard cl(cycle_mu);
          decisions.fetch_add(1, std::memory_order_relaxed);
          rec = heap.compact(p.request);
          if (rec.ok()) policy::account(engine, *rec);
        }
        // Counted before the requester is woken, so its counters() read includes this request.
        lock.lock();
        ++counters.explicit_requests;
        if (rec.ok()) ++counters.cycles;
        lock.unlock();
        p.done.set_value(rec);
        lock.lock();
        continue;
      }
      if (!settings.background) continue;
      lock.unlock();
      background_step();
      lock.lock();
    }
    // Requests that never ran get a clear answer.
    for (auto& p : queue) p.done.set_value(make_error(Errc::shut_down, "the compactor was stopped"));
    queue.clear();
  }
};

Compactor::Compactor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Compactor>> Compactor::start(Heap& heap, const PolicySettings& settings) {
  if (heap.is_shut_down()) return make_error(Errc::shut_down, "Compactor::start: the heap was shut down");
  // Validate by round-tripping every field through its setter.
  PolicySettings checked;
  for (const auto& [k, v] : policy_values(settings)) VALET_TRY(set_policy_value(checked, k, v));
  auto impl = std::make_unique<Impl>(heap, settings);
  auto* raw = impl.get();
  raw->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<Compactor>(new Compactor(std::move(impl)));
}

Compactor::~Compactor() { stop(); }

void Compactor::stop() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

PolicySettings Compactor::settings() const {
  std::lock_guard lock(impl_->mu);
  return impl_->settings;
}

Status Compactor::update(const PolicySettings& s) {
  PolicySettings checked;
  for (const auto& [k, v] : policy_values(s)) VALET_TRY(set_policy_value(checked, k, v));
  {
    std::lock_guard lock(impl_->mu);
    impl_->settings = s;
  }
  impl_->cv.notify_all();
  return {};
}

Status Compactor::set(const std::string& key, const std::string& value) {
  std::lock_guard lock(impl_->mu);
  PolicySettings s = impl_->settings;
  VALET_TRY(set_policy_value(s, key, value));
  impl_->settings = s;
  impl_->cv.notify_all();
  return {};
}

Result<CompactionRecord> Compactor::request(const CompactRequest& request, bool wait) {
  std::future<Result<CompactionRecord>> done;
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopping) return make_error(Errc::shut_down, "the compactor was stopped");
    impl_->queue.push_back({request, {}});
    done = impl_->queue.back().done.get_future();
  }
  impl_->cv.notify_all();
  if (!wait) return CompactionRecord{};
  return done.get();
}

Result<std::optional<CompactionRecord>> Compactor::safepoint() { return impl_->safepoint_step(); }

Compactor::Counters Compactor::counters() const {
  std::lock_guard lock(impl_->mu);
  return impl_->counters;
}

}  // namespace valet
