// Stream-ordered frees (Heap::free(h, stream)): the freeing stream reuses the memory at once;
// other streams, the compactor and page release only once the stream has passed the free.
// Streams are the host backend's (worker threads); a "kernel" that is still running is a host
// task on the stream that waits for the test to let it go.
#include <atomic>
#include <chrono>
#include <thread>

#include "heap_test_util.h"

namespace valet::test {
namespace {

// A task queued on a host stream that runs until release() (or 10 s, so a failing test ends).
struct StreamBlocker {
  std::shared_ptr<std::atomic<bool>> go = std::make_shared<std::atomic<bool>>(false);
  void block(HostBackend& host, Stream s) {
    auto flag = go;
    ASSERT_TRUE(host.enqueue_host_task(s, [flag] {
                      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
                      while (!flag->load() && std::chrono::steady_clock::now() < until)
                        std::this_thread::sleep_for(std::chrono::milliseconds(1));
                    }).ok());
  }
  void release() { go->store(true); }
};

// Streams cache nothing: every stream-ordered free is covered by an event at once.
Config uncached_streams() {
  Config c = host_config();
  c.stream_cache_bytes = 0;
  return c;
}

DevicePtr address_of(Heap& heap, Handle h) {
  auto pin = heap.pin(h);
  return pin.ok() ? pin->address() : 0;
}

TEST(StreamFree, TheFreeingStreamReusesTheMemoryAtOnce) {
  auto fh = make_faultable_heap();
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  const Stream s = *heap.backend().create_stream();
  StreamBlocker busy;
  busy.block(fh.host(), s);  // the stream's work has not passed anything yet
  for (std::size_t bytes : {std::size_t{4096}, std::size_t{96} * 1024, std::size_t{6} * kMiB + 512}) {
    Handle a = *heap.allocate(bytes, s);
    const DevicePtr where = address_of(heap, a);
    ASSERT_TRUE(heap.free(a, s).ok());
    EXPECT_GT(heap.stats().stream_cached_bytes, 0u);
    EXPECT_VALID(heap);
    Handle b = *heap.allocate(bytes, s);
    EXPECT_EQ(address_of(heap, b), where) << bytes;
    EXPECT_EQ(heap.stats().stream_cached_bytes, 0u);
    auto f = heap.allocate_fixed(bytes, s);  // not the same memory: b holds it
    ASSERT_TRUE(f.ok());
    EXPECT_NE(f->address, where);
    ASSERT_TRUE(heap.free(f->handle, s).ok());
    auto g = heap.allocate_fixed(bytes, s);  // fixed objects reuse their stream's frees too
    EXPECT_EQ(g->address, f->address);
    ASSERT_TRUE(heap.free(g->handle).ok());
    ASSERT_TRUE(heap.free(b).ok());
  }
  busy.release();
  ASSERT_TRUE(heap.backend().synchronize_stream(s).ok());
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.shutdown().ok());
}

// A large free is reused by its stream for any size of the same page count whose bytes fit
// its last page as laid out now: a slab page that moved onto the freed object's last page
// blocks only the old bytes there, so a larger last part must go elsewhere.
TEST(StreamFree, ALargeFreeIsReusedByItsStreamAtAnySizeOfTheSamePageCountThatFitsItsLastPage) {
  auto fh = make_faultable_heap();
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  const Stream s = *heap.backend().create_stream();
  StreamBlocker busy;
  busy.block(fh.host(), s);
  Handle a = *heap.allocate(6 * kMiB + 512, s);  // 4 pages, 512 bytes used in the last
  const DevicePtr where = address_of(heap, a);
  ASSERT_TRUE(heap.free(a, s).ok());
  Handle b = *heap.allocate(7 * kMiB, s);  // 4 pages too
  EXPECT_EQ(address_of(heap, b), where);
  EXPECT_EQ(heap.stats().stream_cached_bytes, 0u);
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.free(b, s).ok());
  Handle c = *heap.allocate(6 * kMiB + 512, s);
  EXPECT_EQ(address_of(heap, c), where);
  ASSERT_TRUE(heap.free(c, s).ok());
  // The freed object's last page is an open tail: the first page of a new class goes onto it
  // and blocks one 64 KiB slot, the bytes the object used there.
  const std::size_t shared_before = heap.stats().pages.shared_tails;
  Handle small = *heap.allocate(64 * 1024);
  EXPECT_EQ(heap.stats().pages.shared_tails, shared_before + 1);
  EXPECT_VALID(heap);
  Handle d = *heap.allocate(7 * kMiB, s);  // 1 MiB in the last page: the slab page is there
  EXPECT_NE(address_of(heap, d), where);
  Handle e = *heap.allocate(6 * kMiB + 60 * 1024, s);  // within the blocked slot: reused
  EXPECT_EQ(address_of(heap, e), where);
  EXPECT_VALID(heap);
  for (Handle h : {small, d, e}) ASSERT_TRUE(heap.free(h).ok());
  busy.release();
  ASSERT_TRUE(heap.backend().synchronize_stream(s).ok());
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.shutdown().ok());
}

