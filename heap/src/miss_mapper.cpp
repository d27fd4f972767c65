#include "miss_mapper.h"

#include <algorithm>

#include "clock.h"

namespace valet::detail {

void MissMapper::start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] { loop(); });
}

void MissMapper::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

void MissMapper::submit(PendingMiss miss) {
  mu_.assert_held();
  pending_.emplace(miss.index, false);
  queued_.push_back({std::move(miss), now_ns()});
  work_cv_.notify_one();
}

std::optional<PendingMiss> MissMapper::take_queued(std::uint32_t index) {
  mu_.assert_held();
  for (auto it = queued_.begin(); it != queued_.end(); ++it) {
    if (it->miss.index != index) continue;
    PendingMiss m = std::move(it->miss);
    queued_.erase(it);
    pending_.erase(index);
    if (pending() == 0) idle_cv_.notify_all();
    return m;
  }
  return std::nullopt;
}

void MissMapper::wait_idle(std::unique_lock<HeapMutex>& lock) {
  mu_.assert_held();
  idle_cv_.wait(lock, [&] { return pending() == 0; });
}

void MissMapper::loop() {
  std::unique_lock lock(mu_);
  std::vector<PendingMiss> batch;
  for (;;) {
    work_cv_.wait(lock, [&] { return stop_ || !queued_.empty(); });
    if (queued_.empty()) break;  // stopping, nothing left
    const std::uint64_t now = now_ns();
    for (auto& q : queued_) {
      longest_queue_ns_ = std::max(longest_queue_ns_, now - q.since_ns);
      batch.push_back(std::move(q.miss));
    }
    queued_.clear();
    in_hand_ = batch.size();
    // The calls without the heap lock: nothing another thread can reach names these batches'
    // slots or pages (page_pool.h, the place batch).
    lock.unlock();
    for (auto& m : batch) calls_(m);
    lock.lock();
    batches_ += batch.size();
    for (auto& m : batch) {
      const std::uint32_t index = m.index;
      if (finish_(lock, m))
        pending_.erase(index);
      else
        queued_.push_back({std::move(m), now_ns()});
    }
    batch.clear();
    in_hand_ = 0;
    if (pending() == 0) idle_cv_.notify_all();
  }
  in_hand_ = 0;
  idle_cv_.notify_all();
}

}  // namespace valet::detail
