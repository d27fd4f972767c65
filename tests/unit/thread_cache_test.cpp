// Thread caches (heap/src/thread_caches.h): a thread's small frees are taken back by its next
// allocations without the heap lock; cached objects stay counted, are never moved, go back at
// compaction, and every handle rule (stale, double free, pinned, stream unpins) still holds.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <random>
#include <thread>

#include "heap_core.h"
#include "heap_test_util.h"

namespace valet::test {
namespace {

using detail::HeapInternals;

DevicePtr address_of(Heap& heap, Handle h) {
  auto pin = heap.pin(h);
  return pin.ok() ? pin->address() : 0;
}

// Holds the heap lock on another thread until the returned promise is set.
struct HeapLockHolder {
  std::promise<void> release;
  std::thread thread;
  explicit HeapLockHolder(Heap& heap) {
    std::promise<void> held;
    auto held_f = held.get_future();
    thread = std::thread([&heap, &held, f = release.get_future()]() mutable {
      std::lock_guard lock(HeapInternals::of(heap).mu);
      held.set_value();
      f.wait_for(std::chrono::seconds(10));
    });
    held_f.wait();
  }
  ~HeapLockHolder() {
    release.set_value();
    thread.join();
  }
};

// Pins `h` for stream `s`, held back (until `go`, 10 s at most) by a host task queued first,
// releases the pin there (a stream-ordered unpin the stream has not passed) and frees `h`: the
// free waits for the stream.
void free_with_unpin_pending(FaultableHeap& fh, Handle h, Stream s, std::atomic<bool>& go) {
  Heap& heap = *fh.heap;
  ASSERT_TRUE(fh.host()
                  .enqueue_host_task(s,
                                     [&go] {
                                       const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
                                       while (!go.load() && std::chrono::steady_clock::now() < until)
                                         std::this_thread::sleep_for(std::chrono::milliseconds(1));
                                     })
                  .ok());
  {
    auto sp = heap.pin(h, s);
    ASSERT_TRUE(sp.ok());
    ASSERT_TRUE(sp->release().ok());
  }
  ASSERT_TRUE(heap.free(h).ok());
  EXPECT_GT(heap.stats().stream_deferred_bytes, 0u) << "the free waits for the stream";
}

TEST(ThreadCache, AFreedSmallObjectIsTakenBackByItsThreadWithoutTheHeapLock) {
  auto heap = make_heap();
  // The first free registers this thread's cache (under the lock); the second is cached.
  ASSERT_TRUE(heap->free(*heap->allocate(4096)).ok());
  const Handle old = *heap->allocate(4096);
  const DevicePtr at = address_of(*heap, old);
  ASSERT_TRUE(heap->free(old).ok());
  Result<Handle> again = make_error(Errc::internal, "not run");
  std::chrono::steady_clock::duration took{};
  {
    // With the heap lock held by another thread (for up to 10 s), only the cache can serve this
    // allocation at once.
    HeapLockHolder holder(*heap);
    const auto t0 = std::chrono::steady_clock::now();
    again = heap->allocate(4000);
    took = std::chrono::steady_clock::now() - t0;
  }
  EXPECT_LT(took, std::chrono::seconds(5)) << "the allocation waited for the heap lock";
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(address_of(*heap, *again), at) << "the cached slot was reused";
  EXPECT_EQ(again->index, old.index);
  EXPECT_NE(again->generation, old.generation);
  // The old handle is dead: a double free and a pin of it fail, and the new object is intact.
  EXPECT_EQ(heap->free(old).code(), Errc::stale_handle);
  EXPECT_EQ(heap->pin(old).code(), Errc::stale_handle);
  fill(*heap, *again, 7);
  EXPECT_EQ(mismatches(*heap, *again, 7), 0u);
  const HeapStats s = heap->stats();
  EXPECT_EQ(s.live_bytes, 4000u);
  EXPECT_EQ(s.live_objects, 1u);
  EXPECT_EQ(s.ops.allocate, 3u);
  EXPECT_EQ(s.ops.free, 2u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->free(*again).ok());
  EXPECT_EQ(heap->stats().live_bytes, 0u);
  EXPECT_VALID(*heap);
}

TEST(ThreadCache, CachedObjectsStayInTheFootprintAndGoBackAtCompaction) {
  auto heap = make_heap();
  std::vector<Handle> hs;
  for (int i = 0; i < 64; ++i) hs.push_back(*heap->allocate(2048));
  for (Handle h : hs) ASSERT_TRUE(heap->free(h).ok());
  HeapStats s = heap->stats();
  EXPECT_EQ(s.live_bytes, 0u);
  EXPECT_GT(s.footprint_bytes, 0u) << "cached slots are held, and counted";
  EXPECT_LE(s.footprint_bytes, detail::ThreadCache::kPerClass * 2048) << "at most one class's worth";
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->compact().ok());
  s = heap->stats();
  EXPECT_EQ(s.footprint_bytes, 0u) << "a compaction cycle takes the cached objects back";
  EXPECT_EQ(s.pages.slab, 0u) << "and gives their emptied page back";
  EXPECT_VALID(*heap);
}

TEST(ThreadCache, ACacheIsBoundedPerClassAndInBytes) {
  auto heap = make_heap();
  std::vector<Handle> small, big;
  for (int i = 0; i < 100; ++i) small.push_back(*heap->allocate(256));
  for (int i = 0; i < 3; ++i) big.push_back(*heap->allocate(600 * 1024));  // the 640 KiB class
  const std::size_t big_footprint = heap->stats().footprint_bytes - 100 * 256;
  for (Handle h : small) ASSERT_TRUE(heap->free(h).ok());
  EXPECT_LE(heap->stats().footprint_bytes - big_footprint, detail::ThreadCache::kPerClass * 256);
  for (Handle h : big) ASSERT_TRUE(heap->free(h).ok());
  // Within 1 MiB: one 640 KiB object, and what is left of the small ones.
  EXPECT_LE(heap->stats().footprint_bytes, std::size_t{1} << 20);
  EXPECT_GE(heap->stats().footprint_bytes, 640u * 1024) << "the latest free is the one kept";
  EXPECT_VALID(*heap);
}

TEST(ThreadCache, OffEveryFreeReachesItsSlabAtOnce) {
  auto heap = make_heap(uncached());
  const Handle h = *heap->allocate(4096);
  ASSERT_TRUE(heap->free(h).ok());
  EXPECT_EQ(heap->stats().footprint_bytes, 0u);
  EXPECT_VALID(*heap);
}

TEST(ThreadCache, APinnedObjectIsNotFreedAndAStreamUnpinSendsItsFreeToTheLockedPath) {
  auto fh = make_faultable_heap();
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  ASSERT_TRUE(heap.free(*heap.allocate(8192)).ok());  // this thread has a cache now
  const Handle h = *heap.allocate(8192);
  fill(heap, h, 3);
  {
    auto pin = heap.pin(h);
    ASSERT_TRUE(pin.ok());
    EXPECT_EQ(heap.free(h).code(), Errc::pinned);
  }
  EXPECT_EQ(mismatches(heap, h, 3), 0u) << "a refused free changed nothing";
  // An unpin queued on a stream that has not passed it: the free is deferred, not cached.
  const Stream s = *heap.backend().create_stream();
  std::atomic<bool> go{false};
  free_with_unpin_pending(fh, h, s, go);
  const Handle next = *heap.allocate(8192);
  EXPECT_NE(address_of(heap, next), 0u);
  EXPECT_VALID(heap);
  go.store(true);
  ASSERT_TRUE(heap.backend().synchronize_stream(s).ok());
  ASSERT_TRUE(heap.maintain().ok());
  EXPECT_EQ(heap.stats().stream_deferred_bytes, 0u);
  ASSERT_TRUE(heap.free(next).ok());
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.shutdown().ok());
}

