// Misses made without the heap lock (Config::unlocked_misses, heap/src/unlocked_misses.cpp): a
// large allocation that finds the heap lock held returns a pending object without waiting for
// it; the object waits in the thread's cache until a holder of the lock queues it. Each test
// holds the heap lock on another thread while this thread allocates, and holds the mapper's
// calls at a gate so that the object stays in the cache's inbox while validate() looks.
#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "gated_backend.h"
#include "heap_core.h"
#include "heap_test_util.h"

namespace valet {
namespace {

using namespace std::chrono_literals;
using test::GatedHeap;
using test::kMiB;

constexpr std::size_t kObject = 4 * kMiB;  // two pages: within a 256 MiB heap's credit
constexpr std::size_t kHeld = 60 * kMiB;   // the object whose map the mapper is held at

Config unlocked_config() {
  Config c = test::host_config();
  c.background_misses = true;
  c.unlocked_misses = true;
  return c;
}

// Holds `heap`'s lock on a thread of its own until release() (or 5 s, so that a test whose
// allocation waits for the lock fails rather than hangs); holding() while it does.
class LockHolder {
 public:
  explicit LockHolder(Heap& heap) : mu_(detail::HeapInternals::of(heap).mu) {
    std::promise<void> locked;
    auto got = locked.get_future();
    thread_ = std::thread([this, &locked] {
      mu_.lock();
      holding_ = true;
      locked.set_value();
      release_.get_future().wait_for(5s);
      holding_ = false;
      mu_.unlock();
    });
    got.wait();
  }
  ~LockHolder() { release(); }
  bool holding() const { return holding_.load(); }
  void release() {
    if (!thread_.joinable()) return;
    release_.set_value();
    thread_.join();
  }

 private:
  detail::HeapMutex& mu_;
  std::promise<void> release_;
  std::atomic<bool> holding_{false};
  std::thread thread_;
};

// An allocation made while another thread holds the heap lock, and whether that thread still
// held it when the allocation returned.
struct AllocationUnderHeldLock {
  Result<Handle> handle;
  bool returned_while_held = false;
  std::uint64_t calls = 0;
};
AllocationUnderHeldLock allocate_while_held(Heap& heap, std::size_t bytes) {
  LockHolder holder(heap);
  ThreadDriverCalls scope(heap.driver_calls());
  auto h = heap.allocate(bytes);
  return {std::move(h), holder.holding(), scope.made().total()};
}

// The mapper's map calls held at the gate, one pending object (kHeld) in its hand: a miss made
// now waits in this thread's cache, since nobody else takes the heap lock. First an object
// within a cache's credit, on the locked path (the lock is free): the thread's cache gets its
// handles and credit then.
Result<Handle> hold_mapper(GatedHeap& g) {
  auto credited = g.heap->allocate(kObject);
  if (!credited.ok()) return credited;
  // Kept live (freed, a thread cache would keep its run and serve the next allocation of its size).
  if (auto pinned = g.heap->pin(*credited); !pinned.ok()) return pinned.error();
  g.gate->arm_for(detail::HeapInternals::of(*g.heap).misses.thread_id());
  auto h = g.heap->allocate(kHeld);
  if (h.ok() && !g.gate->wait_entered()) return make_error(Errc::internal, "the mapper made no gated call");
  return h;
}

// Opens the gate when a test ends, passed or failed: a heap's shutdown waits for the mapper.
struct OpenAtEnd {
  test::GatedBackend* gate;
  ~OpenAtEnd() { gate->open(); }
};

TEST(UnlockedMisses, ALargeAllocationDoesNotWaitForAHeldLockAndItsObjectIsRight) {
  GatedHeap g(unlocked_config());
  ASSERT_TRUE(g.heap);
  const OpenAtEnd open_at_end{g.gate};
  Heap& heap = *g.heap;
  auto held = hold_mapper(g);
  ASSERT_TRUE(held.ok()) << held.error().to_string();
  const std::uint64_t misses_before = Heap::this_thread_background_misses();

  auto made = allocate_while_held(heap, kObject);
  ASSERT_TRUE(made.handle.ok()) << made.handle.error().to_string();
  EXPECT_TRUE(made.returned_while_held) << "the allocation waited for the heap lock";
  EXPECT_EQ(made.calls, 0u) << "the allocating thread made driver calls";
  EXPECT_EQ(Heap::this_thread_background_misses(), misses_before + 1);
  // In the cache's inbox (the mapper is at the gate): validate counts it there.
  EXPECT_VALID(heap);
  EXPECT_EQ(heap.stats().live_bytes, kHeld + 2 * kObject);  // hold_mapper's credited object too
  EXPECT_EQ(heap.stats().ops.unlocked_misses, 0u) << "queued before anyone took the lock";

  // A free takes it out of the inbox and gives it up: nothing was mapped for it.
  ASSERT_TRUE(heap.free(*made.handle).ok());
  EXPECT_EQ(heap.stats().ops.unlocked_misses, 1u);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*made.handle).code() == Errc::stale_handle) << "a double free of it was not refused";

