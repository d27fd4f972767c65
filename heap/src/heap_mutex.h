// The heap lock. Critical sections are short (a bitmap scan, a few list moves), so waiters spin
// briefly before sleeping: with std::mutex alone, 8 threads on a 16-core host convoy through
// futex sleeps and the allocate+free median grows 50-fold (measured on an H100 host).
//
// Its place in the lock order is LockRank::heap (lock_order.h). Where lock checks are on (Debug,
// the fuzzer), it records its owner and the calling thread's held locks, so that out-of-order
// locking aborts and `assert_held()` states "requires mu" in code; elsewhere HeapMutex is the
// plain spinning lock, one atomic flag and a count of its sleepers, and assert_held() is empty.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <thread>
#include <utility>

#include "lock_order.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VALET_CPU_RELAX() _mm_pause()
#else
#define VALET_CPU_RELAX() std::this_thread::yield()
#endif

namespace valet::detail {

// Heap locks the calling thread holds (any heap's): the counting door asks it, so that driver
// calls made under a heap lock are counted (stats().driver_calls.under_heap_lock).
inline thread_local int t_heap_locks_held = 0;
inline bool this_thread_holds_a_heap_lock() { return t_heap_locks_held > 0; }
// Nanoseconds the calling thread has waited for heap locks (any heap's) that another thread
// held, since it started: counted on the contended path only (Heap::this_thread_lock_wait_ns).
inline thread_local std::uint64_t t_heap_lock_wait_ns = 0;
// Who takes the heap lock on this thread: the heap's mapper and keeper threads, compaction (on
// whatever thread runs it), or a caller (everything else). A lock records its holder's role, and
// a thread that must wait adds its wait to the role that held the lock when the wait began
// (Heap::this_thread_lock_wait_by_holder): where a caller's waits come from. The holder may
// change during one wait; the first holder gets all of it.
enum class LockRole : std::uint8_t { caller, mapper, keeper, compaction };
inline constexpr std::size_t kLockRoles = 4;
inline thread_local LockRole t_lock_role = LockRole::caller;
// The counting door times each driver call by the role of the thread that made it (stats()'s
// driver_calls.time).
inline std::size_t this_thread_lock_role() { return std::size_t(t_lock_role); }
inline thread_local std::array<std::uint64_t, kLockRoles> t_heap_lock_wait_by_role{};
// The calling thread's role while it lives.
class ScopedLockRole {
 public:
  explicit ScopedLockRole(LockRole role) : saved_(t_lock_role) { t_lock_role = role; }
  ~ScopedLockRole() { t_lock_role = saved_; }
  ScopedLockRole(const ScopedLockRole&) = delete;
  ScopedLockRole& operator=(const ScopedLockRole&) = delete;

 private:
  LockRole saved_;
};

// Wakes that the heap's own threads (the mapper, the keeper, compaction) ask for while they hold a
// heap lock (the keeper woken by a placement, pins woken by a mapping's end), made once they have
// let their last heap lock go. A wake is a futex system call, several microseconds on a virtual
// machine (on the host, a fifth of the mapper's placements); made under the lock, every caller
// that wants the lock waits for it too, and callers' long waits are for the mapper's holds
// (docs/speed.md, "Session 46"). A caller's own wakes (a miss submitted to the mapper) stay under
// its lock: made after it, the woken thread took the caller's core on a 2-core host and the
// caller's p99 tripled. Without a heap lock held, wake_after_unlock wakes at once. Rule: a thread
// waits on a condition variable with the heap lock only through wait_with_heap_lock, which makes
// its deferred wakes first: the variable lets the heap lock go while it holds a mutex of its own,
// where no wake may run.
class DeferredWakes {
 public:
  void add(std::condition_variable_any& cv) {
    for (std::size_t i = 0; i < cvs_used_; ++i)
      if (cvs_[i] == &cv) return;
    if (cvs_used_ == cvs_.size()) return cv.notify_one();  // full: at once (never seen)
    cvs_[cvs_used_++] = &cv;
  }
  void add(std::atomic<std::uint64_t>& word) {
    for (std::size_t i = 0; i < words_used_; ++i)
      if (words_[i] == &word) return;
    if (words_used_ == words_.size()) return word.notify_all();
    words_[words_used_++] = &word;
  }
  void flush() {
    // A wake may not queue another (none takes a heap lock): the counts are final here.
    for (std::size_t i = 0; i < cvs_used_; ++i) cvs_[i]->notify_one();
    for (std::size_t i = 0; i < words_used_; ++i) words_[i]->notify_all();
    cvs_used_ = words_used_ = 0;
  }
  bool empty() const { return cvs_used_ == 0 && words_used_ == 0; }