// Eight threads allocate, write, check and free small objects (and some large ones) while
// another thread compacts and validates: every byte holds, every count adds up.
TEST(ThreadCache, ManyThreadsAgainstALiveCompactorKeepEveryByte) {
  Config cfg = host_config(512 * kMiB);
  auto heap = make_heap(cfg);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0}, checked{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(std::uint64_t(t) + 1);
      std::vector<std::pair<Handle, std::uint64_t>> mine;
      for (int i = 0; i < 3000; ++i) {
        if (mine.size() < 24 && (mine.empty() || rng() % 2)) {
          const std::size_t bytes = rng() % 50 == 0 ? 3 * kMiB : 256 + rng() % (300 * 1024);
          auto h = heap->allocate(bytes);
          if (!h.ok()) continue;
          const std::uint64_t seed = rng();
          auto pin = heap->pin(*h);
          if (!pin.ok() || !pattern_holds(heap->backend(), pin->address(), std::min<std::size_t>(pin->size(), 4096), seed))
            if (bad++ < 3) std::fprintf(stderr, "alloc pin/pattern %s\n", pin.ok() ? "pattern" : pin.error().to_string().c_str());
          mine.emplace_back(*h, seed);
        } else {
          const std::size_t k = rng() % mine.size();
          auto pin = heap->pin(mine[k].first);
          if (!pin.ok() && bad++ < 3) std::fprintf(stderr, "pin %s\n", pin.error().to_string().c_str());
          pin = make_error(Errc::internal, "unpinned");
          if (auto st = heap->free(mine[k].first); !st.ok() && bad++ < 3) std::fprintf(stderr, "free %s\n", st.error().to_string().c_str());
          ++checked;
          mine.erase(mine.begin() + std::ptrdiff_t(k));
        }
      }
      for (auto& [h, s] : mine)
        if (!heap->free(h).ok()) ++bad;
    });
  std::thread compactor([&] {
    while (!stop.load()) {
      (void)heap->compact();
      if (auto st = heap->validate(); !st.ok() && bad++ < 3) std::fprintf(stderr, "%s\n", st.error().to_string().c_str());
    }
  });
  for (auto& t : threads) t.join();
  stop.store(true);
  compactor.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(checked.load(), 1000u);
  const HeapStats s = heap->stats();
  EXPECT_EQ(s.live_bytes, 0u);
  EXPECT_EQ(s.live_objects, 0u);
  EXPECT_EQ(s.ops.allocate, s.ops.free);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->compact().ok());
  EXPECT_EQ(heap->stats().footprint_bytes, 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->shutdown().ok());
}