  // Another, then the mapper goes on: it queues and maps it, and its first pin waits for that.
  auto second = allocate_while_held(heap, kObject);
  ASSERT_TRUE(second.handle.ok()) << second.handle.error().to_string();
  EXPECT_TRUE(second.returned_while_held);
  auto pinning = std::async(std::launch::async, [&] { return heap.pin(*second.handle).ok(); });
  EXPECT_EQ(pinning.wait_for(50ms), std::future_status::timeout) << "a pin did not wait for the mapping";
  g.gate->open();
  EXPECT_TRUE(pinning.get());
  test::fill(heap, *second.handle, 7);
  test::fill(heap, *held, 8);
  EXPECT_EQ(test::mismatches(heap, *second.handle, 7), 0u);
  EXPECT_EQ(test::mismatches(heap, *held, 8), 0u);
  EXPECT_EQ(heap.stats().ops.unlocked_misses, 2u);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*second.handle).ok());
  EXPECT_TRUE(heap.free(*held).ok());
  EXPECT_VALID(heap);
}

TEST(UnlockedMisses, OffTheAllocationWaitsForTheLock) {
  Config c = unlocked_config();
  c.unlocked_misses = false;
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  const OpenAtEnd open_at_end{g.gate};
  auto held = hold_mapper(g);
  ASSERT_TRUE(held.ok()) << held.error().to_string();
  LockHolder holder(*g.heap);
  auto waited = std::async(std::launch::async, [&] { return g.heap->allocate(kObject); });
  EXPECT_EQ(waited.wait_for(50ms), std::future_status::timeout) << "the allocation did not wait for the heap lock";
  holder.release();
  auto h = waited.get();
  ASSERT_TRUE(h.ok()) << h.error().to_string();
  g.gate->open();
  EXPECT_TRUE(g.heap->pin(*h).ok());
  EXPECT_EQ(g.heap->stats().ops.unlocked_misses, 0u);
  EXPECT_VALID(*g.heap);
}

// A shutdown while a miss waits in a cache: it is queued, mapped and ended with the rest.
TEST(UnlockedMisses, AShutdownQueuesTheMissesWaitingInCaches) {
  GatedHeap g(unlocked_config());
  ASSERT_TRUE(g.heap);
  const OpenAtEnd open_at_end{g.gate};
  auto held = hold_mapper(g);
  ASSERT_TRUE(held.ok()) << held.error().to_string();
  auto made = allocate_while_held(*g.heap, kObject);
  ASSERT_TRUE(made.handle.ok()) << made.handle.error().to_string();
  ASSERT_TRUE(made.returned_while_held);
  auto shutting = std::async(std::launch::async, [&] { return g.heap->shutdown(); });
  EXPECT_EQ(shutting.wait_for(50ms), std::future_status::timeout) << "the shutdown did not wait for the mapper";
  g.gate->open();
  EXPECT_TRUE(shutting.get().ok());
  EXPECT_EQ(g.heap->pin(*made.handle).code(), Errc::shut_down);
}

