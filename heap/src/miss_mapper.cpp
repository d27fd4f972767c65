#include "miss_mapper.h"

namespace valet::detail {

void MissMapper::start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = false;
    running_ = true;
  }
  thread_ = std::thread([this] { loop(); });
}

void MissMapper::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    running_ = false;
  }
  work_cv_.notify_all();
  thread_.join();
}

void MissMapper::submit(PendingMiss miss) {
  mu_.assert_held();
  pending_.emplace(miss.index, false);
  miss.seq = ++last_seq_;
  outstanding_.insert(miss.seq);
  queued_.push_back(std::move(miss));
  work_cv_.notify_one();
}

std::optional<PendingMiss> MissMapper::take_queued(std::uint32_t index) {
  mu_.assert_held();
  for (auto it = queued_.begin(); it != queued_.end(); ++it) {
    if (it->index != index) continue;
    PendingMiss m = std::move(*it);
    queued_.erase(it);
    settle(m);
    return m;
  }
  return std::nullopt;
}

void MissMapper::settle(const PendingMiss& m) {
  pending_.erase(m.index);
  outstanding_.erase(m.seq);
  settled_cv_.notify_all();
}

void MissMapper::wait_settled(std::unique_lock<HeapMutex>& lock) {
  mu_.assert_held();
  // Only the misses submitted before the call: later ones may keep the queue busy for ever.
  const std::uint64_t last = last_seq_;
  settled_cv_.wait(lock, [&] { return outstanding_.empty() || *outstanding_.begin() > last; });
}

void MissMapper::loop() {
  std::unique_lock lock(mu_);
  std::vector<PendingMiss> batch;
  for (;;) {
    work_cv_.wait(lock, [&] { return stop_ || !queued_.empty(); });
    if (queued_.empty()) break;  // stopping, nothing left
    for (auto& q : queued_) batch.push_back(std::move(q));
    queued_.clear();
    // The calls without the heap lock: nothing another thread can reach names these batches'
    // slots or pages (page_pool.h, the place batch).
    lock.unlock();
    for (auto& m : batch) calls_(m);
    lock.lock();
    for (auto& m : batch) {
      if (finish_(m))
        settle(m);
      else
        queued_.push_back(std::move(m));  // its next step
    }
    batch.clear();
  }
}

}  // namespace valet::detail