TEST(ThreadCache, ShutdownWithObjectsCachedOnManyThreadsGivesEverythingBack) {
  auto fh = make_faultable_heap();
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 2; ++i) {
        std::vector<Handle> hs;
        for (int k = 0; k < 20; ++k) hs.push_back(*heap.allocate(1024 * (k + 1)));
        for (Handle h : hs) ASSERT_TRUE(heap.free(h).ok());
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_GT(heap.stats().footprint_bytes, 0u);
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.shutdown().ok());
  EXPECT_EQ(heap.allocate(256).code(), Errc::shut_down);
  EXPECT_EQ(fh.host().pages_in_use(), 0u) << "every page went back to the backend";
}

// A locked free of an object a cache handed out (here a stream-ordered free, which never takes
// the fast path) before the cache's counters were folded: the counters stay exact, never below 0.
TEST(ThreadCache, ALockedFreeOfAFastAllocationKeepsTheCountersExact) {
  auto heap = make_heap();
  ASSERT_TRUE(heap->free(*heap->allocate(100)).ok());
  (void)heap->stats();  // folds
  const Handle h = *heap->allocate(100);  // from the cache, not yet counted by the heap
  const Stream s = *heap->backend().create_stream();
  ASSERT_TRUE(heap->free(h, s).ok());
  {
    auto& core = HeapInternals::of(*heap);
    std::lock_guard lock(core.mu);
    EXPECT_EQ(core.live_bytes_known(), 0u) << "what the heap alone knows is clamped at 0";
  }
  const HeapStats st = heap->stats();
  EXPECT_EQ(st.live_bytes, 0u);
  EXPECT_EQ(st.live_objects, 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->backend().synchronize_stream(s).ok());
  ASSERT_TRUE(heap->shutdown().ok());
}

