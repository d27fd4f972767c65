// The background compactor: one thread that serves explicit requests and, when the policy
// engine says so, runs compaction cycles on the heap.
#include "valet/compactor.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
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
  std::mutex cycle_mu;         // one decision+cycle at a time (thread or safepoint)
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
    o.free_pages = s.largest_allocatable_bytes / (std::size_t{2} << 20);
    o.classes = heap.occupancy();
    return o;
  }

  // Observes, decides, and runs the chosen cycle. Returns true if a cycle ran.
  bool policy_step(bool safepoint) {
    std::lock_guard cl(cycle_mu);
    PolicySettings s;
    {
      std::lock_guard lock(mu);
      s = settings;
    }
    auto d = policy::decide(s, observe(), engine, safepoint);
    if (!d) return false;
    auto rec = heap.compact(d->request);
    if (!rec.ok()) return false;
    policy::account(engine, *rec);
    std::lock_guard lock(mu);
    ++counters.cycles;
    switch (d->trigger) {
      case CompactionTrigger::fragmentation: ++counters.fragmentation; break;
      case CompactionTrigger::reserve_low: ++counters.reserve_low; break;
      case CompactionTrigger::idle: ++counters.idle; break;
      case CompactionTrigger::safepoint: ++counters.safepoints; break;
      default: break;
    }
    return true;
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
          rec = heap.compact(p.request);
          if (rec.ok()) policy::account(engine, *rec);
        }
        p.done.set_value(rec);
        lock.lock();
        ++counters.explicit_requests;
        if (rec.ok()) ++counters.cycles;
        continue;
      }
      if (!settings.background) continue;
      lock.unlock();
      policy_step(false);
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

void Compactor::safepoint() { impl_->policy_step(true); }

Compactor::Counters Compactor::counters() const {
  std::lock_guard lock(impl_->mu);
  return impl_->counters;
}

}  // namespace valet