 private:
  std::array<std::condition_variable_any*, 4> cvs_{};
  std::array<std::atomic<std::uint64_t>*, 16> words_{};
  std::size_t cvs_used_ = 0, words_used_ = 0;
};
inline thread_local DeferredWakes t_deferred_wakes;

// Wakes one waiter of `cv` (a thread waiting with the heap lock) once the calling thread lets its
// heap locks go; at once where it holds none or is a caller (LockRole::caller).
inline void wake_after_unlock(std::condition_variable_any& cv) {
  if (t_heap_locks_held > 0 && t_lock_role != LockRole::caller)
    t_deferred_wakes.add(cv);
  else
    cv.notify_one();
}
// Wakes every waiter on `word` once the calling thread lets its heap locks go; at once where it
// holds none or is a caller. Precondition: `word` lives as long as the heap (the handle table's state words).
inline void wake_after_unlock(std::atomic<std::uint64_t>& word) {
  if (t_heap_locks_held > 0 && t_lock_role != LockRole::caller)
    t_deferred_wakes.add(word);
  else
    word.notify_all();
}
// cv.wait(lock, pred) for a lock of a heap mutex, after the thread's deferred wakes are made.
template <class Lock, class Pred>
void wait_with_heap_lock(std::condition_variable_any& cv, Lock& lock, Pred pred) {
  t_deferred_wakes.flush();
  cv.wait(lock, std::move(pred));
}
template <class Lock, class Duration, class Pred>
bool wait_with_heap_lock_for(std::condition_variable_any& cv, Lock& lock, const Duration& d, Pred pred) {
  t_deferred_wakes.flush();
  return cv.wait_for(lock, d, std::move(pred));
}

// How long the lock was held at a time, by the role of its holder: each hold keeps out every
// other thread that wants the lock, so these say whose work a waiter waits for and in what
// pieces. Written by the holder while it holds the lock, read by a thread holding it
// (Heap::stats()): the lock orders both.
struct LockHolds {
  // Holds by log2 of their length: bucket b counts holds of [2^(b-1), 2^b) ns (b = bit_width).
  static constexpr std::size_t kBuckets = 40;
  std::array<std::array<std::uint64_t, kBuckets>, kLockRoles> histogram{};
  std::array<std::uint64_t, kLockRoles> total_ns{}, longest_ns{};

  void add(LockRole role, std::uint64_t ns) {
    const auto r = std::size_t(role);
    ++histogram[r][std::min<std::size_t>(std::bit_width(ns), kBuckets - 1)];
    total_ns[r] += ns;
    longest_ns[r] = std::max(longest_ns[r], ns);
  }
};

template <bool Checked>
class BasicHeapMutex {
 public:
  static constexpr LockRank rank = LockRank::heap;