TEST(ThreadCache, StatsAfterShutdownCountEveryOperation) {
  auto heap = make_heap();
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(heap->free(*heap->allocate(512)).ok());
  ASSERT_TRUE(heap->shutdown().ok());
  const HeapStats s = heap->stats();
  EXPECT_EQ(s.ops.allocate, 100u);
  EXPECT_EQ(s.ops.free, 100u);
}

TEST(ThreadCache, TheCachesOfThreadsThatExitedGoAtTheNextCycle) {
  auto heap = make_heap();
  auto& core = HeapInternals::of(*heap);
  for (int round = 0; round < 3; ++round) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&] {
        std::vector<Handle> hs;
        for (int k = 0; k < 16; ++k) hs.push_back(*heap->allocate(4096 * (k + 1)));
        for (Handle h : hs) ASSERT_TRUE(heap->free(h).ok());
      });
    for (auto& t : threads) t.join();
    EXPECT_GT(heap->stats().footprint_bytes, 0u) << "the exited threads' caches still hold their frees";
    ASSERT_TRUE(heap->compact().ok());
    EXPECT_EQ(heap->stats().footprint_bytes, 0u);
    std::lock_guard lock(core.mu);
    EXPECT_EQ(core.caches.count(), 0u) << "no cache is left for a thread that exited";
  }
  EXPECT_VALID(*heap);
}

// A freed large run is kept by its thread and taken back, at the same address and without the
// heap lock or a driver call, by an allocation of its page count and at most its bytes; more
// bytes (its tail may be another's) or another page count take the locked path.
TEST(ThreadCacheRuns, AFreedRunIsTakenBackByItsThreadForAtMostItsBytes) {
  auto heap = make_heap();
  const std::size_t bytes = 4 * kPage - 300 * 1024;  // four pages, the last with room for a tail
  const Handle old = *heap->allocate(bytes);
  const DevicePtr at = address_of(*heap, old);
  ASSERT_TRUE(heap->free(old).ok());  // cached on the locked path (this thread's cache made now)
  EXPECT_EQ(heap->stats().footprint_bytes, 4 * kPage) << "a cached run stays in the footprint";
  EXPECT_VALID(*heap);
  const DriverCallCounts calls_before = heap->driver_calls().totals();
  Result<Handle> again = make_error(Errc::internal, "not run");
  std::chrono::steady_clock::duration took{};
  {
    HeapLockHolder holder(*heap);
    const auto t0 = std::chrono::steady_clock::now();
    again = heap->allocate(bytes - 4096);
    took = std::chrono::steady_clock::now() - t0;
  }
  EXPECT_LT(took, std::chrono::seconds(5)) << "the allocation waited for the heap lock";
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(heap->driver_calls().totals().since(calls_before).total(), 0u);
  EXPECT_EQ(again->index, old.index);
  EXPECT_NE(again->generation, old.generation);
  EXPECT_EQ(address_of(*heap, *again), at) << "the cached run was reused where it is mapped";
  EXPECT_EQ(heap->free(old).code(), Errc::stale_handle);
  EXPECT_EQ(heap->pin(old).code(), Errc::stale_handle);
  fill(*heap, *again, 5);
  EXPECT_EQ(mismatches(*heap, *again, 5), 0u);
  HeapStats s = heap->stats();
  EXPECT_EQ(s.live_bytes, bytes - 4096);
  EXPECT_EQ(s.live_objects, 1u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->free(*again).ok());  // cached with bytes - 4096
  // More bytes than the run was freed with, and fewer pages: neither takes it.
  const Handle more = *heap->allocate(bytes);
  EXPECT_NE(address_of(*heap, more), at);
  const Handle fewer = *heap->allocate(3 * kPage - 300 * 1024);
  EXPECT_NE(address_of(*heap, fewer), at);
  EXPECT_VALID(*heap);
  const Handle fits = *heap->allocate(bytes - 8192);
  EXPECT_EQ(address_of(*heap, fits), at);
  for (Handle h : {more, fewer, fits}) ASSERT_TRUE(heap->free(h).ok());
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->compact().ok());
  s = heap->stats();
  EXPECT_EQ(s.footprint_bytes, 0u) << "a compaction cycle takes the cached runs back";
  EXPECT_EQ(s.pages.large, 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->shutdown().ok());
}