TEST(StreamFree, OtherStreamsWaitUntilTheStreamPassedTheFree) {
  auto fh = make_faultable_heap(uncached_streams());
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  const Stream s = *heap.backend().create_stream();
  const Stream t = *heap.backend().create_stream();
  // A page of 64 KiB objects; one freed on s while s is still "reading" it.
  std::vector<Handle> page;
  for (int i = 0; i < 32; ++i) page.push_back(*heap.allocate(64 * 1024, s));
  const DevicePtr freed_at = address_of(heap, page[5]);
  StreamBlocker busy;
  busy.block(fh.host(), s);
  ASSERT_TRUE(heap.free(page[5], s).ok());
  EXPECT_GT(heap.stats().stream_deferred_bytes, 0u);
  // Another stream, the compactor and maintain() leave it alone while s has not passed it.
  std::vector<Handle> other;
  for (int i = 0; i < 40; ++i) {
    other.push_back(*heap.allocate(64 * 1024, t));
    EXPECT_NE(address_of(heap, other.back()), freed_at);
  }
  ASSERT_TRUE(heap.compact().ok());
  ASSERT_TRUE(heap.maintain().ok());
  EXPECT_GT(heap.stats().stream_deferred_bytes, 0u);
  EXPECT_VALID(heap);
  busy.release();
  ASSERT_TRUE(heap.backend().synchronize_stream(s).ok());
  ASSERT_TRUE(heap.maintain().ok());  // reaps: the slot goes back to every stream
  EXPECT_EQ(heap.stats().stream_deferred_bytes, 0u);
  for (Handle h : other) ASSERT_TRUE(heap.free(h).ok());
  bool reused = false;
  for (int i = 0; i < 64 && !reused; ++i) {
    Handle h = *heap.allocate(64 * 1024, t);
    reused = address_of(heap, h) == freed_at;
    other.push_back(h);
  }
  EXPECT_TRUE(reused) << "the slot came back once the stream passed the free";
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.shutdown().ok());
}

TEST(StreamFree, AnAllocationTakesBackTheFreesTheStreamHasPassedBeforeItMapsMore) {
  auto fh = make_faultable_heap(uncached_streams());
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  const Stream s = *heap.backend().create_stream();
  StreamBlocker busy;
  busy.block(fh.host(), s);
  Handle big = *heap.allocate(32 * kMiB, s);
  ASSERT_TRUE(heap.free(big, s).ok());  // deferred: s has not passed it
  EXPECT_EQ(heap.stats().stream_deferred_bytes, 32 * kMiB);
  busy.release();
  ASSERT_TRUE(heap.backend().synchronize_stream(s).ok());
  // No maintain(), no flush, no out-of-memory: the next allocation alone reaps the free and
  // places the new object in its pages rather than mapping more.
  const std::size_t mapped = heap.stats().mapped_bytes;
  Handle next = *heap.allocate(24 * kMiB, s);
  EXPECT_EQ(heap.stats().stream_deferred_bytes, 0u);
  EXPECT_LE(heap.stats().mapped_bytes, mapped);
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.free(next).ok());
  ASSERT_TRUE(heap.shutdown().ok());
}

