// Misses made without the heap lock (Config::unlocked_misses, heap/src/unlocked_misses.cpp): a
// large allocation that finds the heap lock held returns a pending object without waiting for
// it; the object waits in the thread's cache until a holder of the lock queues it. Each test
// holds the heap lock on another thread while this thread allocates, and holds the mapper's
// calls at a gate so that the object stays in the cache's inbox while validate() looks.
#include <atomic>
#include <chrono>
#include <future>
#include <thread>

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
// now waits in this thread's cache, since nobody else takes the heap lock. The thread's first
// allocation took the lock, so its cache has its handles and credit.
Result<Handle> hold_mapper(GatedHeap& g) {
  g.gate->arm_for(detail::HeapInternals::of(*g.heap).misses.thread_id());
  auto h = g.heap->allocate(kHeld);
  if (h.ok() && !g.gate->wait_entered()) return make_error(Errc::internal, "the mapper made no gated call");
  return h;
}

TEST(UnlockedMisses, ALargeAllocationDoesNotWaitForAHeldLockAndItsObjectIsRight) {
  GatedHeap g(unlocked_config());
  ASSERT_TRUE(g.heap);
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
  EXPECT_EQ(heap.stats().live_bytes, kHeld + kObject);
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

}  // namespace
}  // namespace valet