// A run whose last page a slab page shares (its small objects live in the rest of that page)
// is cached and taken back for fewer bytes: the small objects keep every byte, and the heap
// stays valid while the run is cached, reused and given back.
TEST(ThreadCacheRuns, ARunWithASharedTailKeepsItsTailsObjectsAcrossReuse) {
  Config cfg = host_config();
  auto heap = make_heap(cfg);
  const std::size_t bytes = 2 * kPage + 256 * 1024;  // its last page has 1.75 MiB of room
  const Handle big = *heap->allocate(bytes);
  const DevicePtr at = address_of(*heap, big);
  std::vector<Handle> small;
  for (int i = 0; i < 6; ++i) {
    small.push_back(*heap->allocate(128 * 1024));
    fill(*heap, small.back(), 100 + std::uint64_t(i));
  }
  ASSERT_GE(heap->stats().pages.shared_tails, 1u) << "a slab page went onto the object's tail";
  fill(*heap, big, 1);
  ASSERT_TRUE(heap->free(big).ok());
  EXPECT_VALID(*heap);
  const Handle again = *heap->allocate(bytes - 64 * 1024);
  EXPECT_EQ(address_of(*heap, again), at);
  fill(*heap, again, 2);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(mismatches(*heap, small[std::size_t(i)], 100 + std::uint64_t(i)), 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->free(again).ok());
  ASSERT_TRUE(heap->compact().ok());  // the run goes back; its tail's page stays the slab page's
  for (int i = 0; i < 6; ++i) EXPECT_EQ(mismatches(*heap, small[std::size_t(i)], 100 + std::uint64_t(i)), 0u);
  EXPECT_VALID(*heap);
  for (Handle h : small) ASSERT_TRUE(heap->free(h).ok());
  ASSERT_TRUE(heap->compact().ok());
  EXPECT_EQ(heap->stats().footprint_bytes, 0u);
  EXPECT_VALID(*heap);
}

// A thread keeps runs within its own byte limit and all threads within the total; the oldest go
// first, back to the reserve.
TEST(ThreadCacheRuns, CachedRunsAreBoundedPerThreadAndInAll) {
  Config cfg = host_config(512 * kMiB);
  cfg.thread_cache_run_bytes = 16 * kMiB;
  cfg.thread_cache_runs_total_bytes = 24 * kMiB;
  auto heap = make_heap(cfg);
  std::vector<Handle> hs;
  for (int i = 0; i < 3; ++i) hs.push_back(*heap->allocate(8 * kMiB));
  const Handle too_big = *heap->allocate(20 * kMiB);
  for (Handle h : hs) ASSERT_TRUE(heap->free(h).ok());
  EXPECT_EQ(heap->stats().footprint_bytes - 20 * kMiB, 16 * kMiB) << "two runs of 8 MiB kept, the oldest gone";
  ASSERT_TRUE(heap->free(too_big).ok());
  EXPECT_EQ(heap->stats().footprint_bytes, 16 * kMiB) << "a run over the limit is never cached";
  std::thread other([&] {
    std::vector<Handle> mine;
    for (int i = 0; i < 2; ++i) mine.push_back(*heap->allocate(8 * kMiB));
    for (Handle h : mine) EXPECT_TRUE(heap->free(h).ok());
  });
  other.join();
  EXPECT_EQ(heap->stats().footprint_bytes, 24 * kMiB) << "all caches together keep at most 24 MiB";
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->compact().ok());
  EXPECT_EQ(heap->stats().footprint_bytes, 0u);
  EXPECT_VALID(*heap);
}

