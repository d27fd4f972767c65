#include "miss_mapper.h"

#include <algorithm>
#include <chrono>

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
    submitted_.fetch_add(1, std::memory_order_release);  // ends a poll
  }
  work_cv_.notify_all();
  thread_.join();
}

void MissMapper::submit(PendingMiss miss) {
  mu_.assert_held();
  pending_.insert(miss.index);
  miss.seq = ++last_seq_;
  outstanding_.push_back(miss.seq);
  // A small object's placement is a page's calls at most: it goes before the large misses queued
  // (after the small ones), so that its first pin waits for no other object's run.
  if (miss.small) {
    auto it = std::find_if(queued_.begin(), queued_.end(), [](const PendingMiss& m) { return !m.small; });
    queued_.insert(it, std::move(miss));
  } else {
    queued_.push_back(std::move(miss));
  }
  submitted_.fetch_add(1, std::memory_order_release);
  // Awake (mapping, or polling), the thread finds the miss when it next looks at the queue.
  if (sleeping_) {
    ++wakes_;
    wake_after_unlock(work_cv_);
  }
}

bool MissMapper::note_unlocked() {
  unlocked_.fetch_add(1, std::memory_order_seq_cst);
  submitted_.fetch_add(1, std::memory_order_release);  // ends a poll
  return asleep_.load(std::memory_order_seq_cst);
}

void MissMapper::want_turn() {
  mu_.assert_held();
  turn_wanted_ = true;
  submitted_.fetch_add(1, std::memory_order_release);  // ends a poll
  if (sleeping_) {
    ++wakes_;
    wake_after_unlock(work_cv_);
  }
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
  if (auto it = std::lower_bound(outstanding_.begin(), outstanding_.end(), m.seq);
      it != outstanding_.end() && *it == m.seq)
    outstanding_.erase(it);
  settled_cv_.notify_all();
}

void MissMapper::wait_settled(std::unique_lock<HeapMutex>& lock) {
  mu_.assert_held();
  // Only the misses submitted before the call: later ones may keep the queue busy for ever.
  const std::uint64_t last = last_seq_;
  wait_with_heap_lock(settled_cv_, lock, [&] { return outstanding_.empty() || outstanding_.front() > last; });
}

void MissMapper::poll(std::unique_lock<HeapMutex>& lock) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
  // A submit ends the poll; should the queue be empty again by the time the lock is back (a pin
  // served the miss: serve_queued), the poll goes on until its time is up.
  for (;;) {
    // Read before the count of misses waiting in caches: a miss noted after that read bumps
    // submitted_ past `seen` and ends the spin below (note_unlocked needs no heap lock).
    const std::uint64_t seen = submitted_.load(std::memory_order_acquire);
    if (!queued_.empty() || turn_wanted_ || stop_ || unlocked_waiting() > 0 || std::chrono::steady_clock::now() >= until)
      break;
    lock.unlock();
    while (submitted_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
      VALET_CPU_RELAX();
    lock.lock();
  }
}

bool MissMapper::step(PendingMiss& m, std::unique_lock<HeapMutex>& lock) {
  // Placed under the lock first: a run that needs no call settles here.
  if (m.step == PendingMiss::Step::place && place_(m, lock)) return true;
  // The calls without the heap lock: nothing another thread can reach names this batch's
  // slots or pages (page_pool.h, the place batch).
  lock.unlock();
  calls_(m);
  lock.lock();
  return finish_(m);
}

bool MissMapper::serve_queued(std::uint32_t index, std::unique_lock<HeapMutex>& lock) {
  mu_.assert_held();
  auto it = std::find_if(queued_.begin(), queued_.end(), [&](const PendingMiss& m) { return m.index == index; });
  if (it == queued_.end()) return false;
  PendingMiss m = std::move(*it);
  queued_.erase(it);
  // It stays pending (a free marks it freed; finish books that) until its last step settles.
  t_serving_miss = true;
  while (!step(m, lock)) {
  }
  t_serving_miss = false;
  settle(m);
  return true;
}

void MissMapper::loop() {
  t_serving_miss = true;
  const ScopedLockRole role(LockRole::mapper);
  std::unique_lock lock(mu_);
  for (;;) {
    if (collect_ && unlocked_waiting() > 0) collect_();
    if (spin_us_ > 0 && queued_.empty() && !turn_wanted_ && !stop_) poll(lock);
    if (collect_ && unlocked_waiting() > 0) collect_();
    sleeping_ = true;
    asleep_.store(true, std::memory_order_seq_cst);
    wait_with_heap_lock(work_cv_, lock, [&] {
      return stop_ || !queued_.empty() || turn_wanted_ || unlocked_.load(std::memory_order_seq_cst) > 0;
    });
    asleep_.store(false, std::memory_order_relaxed);
    sleeping_ = false;
    if (collect_ && unlocked_waiting() > 0) collect_();
    if (turn_wanted_) {  // before the misses queued after it was wanted
      turn_wanted_ = false;
      if (settled_) settled_(lock);
      continue;
    }
    if (queued_.empty()) break;  // stopping, nothing left
    // One miss a turn, in the order of submission: each object is booked as soon as its own
    // calls end (its pins wait for no other's), and the misses still queued stay abandonable
    // (a free gives them up before their calls; one in hand must be mapped, then released).
    PendingMiss m = std::move(queued_.front());
    queued_.pop_front();
    if (!step(m, lock)) {
      queued_.push_front(std::move(m));  // its next step, before the later misses
      continue;
    }
    settle(m);
    if (settled_) settled_(lock);
    // Between two misses (one booked, the next to be placed; not between two steps of one, so
    // that a begun miss is not left in the queue for others to take): a caller waiting for the
    // lock goes first, so that it waits for one of them at most.
    yield_to_waiters(lock);
  }
}

}  // namespace valet::detail
