// Stops the world for a checkpoint: the controller asks, every participant (worker and compaction
// threads) parks between two of its operations, the controller checks the heap while nothing
// changes, then lets everyone go. A participant that has finished leaves the gate for good.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace valet::stress {

class CheckpointGate {
 public:
  explicit CheckpointGate(int participants) : active_(participants) {}

  // Cheap test, for participants between operations.
  bool requested() const { return requested_.load(std::memory_order_acquire); }

  // Parks until the checkpoint in progress (if any) is over. A participant must have finished
  // every asynchronous piece of work it started (synchronized its streams) before it parks.
  void park() {
    std::unique_lock lock(mu_);
    if (!requested_.load(std::memory_order_relaxed)) return;
    const std::uint64_t gen = generation_;
    ++parked_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return generation_ != gen; });
  }

  void leave() {
    std::lock_guard lock(mu_);
    --active_;
    cv_.notify_all();
  }

  // Controller: parks every active participant, runs f(), releases them.
  template <class F>
  void run_paused(F&& f) {
    std::unique_lock lock(mu_);
    requested_.store(true, std::memory_order_release);
    cv_.wait(lock, [&] { return parked_ >= active_; });
    f();
    requested_.store(false, std::memory_order_release);
    parked_ = 0;
    ++generation_;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> requested_{false};
  int active_;
  int parked_ = 0;
  std::uint64_t generation_ = 0;
};

}  // namespace valet::stress