// A thread whose freed runs are never taken back stops keeping them (they would hold mapped
// memory for nothing), and keeps them again once its allocations take a probe's run back.
TEST(ThreadCacheRuns, AThreadKeepsRunsOnlyWhileItTakesThemBack) {
  Config cfg = host_config(512 * kMiB);
  cfg.thread_cache_run_bytes = 16 * kMiB;
  auto heap = make_heap(cfg);
  std::vector<Handle> hs;
  for (int i = 0; i < 40; ++i) hs.push_back(*heap->allocate(4 * kMiB));
  for (Handle h : hs) ASSERT_TRUE(heap->free(h).ok());
  EXPECT_LE(heap->stats().footprint_bytes, 4 * kMiB) << "runs never reused were kept";
  EXPECT_VALID(*heap);
  std::vector<DevicePtr> at;
  for (int i = 0; i < 60; ++i) {
    const Handle h = *heap->allocate(4 * kMiB);
    at.push_back(address_of(*heap, h));
    ASSERT_TRUE(heap->free(h).ok());
  }
  for (std::size_t i = 20; i < at.size(); ++i) EXPECT_EQ(at[i], at.back()) << "allocation " << i << " missed its run";
  EXPECT_EQ(heap->stats().footprint_bytes, 4 * kMiB);
  EXPECT_VALID(*heap);
}

// A run with a stream-ordered unpin still pending is never cached: its free waits for the
// stream, and until then no allocation (on the fast path or the locked one) is given its pages.
TEST(ThreadCacheRuns, ARunWithAPendingStreamUnpinIsNotReusedBeforeTheStreamPassesIt) {
  auto fh = make_faultable_heap();
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  ASSERT_TRUE(heap.free(*heap.allocate(3 * kPage)).ok());  // this thread has a cache (and a run in it)
  const Handle h = *heap.allocate(3 * kPage);
  const DevicePtr at = address_of(heap, h);
  const Stream s = *heap.backend().create_stream();
  std::atomic<bool> go{false};
  free_with_unpin_pending(fh, h, s, go);
  std::vector<Handle> next;
  for (int i = 0; i < 4; ++i) {
    next.push_back(*heap.allocate(3 * kPage - 4096 * std::size_t(i)));
    EXPECT_NE(address_of(heap, next.back()), at) << "the run was reused under the stream's queued work";
  }
  EXPECT_VALID(heap);
  go.store(true);
  ASSERT_TRUE(heap.backend().synchronize_stream(s).ok());
  ASSERT_TRUE(heap.maintain().ok());
  EXPECT_EQ(heap.stats().stream_deferred_bytes, 0u);
  for (Handle n : next) ASSERT_TRUE(heap.free(n).ok());
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.shutdown().ok());
}