  void lock() {
    owner_.before_lock(this);
    acquire();
    holder_.store(t_lock_role, std::memory_order_relaxed);
    held_since_ = std::chrono::steady_clock::now();
    owner_.acquired(this);
    ++t_heap_locks_held;
  }
  bool try_lock() {
    if (locked_.load(std::memory_order_relaxed) || locked_.exchange(true, std::memory_order_acquire)) return false;
    holder_.store(t_lock_role, std::memory_order_relaxed);
    held_since_ = std::chrono::steady_clock::now();
    owner_.acquired(this);
    ++t_heap_locks_held;
    return true;
  }
  void unlock() {
    holds_.add(holder_.load(std::memory_order_relaxed),
               std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now() - held_since_)
                                 .count()));
    --t_heap_locks_held;
    owner_.released(this);
    // Sequentially consistent with the sleeper's count (Dekker's pattern with acquire()): either
    // this load sees a thread that went to sleep, or that thread's own load sees the lock free.
    // The wake is a system call, paid only while a thread sleeps on this lock: the library's
    // waiter table is shared by every atomic that hashes to the same slot (16 slots), so its own
    // check would also wake for a pin waiting on some object's state word.
    locked_.store(false, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) locked_.notify_one();
    if (t_heap_locks_held == 0 && !t_deferred_wakes.empty()) t_deferred_wakes.flush();
  }
  // Whether another thread is waiting for the lock now (a hint: it may take it or stop waiting
  // at any moment).
  bool contended() const { return waiters_.load(std::memory_order_relaxed) > 0; }
  bool locked() const { return locked_.load(std::memory_order_relaxed); }
  // Precondition: held by the caller (the holds so far; the caller's own is not among them).
  const LockHolds& holds() const { return holds_; }
  // "Precondition: mu held", checked where lock checks are on.
  void assert_held() const { owner_.assert_held(); }
  bool held_by_me() const
    requires Checked
  {
    return owner_.held_by_me();
  }

 private:
  void acquire() {
    if (!locked_.exchange(true, std::memory_order_acquire)) return;
    const auto since = std::chrono::steady_clock::now();
    struct CountWait {
      std::chrono::steady_clock::time_point since;
      std::atomic<std::uint32_t>& waiters;
      LockRole held_by;
      ~CountWait() {
        waiters.fetch_sub(1, std::memory_order_relaxed);
        const auto ns = std::uint64_t(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - since).count());
        t_heap_lock_wait_ns += ns;
        t_heap_lock_wait_by_role[std::size_t(held_by)] += ns;
      }
    } count_wait{since, waiters_, holder_.load(std::memory_order_relaxed)};
    waiters_.fetch_add(1, std::memory_order_relaxed);
    for (int spins = 0;; ++spins) {
      while (locked_.load(std::memory_order_relaxed)) {
        if (spins < 2000) {
          VALET_CPU_RELAX();
          ++spins;
        } else {
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          locked_.wait(true, std::memory_order_seq_cst);
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
    }
  }

  std::atomic<bool> locked_{false};
  std::atomic<LockRole> holder_{LockRole::caller};  // the role of the thread that last took it
  std::atomic<std::uint32_t> sleepers_{0};  // threads in locked_.wait (unlock wakes only then)
  std::atomic<std::uint32_t> waiters_{0};   // threads in acquire's contended path (spinning or asleep)
  // The holder's: when it took the lock, and the holds so far (written only while held).
  alignas(64) std::chrono::steady_clock::time_point held_since_{};  // apart from the flag the waiters spin on
  LockHolds holds_;
  [[no_unique_address]] LockOwner<LockRank::heap, Checked> owner_;
};

using HeapMutex = BasicHeapMutex<kLockChecks>;

// A background thread between two parts of its work (the mapper between misses, the keeper
// between batches), holding `lock`: if another thread waits for the lock, it is let go until that
// thread has it (at most ~20 us), so that a caller waits for one part of the work, not for the
// parts run back to back. Nothing is yielded when no thread waits. `relock` takes the lock back
// (the keeper's counts its wait).
template <class Lock, class Relock>
void yield_to_waiters(Lock& lock, Relock&& relock) {
  auto& mu = *lock.mutex();
  if (!mu.contended()) return;
  lock.unlock();
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
  while (!mu.locked() && mu.contended() && std::chrono::steady_clock::now() < until) VALET_CPU_RELAX();
  relock();
}
template <class Lock>
void yield_to_waiters(Lock& lock) {
  yield_to_waiters(lock, [&] { lock.lock(); });
}

}  // namespace valet::detail