TEST(StreamFree, OutOfMemoryWaitsForTheStreamsBeforeItIsReported) {
  auto fh = make_faultable_heap(host_config(64 * kMiB));
  ASSERT_TRUE(fh.heap);
  Heap& heap = *fh.heap;
  const Stream s = *heap.backend().create_stream();
  const Stream t = *heap.backend().create_stream();
  std::vector<Handle> all;
  for (;;) {
    auto h = heap.allocate(4 * kMiB, s);
    if (!h.ok()) break;
    all.push_back(*h);
  }
  ASSERT_GE(all.size(), 12u);
  StreamBlocker busy;
  busy.block(fh.host(), s);
  for (Handle h : all) ASSERT_TRUE(heap.free(h, s).ok());
  // The whole heap is held for s (cached below the stream's share): another stream's request
  // waits for s to pass the frees (released from another thread shortly) and then succeeds.
  std::thread letgo([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    busy.release();
  });
  auto big = heap.allocate(48 * kMiB, t);
  letgo.join();
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.free(*big, t).ok());
  ASSERT_TRUE(heap.shutdown().ok()) << "cached frees of live streams are waited for at shutdown";
}

TEST(StreamFree, BadInputChangesNothing) {
  auto heap = make_heap();
  const Stream s = *heap->backend().create_stream();
  Handle h = *heap->allocate(1000, s);
  {
    auto pin = heap->pin(h);
    EXPECT_EQ(heap->free(h, s).code(), Errc::pinned);
  }
  ASSERT_TRUE(heap->free(h, s).ok());
  EXPECT_EQ(heap->free(h, s).code(), Errc::stale_handle);
  EXPECT_EQ(heap->free(Handle{}, s).code(), Errc::invalid_handle);
  EXPECT_VALID(*heap);
  const auto cached = heap->stats().stream_cached_bytes;
  EXPECT_EQ(cached, 1024u) << "one 1000-byte object's slot (1024-byte class) held for s";
  ASSERT_TRUE(heap->compact().ok());  // covers the cached free with an event: then reaped
  ASSERT_TRUE(heap->backend().synchronize_stream(s).ok());
  ASSERT_TRUE(heap->maintain().ok());
  EXPECT_EQ(heap->stats().stream_cached_bytes + heap->stats().stream_deferred_bytes, 0u);
  EXPECT_VALID(*heap);
}

TEST(StreamFree, FreesOfAStreamItsOwnerDestroyedGoBackToEveryone) {
  auto heap = make_heap();
  const Stream s = *heap->backend().create_stream();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(heap->free(*heap->allocate(3 * kPage, s), s).ok());
  EXPECT_GT(heap->stats().stream_cached_bytes, 0u);
  ASSERT_TRUE(heap->backend().destroy_stream(s).ok());  // waits for its work first
  ASSERT_TRUE(heap->compact().ok());
  EXPECT_EQ(heap->stats().stream_cached_bytes + heap->stats().stream_deferred_bytes, 0u);
  EXPECT_EQ(heap->stats().footprint_bytes, 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->shutdown().ok());
}