// Eight threads allocate, write, check and free large objects (runs of one to eight pages, sizes
// varying within a page count, some pinned for a stream that passes its unpin later) while the
// keeper trims and refills the reserve and another thread compacts (draining the caches) and
// validates: every byte holds and every count adds up.
TEST(ThreadCacheRuns, ManyThreadsReuseRunsAgainstTheKeeperAndALiveCompactor) {
  Config cfg = host_config(1024 * kMiB);
  cfg.background_reserve = true;
  cfg.thread_cache_run_bytes = 16 * kMiB;
  cfg.thread_cache_runs_total_bytes = 64 * kMiB;
  auto fh = make_faultable_heap(cfg);
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0}, checked{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(std::uint64_t(t) + 7);
      const Stream s = *heap.backend().create_stream();
      std::vector<std::pair<Handle, std::uint64_t>> mine;
      for (int i = 0; i < 1500; ++i) {
        if (mine.size() < 6 && (mine.empty() || rng() % 2)) {
          const std::size_t pages = 1 + rng() % 8;
          const std::size_t bytes = pages * kPage - rng() % (kPage - 1);
          auto h = heap.allocate(std::max(bytes, std::size_t{1} << 20 | 1));
          if (!h.ok()) continue;
          const std::uint64_t seed = rng();
          auto pin = heap.pin(*h);
          if (!pin.ok()) {
            if (bad++ < 3) std::fprintf(stderr, "pin %s\n", pin.error().to_string().c_str());
            continue;
          }
          const PatternRange r{pin->address(), std::min<std::size_t>(pin->size(), 64 * 1024), seed};
          if ((!heap.backend().fill_pattern({&r, 1}, Stream{}).ok() || !heap.backend().synchronize_stream(Stream{}).ok()) &&
              bad++ < 3)
            std::fprintf(stderr, "fill failed\n");
          mine.emplace_back(*h, seed);
        } else {
          const std::size_t k = rng() % mine.size();
          const auto [h, seed] = mine[k];
          {
            auto pin = heap.pin(h);
            const PatternRange r{pin.ok() ? pin->address() : 0, pin.ok() ? std::min<std::size_t>(pin->size(), 64 * 1024) : 0, seed};
            auto differ = pin.ok() ? heap.backend().verify_pattern({&r, 1}, Stream{}) : Result<std::uint64_t>(pin.error());
            if ((!differ.ok() || *differ != 0) && bad++ < 3)
              std::fprintf(stderr, "pattern %s\n", differ.ok() ? "wrong" : differ.error().to_string().c_str());
          }
          if (rng() % 8 == 0) {  // a stream-ordered unpin pending at the free
            auto sp = heap.pin(h, s);
            if (sp.ok()) (void)sp->release();
          }
          if (auto st = heap.free(h); !st.ok() && bad++ < 3) std::fprintf(stderr, "free %s\n", st.error().to_string().c_str());
          ++checked;
          mine.erase(mine.begin() + std::ptrdiff_t(k));
        }
      }
      for (auto& [h, seed] : mine)
        if (!heap.free(h).ok()) ++bad;
      (void)heap.backend().synchronize_stream(s);
    });
  std::thread compactor([&] {
    while (!stop.load()) {
      (void)heap.compact();
      if (auto st = heap.validate(); !st.ok() && bad++ < 3) std::fprintf(stderr, "%s\n", st.error().to_string().c_str());
    }
  });
  for (auto& t : threads) t.join();
  stop.store(true);
  compactor.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(checked.load(), 2000u);
  ASSERT_TRUE(heap.maintain().ok());
  const HeapStats st = heap.stats();
  EXPECT_EQ(st.live_bytes, 0u);
  EXPECT_EQ(st.ops.allocate, st.ops.free);
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.compact().ok());
  EXPECT_EQ(heap.stats().footprint_bytes, 0u);
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.shutdown().ok());
}

// Heap::this_thread_lock_wait_by_holder puts each wait on the role of the thread that held the
// lock when it began: the keeper's or compaction's hold, not the caller's.
TEST(HeapLockWaits, AWaitIsCountedAgainstTheRoleThatHeldTheLock) {
  auto heap = make_heap(uncached());
  ASSERT_TRUE(heap);
  auto& core = detail::HeapInternals::of(*heap);
  for (const detail::LockRole role : {detail::LockRole::keeper, detail::LockRole::compaction}) {
    SCOPED_TRACE(int(role));
    std::atomic<bool> held{false};
    std::thread holder([&] {
      const detail::ScopedLockRole as(role);
      std::lock_guard lock(core.mu);
      held = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    });
    while (!held) std::this_thread::yield();
    const Heap::LockWaitsByHolder before = Heap::this_thread_lock_wait_by_holder();
    auto h = heap->allocate(4 * detail::kPageSize);
    const Heap::LockWaitsByHolder after = Heap::this_thread_lock_wait_by_holder();
    holder.join();
    ASSERT_TRUE(h.ok());
    const bool keeper = role == detail::LockRole::keeper;
    EXPECT_GE((keeper ? after.keeper_ns - before.keeper_ns : after.compaction_ns - before.compaction_ns),
              10'000'000u)
        << "the wait was not put on the holder's role";
    EXPECT_EQ(after.callers_ns, before.callers_ns);
    EXPECT_EQ(after.mapper_ns, before.mapper_ns);
    EXPECT_EQ(keeper ? after.compaction_ns : after.keeper_ns, keeper ? before.compaction_ns : before.keeper_ns);
    EXPECT_TRUE(heap->free(*h).ok());
  }
  EXPECT_VALID(*heap);
}

