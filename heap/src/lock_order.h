// The lock order, written once. A thread may take a lock only if its rank is above the rank of
// every lock the thread already holds:
//
//   compactor_cycle  the runtime compactor's cycle lock (Compactor::Impl::cycle_mu): one policy
//                    decision and its cycle at a time; it calls Heap::compact while held
//   compaction       HeapCore::compaction_mu: one compaction cycle (or shutdown, or table
//                    upload) at a time; taken before the heap lock
//   heap             HeapCore::mu, the heap lock (HeapMutex, heap_mutex.h)
//   thread_cache     ThreadCache::mu (thread_caches.h): a thread's own cache of freed small
//                    objects; taken alone by its thread's fast paths, or under the heap lock (one
//                    cache at a time) when the heap gates, drains or folds them
//   pool_holds       PagePool::holds_mu_: the slots queued work holds; taken under the heap lock
//                    or alone, never around a driver call
//   backend          locks inside a Backend (the host backend's, the fault injector's): the heap
//                    calls the backend with any of the above held, and a backend never calls back
//   pool_defer       PagePool::defer_mu_: where the keeper waits for callers' driver calls to end
//                    (defer_to_callers) and the last caller wakes it; a leaf, taken alone or
//                    under the heap lock, never around a driver call
//
// Locks of one rank never nest (no thread holds two heaps' locks). try_lock takes no part in the
// order (it cannot wait, so it cannot deadlock) but what it takes is recorded as held.
//
// Checking (the expensive tier of invariants.h, kLockChecks: Debug builds and the fuzzer): each
// thread keeps the locks it holds in a thread-local record, and taking one out of order aborts,
// naming both locks. Ranked mutexes also record their owner, so that code requiring a lock can
// say so: `mu.assert_held()` aborts when the calling thread does not hold `mu`. With checks off,
// the record and the owner are compiled out: the mutexes are the plain ones.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>

#include "invariants.h"

namespace valet::detail {

enum class LockRank : std::uint8_t {
  compactor_cycle = 1,
  compaction = 2,
  heap = 3,
  thread_cache = 4,
  pool_holds = 5,
  backend = 6,
  pool_defer = 7,
};

inline constexpr bool kLockChecks = kExpensiveChecks;

// The lock's name as error messages give it ("compaction_mu", ...).
const char* lock_name(LockRank rank);

// The per-thread record (lock_order.cpp). Called by checked mutexes only.
namespace lock_order {
// Before a blocking acquire of `lock`: aborts if the thread holds `lock` already or a lock of a
// rank at or above `rank`.
void before_lock(LockRank rank, const void* lock);
// After `lock` was taken (by lock or a successful try_lock).
void acquired(LockRank rank, const void* lock);
// After `lock` was released (locks may be released in any order).
void released(const void* lock);
// Whether the calling thread holds `lock`, by the record.
bool holds(const void* lock);
// Aborts: the calling thread does not hold a lock it must hold.
[[noreturn]] void not_held(LockRank rank);
}  // namespace lock_order

// The owner record of a checked mutex (empty when unchecked).
template <LockRank Rank, bool Checked>
class LockOwner {
 public:
  void before_lock(const void*) {}
  void acquired(const void*) {}
  void released(const void*) {}
  void assert_held() const {}
};

template <LockRank Rank>
class LockOwner<Rank, true> {
 public:
  void before_lock(const void* lock) { lock_order::before_lock(Rank, lock); }
  void acquired(const void* lock) {
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    lock_order::acquired(Rank, lock);
  }
  void released(const void* lock) {
    owner_.store(std::thread::id{}, std::memory_order_relaxed);
    lock_order::released(lock);
  }
  // Only the owner itself can see its own id here, whatever the ordering: a relaxed load is
  // exact for the question "do I hold it?".
  void assert_held() const {
    if (owner_.load(std::memory_order_relaxed) != std::this_thread::get_id()) lock_order::not_held(Rank);
  }
  bool held_by_me() const { return owner_.load(std::memory_order_relaxed) == std::this_thread::get_id(); }

 private:
  std::atomic<std::thread::id> owner_{};
};

// A std::mutex with a place in the lock order (compaction_mu, the compactor's cycle lock, the
// page pool's holds lock). `Checked` defaults to the build's tier; tests force it on.
template <LockRank Rank, bool Checked = kLockChecks>
class RankedMutex {
 public:
  static constexpr LockRank rank = Rank;

  void lock() {
    owner_.before_lock(this);
    mu_.lock();
    owner_.acquired(this);
  }
  bool try_lock() {
    if (!mu_.try_lock()) return false;
    owner_.acquired(this);
    return true;
  }
  void unlock() {
    owner_.released(this);
    mu_.unlock();
  }
  // Precondition check for code that requires this lock (a no-op when unchecked).
  void assert_held() const { owner_.assert_held(); }
  bool held_by_me() const
    requires Checked
  {
    return owner_.held_by_me();
  }

 private:
  std::mutex mu_;
  [[no_unique_address]] LockOwner<Rank, Checked> owner_;
};

using CompactionMutex = RankedMutex<LockRank::compaction>;
using CompactorCycleMutex = RankedMutex<LockRank::compactor_cycle>;

}  // namespace valet::detail