TEST(StreamFree, FlushStreamLeavesNothingToRecordOnTheStreamItsOwnerDestroys) {
  auto heap = make_heap();
  const Stream s = *heap->backend().create_stream();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(heap->free(*heap->allocate(3 * kPage, s), s).ok());
  EXPECT_GT(heap->stats().stream_cached_bytes, 0u);
  ASSERT_TRUE(heap->flush_stream(s).ok());
  EXPECT_EQ(heap->stats().stream_cached_bytes, 0u);
  ASSERT_TRUE(heap->backend().synchronize_stream(s).ok());
  ASSERT_TRUE(heap->backend().destroy_stream(s).ok());
  const std::uint64_t records = heap->driver_calls().calls(DriverOp::record_event);
  ASSERT_TRUE(heap->compact().ok());
  ASSERT_TRUE(heap->maintain().ok());
  EXPECT_EQ(heap->driver_calls().calls(DriverOp::record_event), records) << "recorded on a destroyed stream";
  EXPECT_EQ(heap->stats().stream_cached_bytes + heap->stats().stream_deferred_bytes, 0u);
  EXPECT_EQ(heap->stats().footprint_bytes, 0u);
  EXPECT_TRUE(heap->flush_stream(s).ok());  // a stream with nothing cached (even one gone): nothing to do
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->shutdown().ok());
  EXPECT_EQ(heap->flush_stream(s).code(), Errc::shut_down);
}

TEST(StreamFree, StreamsCreatedFreedOnFlushedAndDestroyedWhileCompactionFlushesEveryStream) {
  auto heap = make_heap(host_config(256 * kMiB));
  std::atomic<bool> stop{false};
  std::thread compactor([&] {
    while (!stop.load()) (void)heap->compact();  // each cycle flushes every stream's frees
  });
  std::vector<std::thread> owners;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t)
    owners.emplace_back([&, t] {
      for (int round = 0; round < 30; ++round) {
        auto s = heap->backend().create_stream();
        if (!s.ok()) { ++failures; return; }
        for (int i = 0; i < 6; ++i) {
          auto h = heap->allocate(std::size_t(1 + (i + t) % 3) * kPage + 4096 * i, *s);
          if (!h.ok() || !heap->free(*h, *s).ok()) ++failures;
        }
        if (!heap->flush_stream(*s).ok()) ++failures;
        if (!heap->backend().synchronize_stream(*s).ok()) ++failures;
        if (!heap->backend().destroy_stream(*s).ok()) ++failures;
      }
    });
  for (auto& o : owners) o.join();
  stop.store(true);
  compactor.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_TRUE(heap->maintain().ok());
  EXPECT_EQ(heap->stats().stream_cached_bytes, 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->shutdown().ok());
}

TEST(StreamFree, ManyThreadsFreeingAndReusingOnTheirStreamsKeepTheHeapValid) {
  Config c = host_config(512 * kMiB);
  c.stream_cache_bytes = 4 * kMiB;
  auto heap = make_heap(c);
  constexpr int kThreads = 6;
  std::vector<Stream> streams;
  for (int i = 0; i < kThreads; ++i) streams.push_back(*heap->backend().create_stream());
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::vector<Handle> live;
      for (int i = 0; i < 3000; ++i) {
        if (live.size() < 50 && rng() % 3 != 0) {
          const std::size_t bytes = (rng() % 4 == 0) ? (1 + rng() % 3) * kPage + 4096 : 256 * (1 + rng() % 64);
          if (rng() % 2) {
            if (auto h = heap->allocate(bytes, streams[t]); h.ok()) live.push_back(*h);
          } else if (auto f = heap->allocate_fixed(bytes, streams[t]); f.ok()) {
            live.push_back(f->handle);
          }
        } else if (!live.empty()) {
          const std::size_t k = rng() % live.size();
          if (!heap->free(live[k], streams[t]).ok()) ++errors;
          live.erase(live.begin() + std::ptrdiff_t(k));
        }
        if (i % 500 == 0 && t == 0) (void)heap->compact();
      }
      for (Handle h : live)
        if (!heap->free(h, streams[t]).ok()) ++errors;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().live_objects, 0u);
  ASSERT_TRUE(heap->shutdown().ok());
}

}  // namespace
}  // namespace valet::test