// stats().lock_holds puts each hold of the heap lock on its holder's role, with its length: a
// 30 ms hold by the keeper is the keeper's longest and over 8 us, and moves no other role's
// longest hold there.
TEST(HeapLockHolds, AHoldIsCountedAgainstItsHoldersRole) {
  auto heap = make_heap(uncached());
  ASSERT_TRUE(heap);
  auto& core = detail::HeapInternals::of(*heap);
  const HeapStats::LockHoldsByRole before = heap->stats().lock_holds;
  {
    const detail::ScopedLockRole as(detail::LockRole::keeper);
    std::lock_guard lock(core.mu);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
  auto h = heap->allocate(4 * detail::kPageSize);  // a caller's hold
  ASSERT_TRUE(h.ok());
  const HeapStats::LockHoldsByRole after = heap->stats().lock_holds;
  EXPECT_EQ(after.keeper.holds, before.keeper.holds + 1);
  EXPECT_GE(after.keeper.longest_ns, 30'000'000u);
  EXPECT_GE(after.keeper.total_ns - before.keeper.total_ns, 30'000'000u);
  EXPECT_EQ(after.keeper.over_8us, before.keeper.over_8us + 1);
  EXPECT_LE(after.keeper.p99_ns, after.keeper.longest_ns);
  EXPECT_GT(after.callers.holds, before.callers.holds) << "the allocation's hold was not a caller's";
  EXPECT_LT(after.callers.longest_ns, 30'000'000u) << "the keeper's hold went to the callers";
  EXPECT_EQ(after.compaction.holds, before.compaction.holds);
  EXPECT_EQ(after.mapper.holds, before.mapper.holds);
  EXPECT_TRUE(heap->free(*h).ok());
  EXPECT_VALID(*heap);
}

// Heap::this_thread_lock_wait_ns counts the time a thread waited for a heap lock another thread
// held, and nothing when the lock was free.
TEST(HeapLockWaits, AThreadsWaitForTheHeapLockIsCountedOnThatThreadOnly) {
  auto heap = make_heap(uncached());
  ASSERT_TRUE(heap);
  const std::uint64_t before = Heap::this_thread_lock_wait_ns();
  auto free_lock = heap->allocate(4 * detail::kPageSize);
  ASSERT_TRUE(free_lock.ok());
  EXPECT_EQ(Heap::this_thread_lock_wait_ns(), before) << "an uncontended allocation counted a wait";
  auto& core = detail::HeapInternals::of(*heap);
  std::atomic<bool> held{false};
  std::uint64_t holder_waited = 0;
  std::thread holder([&] {
    const std::uint64_t mine = Heap::this_thread_lock_wait_ns();
    {
      std::lock_guard lock(core.mu);
      held = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
    holder_waited = Heap::this_thread_lock_wait_ns() - mine;
  });
  while (!held) std::this_thread::yield();
  const std::uint64_t waiting_from = Heap::this_thread_lock_wait_ns();
  auto contended = heap->allocate(4 * detail::kPageSize);
  const std::uint64_t waited = Heap::this_thread_lock_wait_ns() - waiting_from;
  holder.join();
  ASSERT_TRUE(contended.ok());
  EXPECT_GE(waited, 10'000'000u) << "the allocation's wait for the held lock was not counted";
  EXPECT_EQ(holder_waited, 0u) << "the holder's own section was counted as a wait";
  EXPECT_TRUE(heap->free(*free_lock).ok());
  EXPECT_TRUE(heap->free(*contended).ok());
  EXPECT_VALID(*heap);
}

}  // namespace
}  // namespace valet::test
