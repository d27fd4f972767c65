// The lock order (heap/src/lock_order.h), the heap lock's owner record (heap_mutex.h) and the
// tiers of invariants.h. The mutexes are instantiated with their checks forced on, so that these
// tests run the real checking code in every build type; the build's own tier is tested as such.
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "heap_mutex.h"
#include "invariants.h"
#include "lock_order.h"

namespace valet::detail {
namespace {

using Cycle = RankedMutex<LockRank::compactor_cycle, true>;
using Compaction = RankedMutex<LockRank::compaction, true>;
using Mu = BasicHeapMutex<true>;
using Holds = RankedMutex<LockRank::pool_holds, true>;
using BackendLock = RankedMutex<LockRank::backend, true>;

// Death tests re-run the test binary for the one test (no other test's threads in the child).
class LockOrder : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(LockOrder, TheWholeOrderPasses) {
  Cycle cycle;
  Compaction compaction;
  Mu mu;
  Holds holds;
  BackendLock backend;
  {
    std::lock_guard a(cycle);
    std::lock_guard b(compaction);
    std::unique_lock c(mu);
    std::lock_guard d(holds);
    std::lock_guard e(backend);
    EXPECT_TRUE(mu.held_by_me());
    EXPECT_TRUE(lock_order::holds(&holds));
  }
  EXPECT_FALSE(mu.held_by_me());
  EXPECT_FALSE(lock_order::holds(&cycle) || lock_order::holds(&compaction) || lock_order::holds(&mu) ||
               lock_order::holds(&holds) || lock_order::holds(&backend));
}

TEST_F(LockOrder, DroppingAndRetakingTheHeapLockAroundALowerOnePasses) {
  // emergency_compact's pattern: drop the heap lock, take compaction_mu, retake the heap lock.
  Compaction compaction;
  Mu mu;
  std::unique_lock lock(mu);
  lock.unlock();
  {
    std::lock_guard cl(compaction);
    lock.lock();
    mu.assert_held();
    compaction.assert_held();
  }
  // compaction_mu was released first, out of order: the heap lock alone is still recorded.
  EXPECT_TRUE(lock_order::holds(&mu));
  EXPECT_FALSE(lock_order::holds(&compaction));
  Holds holds;
  std::lock_guard h(holds);  // above the heap lock: allowed
  EXPECT_TRUE(holds.held_by_me());
}

TEST_F(LockOrder, TryLockBelowAHeldLockIsRecordedNotRefused) {
  // try_lock cannot wait, so it cannot deadlock: it takes no part in the order.
  Cycle cycle;
  Mu mu;
  std::lock_guard lock(mu);
  ASSERT_TRUE(cycle.try_lock());
  EXPECT_TRUE(cycle.held_by_me());
  cycle.unlock();
  EXPECT_FALSE(lock_order::holds(&cycle));
}

TEST_F(LockOrder, ConditionWaitKeepsTheRecord) {
  // The keeper waits on the heap lock through condition_variable_any: unlock and relock in wait.
  Mu mu;
  std::condition_variable_any cv;
  std::unique_lock lock(mu);
  cv.wait_for(lock, std::chrono::milliseconds(1));
  EXPECT_TRUE(mu.held_by_me());
  EXPECT_TRUE(lock_order::holds(&mu));
}

TEST_F(LockOrder, CompactionLockUnderTheHeapLockAborts) {
  EXPECT_DEATH(
      {
        Compaction compaction;
        Mu mu;
        std::lock_guard lock(mu);
        std::lock_guard cl(compaction);
      },
      "lock order violated: taking compaction_mu \\(rank 2\\) while holding mu \\(the heap lock\\) \\(rank 3\\)");
}

TEST_F(LockOrder, CycleLockUnderCompactionLockAborts) {
  EXPECT_DEATH(
      {
        Cycle cycle;
        Compaction compaction;
        std::lock_guard cl(compaction);
        std::lock_guard c(cycle);
      },
      "taking the compactor's cycle_mu \\(rank 1\\) while holding compaction_mu \\(rank 2\\)");
}

TEST_F(LockOrder, HeapLockUnderABackendLockAborts) {
  // The highest held lock is named, whichever was taken last.
  EXPECT_DEATH(
      {
        Compaction compaction;
        BackendLock backend;
        Mu mu;
        std::lock_guard a(compaction);
        std::lock_guard b(backend);
        std::lock_guard c(mu);
      },
      "taking mu \\(the heap lock\\) \\(rank 3\\) while holding a backend lock \\(rank 6\\)");
}

TEST_F(LockOrder, TwoLocksOfOneRankAbort) {
  EXPECT_DEATH(
      {
        Mu first;
        Mu second;
        std::lock_guard a(first);
        std::lock_guard b(second);
      },
      "taking mu \\(the heap lock\\) \\(rank 3\\) while holding mu \\(the heap lock\\) \\(rank 3\\)");
}

TEST_F(LockOrder, RetakingAHeldLockAborts) {
  EXPECT_DEATH(
      {
        Compaction compaction;
        compaction.lock();
        compaction.lock();
      },
      "taking compaction_mu, which this thread already holds");
}

TEST_F(LockOrder, AssertHeldPassesForTheOwner) {
  Mu mu;
  Compaction compaction;
  std::lock_guard cl(compaction);
  std::lock_guard lock(mu);
  mu.assert_held();
  compaction.assert_held();
}

TEST_F(LockOrder, AssertHeldAbortsWhenNotHeld) {
  EXPECT_DEATH(
      {
        Mu mu;
        mu.assert_held();
      },
      "lock not held: this thread must hold mu \\(the heap lock\\)");
  EXPECT_DEATH(
      {
        Compaction compaction;
        compaction.lock();
        compaction.unlock();
        compaction.assert_held();
      },
      "must hold compaction_mu");
}

TEST_F(LockOrder, AssertHeldAbortsWhenAnotherThreadHoldsIt) {
  EXPECT_DEATH(
      {
        Mu mu;
        std::thread other([&] { mu.lock(); });  // held by a thread that has ended
        other.join();
        mu.assert_held();
      },
      "must hold mu");
}

// Without checks the mutexes are the plain ones: nothing added to their layout.
TEST(LockOrderRelease, UncheckedMutexesAddNothing) {
  struct FlagSleepersWaitersAndHolds {
    std::atomic<bool> locked;
    std::atomic<LockRole> holder;
    std::atomic<std::uint32_t> sleepers, waiters;
    alignas(64) std::chrono::steady_clock::time_point held_since;
    LockHolds holds;
  };
  static_assert(sizeof(BasicHeapMutex<false>) == sizeof(FlagSleepersWaitersAndHolds));
  static_assert(sizeof(RankedMutex<LockRank::compaction, false>) == sizeof(std::mutex));
  BasicHeapMutex<false> mu;
  mu.assert_held();  // a no-op: no record to check against
  std::lock_guard lock(mu);
  EXPECT_FALSE(lock_order::holds(&mu));
}

// The build's own tier: checked exactly when the tier says so.
TEST(LockOrderTier, HeapMutexFollowsTheExpensiveTier) {
  EXPECT_EQ(kLockChecks, kExpensiveChecks);
  HeapMutex mu;
  std::lock_guard lock(mu);
  EXPECT_EQ(lock_order::holds(&mu), kLockChecks);
}

// A wake that a heap thread (here the mapper's role) asks for while it holds the heap lock waits
// for the lock to go (heap_mutex.h, DeferredWakes), and then reaches its waiter; a caller's, or
// one without the lock, is made at once.
TEST(DeferredWakes, AWakeUnderTheHeapLockIsMadeWhenTheLockGoes) {
  HeapMutex mu;
  std::condition_variable_any cv;
  std::atomic<std::uint64_t> word{0};
  bool ready = false;
  std::atomic<bool> woken{false}, word_woken{false};
  std::thread waiter([&] {
    std::unique_lock lock(mu);
    wait_with_heap_lock(cv, lock, [&] { return ready; });
    woken = true;
  });
  std::thread word_waiter([&] {
    word.wait(0);
    word_woken = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // both asleep, most likely
  {
    std::unique_lock lock(mu);
    wake_after_unlock(cv);  // a caller's: at once (a spurious wake to the waiter: `ready` is false)
    EXPECT_TRUE(t_deferred_wakes.empty()) << "a caller's wake was deferred";
  }
  {
    const ScopedLockRole as(LockRole::mapper);
    std::unique_lock lock(mu);
    ready = true;
    wake_after_unlock(cv);
    word.store(1);
    wake_after_unlock(word);
    EXPECT_FALSE(t_deferred_wakes.empty()) << "a wake under the heap lock was made at once";
  }
  EXPECT_TRUE(t_deferred_wakes.empty()) << "the wakes were not made when the lock went";
  waiter.join();
  word_waiter.join();
  EXPECT_TRUE(woken);
  EXPECT_TRUE(word_woken);
  wake_after_unlock(cv);  // no lock held: at once, nothing left queued
  EXPECT_TRUE(t_deferred_wakes.empty());
}

}  // namespace
}  // namespace valet::detail