// Out-of-memory is not reported while pages are credited to caches: they come back first.
TEST(UnlockedMisses, CreditedPagesComeBackBeforeOutOfMemory) {
  Config c = unlocked_config();
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto first = heap.allocate(kObject);  // the locked path: this thread's cache is credited
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(heap.pin(*first).ok());
  ASSERT_GT(detail::HeapInternals::of(heap).pool.credited_pages(), 0u);
  // Everything else the capacity holds, in one object: it fits only with the credit back.
  const std::size_t rest = c.capacity - kObject;
  auto all = heap.allocate(rest);
  ASSERT_TRUE(all.ok()) << all.error().to_string();
  EXPECT_TRUE(heap.pin(*all).ok());
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*all).ok());
  EXPECT_TRUE(heap.free(*first).ok());
  EXPECT_VALID(heap);
}

// The caches' credits add up to at most a few caches' worth; a thread that exits gives its
// credit back to the next thread that wants one; a thread whose objects no credit would hold
// gets none; and credited pages count as allocatable in the stats.
TEST(UnlockedMisses, CreditsAreBoundedAndComeBackFromExitedThreads) {
  Config c = unlocked_config();
  c.capacity = std::size_t{4} << 30;  // 2,048 pages: 64 a cache, 128 in all
  auto heap = test::make_heap(c);
  ASSERT_TRUE(heap);
  auto& core = detail::HeapInternals::of(*heap);
  const auto credited = [&] {
    std::lock_guard lock(core.mu);
    return core.pool.credited_pages();
  };
  // This thread's cache's credit, read on the thread itself.
  const auto my_credit = [&]() -> std::size_t {
    detail::ThreadCache* mine = core.caches.mine();
    if (!mine) return 0;
    std::lock_guard cl(mine->mu);
    return mine->credit_pages;
  };
  std::vector<Handle> kept;
  std::mutex kept_mu;
  std::vector<std::size_t> credit_of_thread;
  for (int t = 0; t < 5; ++t) {
    std::thread([&] {
      auto h = heap->allocate(kObject);  // the heap lock is free: the locked path, then the credit
      ASSERT_TRUE(h.ok()) << h.error().to_string();
      std::lock_guard l(kept_mu);
      kept.push_back(*h);
      credit_of_thread.push_back(my_credit());
    }).join();
    EXPECT_LE(credited(), 128u) << "after thread " << t;
  }
  // Every thread got its credit: the first two within the total, each later one from the caches
  // of the threads that had exited.
  ASSERT_EQ(credit_of_thread.size(), 5u);
  for (std::size_t k = 0; k < credit_of_thread.size(); ++k) EXPECT_EQ(credit_of_thread[k], 64u) << "thread " << k;
  // Credited pages are allocatable: they come back before an allocation is refused (the objects
  // placed first: a pending one's pages are promised).
  for (Handle h : kept) ASSERT_TRUE(heap->pin(h).ok());
  const auto s = heap->stats();
  EXPECT_GE(s.largest_allocatable_bytes + s.mapped_bytes, c.capacity - detail::kPageSize);
  EXPECT_VALID(*heap);
  // Objects no credit holds: no credit, no spare handles.
  std::thread([&] {
    auto big = heap->allocate(100 * detail::kPageSize);
    ASSERT_TRUE(big.ok()) << big.error().to_string();
    EXPECT_EQ(my_credit(), 0u);
    EXPECT_TRUE(heap->free(*big).ok());
  }).join();
  for (Handle h : kept) EXPECT_TRUE(heap->free(h).ok());
  EXPECT_VALID(*heap);
}

}  // namespace
}  // namespace valet
