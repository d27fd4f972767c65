// The heap's behaviour on the host backend: allocation, pins, resize, bad input, reserve, stats.
#include <algorithm>
#include <cmath>
#include <random>
#include <thread>
#include <unordered_map>

#include "../support/test_scale.h"
#include "heap_test_util.h"
#include "valet/stats_json.h"

namespace valet::test {
namespace {

TEST(Heap, AllocatesSmallAndLargeObjectsThatHoldTheirBytes) {
  auto heap = make_heap();
  std::vector<std::pair<Handle, std::size_t>> objs;
  for (std::size_t bytes : {1ul, 255ul, 256ul, 4097ul, 65536ul, 1048576ul, 1048577ul, 3 * kMiB + 5, 20 * kMiB}) {
    auto h = heap->allocate(bytes);
    ASSERT_TRUE(h.ok()) << h.error().to_string();
    EXPECT_EQ(*heap->size_of(*h), bytes);
    fill(*heap, *h, seed_of(*h));
    objs.emplace_back(*h, bytes);
  }
  EXPECT_VALID(*heap);
  for (auto [h, bytes] : objs) EXPECT_EQ(mismatches(*heap, h, seed_of(h)), 0u) << bytes;
  auto s = heap->stats();
  EXPECT_EQ(s.live_objects, objs.size());
  EXPECT_GE(s.mapped_bytes, s.live_bytes);
  EXPECT_EQ(s.ops.allocate, objs.size());
  for (auto [h, bytes] : objs) ASSERT_TRUE(heap->free(h).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().live_bytes, 0u);
}

TEST(Heap, PeakMappedBytesHoldsTheMostEverMappedAfterThePagesGoBack) {
  auto heap = make_heap();
  EXPECT_GE(heap->stats().peak_mapped_bytes, heap->stats().mapped_bytes);
  auto big = heap->allocate(64 * kMiB);
  ASSERT_TRUE(big.ok());
  const std::size_t mapped_with_big = heap->stats().mapped_bytes;
  EXPECT_GE(mapped_with_big, 64 * kMiB);
  ASSERT_TRUE(heap->free(*big).ok());
  ASSERT_TRUE(heap->maintain().ok());  // the freed pages beyond the reserve go back
  const HeapStats after = heap->stats();
  EXPECT_LT(after.mapped_bytes, mapped_with_big);
  EXPECT_GE(after.peak_mapped_bytes, mapped_with_big);  // every creation counted, not a sample
  EXPECT_LE(after.peak_mapped_bytes, after.capacity_bytes);
}

TEST(Heap, SlabObjectsAre256ByteAlignedAndDistinct) {
  auto heap = make_heap();
  std::vector<DevicePtr> addrs;
  std::vector<Handle> hs;
  for (int i = 0; i < 3000; ++i) {
    auto h = heap->allocate(1 + (i * 37) % 3000);
    ASSERT_TRUE(h.ok());
    auto p = heap->pin(*h);
    EXPECT_EQ(p->address() % 256, 0u);
    addrs.push_back(p->address());
    hs.push_back(*h);
  }
  std::sort(addrs.begin(), addrs.end());
  EXPECT_EQ(std::adjacent_find(addrs.begin(), addrs.end()), addrs.end());
  EXPECT_VALID(*heap);
}

TEST(Heap, BadInputGetsClearErrorsAndLosesNothing) {
  auto heap = make_heap();
  auto other = make_heap();
  auto keep = *heap->allocate(1000);
  fill(*heap, keep, 1);
  auto h = *heap->allocate(5000);

  EXPECT_EQ(heap->allocate(0).code(), Errc::invalid_argument);
  EXPECT_EQ(heap->allocate(std::size_t{1} << 60).code(), Errc::invalid_argument);
  EXPECT_EQ(heap->allocate(300 * kMiB).code(), Errc::out_of_memory);  // more than the capacity
  EXPECT_EQ(heap->free(Handle{}).code(), Errc::invalid_handle);
  EXPECT_EQ(heap->free(Handle{999999, 1, heap->tag()}).code(), Errc::invalid_handle);
  auto foreign = *other->allocate(100);
  EXPECT_EQ(heap->free(foreign).code(), Errc::foreign_handle);
  EXPECT_EQ(heap->pin(foreign).code(), Errc::foreign_handle);
  {
    auto pin = heap->pin(h);
    ASSERT_TRUE(pin.ok());
    EXPECT_EQ(heap->free(h).code(), Errc::pinned);
    EXPECT_EQ(heap->resize(h, 100000).code(), Errc::pinned);
  }
  EXPECT_EQ(heap->resize(h, 0).code(), Errc::invalid_argument);
  EXPECT_EQ(heap->resize(h, 300 * kMiB).code(), Errc::out_of_memory);
  EXPECT_EQ(*heap->size_of(h), 5000u);
  ASSERT_TRUE(heap->free(h).ok());
  EXPECT_EQ(heap->free(h).code(), Errc::stale_handle) << "double free";
  EXPECT_EQ(heap->pin(h).code(), Errc::stale_handle) << "pin of a freed object";
  EXPECT_EQ(heap->resize(h, 10).code(), Errc::stale_handle);
  auto reused = *heap->allocate(5000);  // may reuse the index: the old handle stays stale
  EXPECT_EQ(heap->free(h).code(), Errc::stale_handle);
  EXPECT_NE(reused, h);
  EXPECT_VALID(*heap);
  EXPECT_EQ(mismatches(*heap, keep, 1), 0u);
  EXPECT_EQ(heap->stats().live_objects, 2u);

  ASSERT_TRUE(heap->shutdown().ok());
  EXPECT_EQ(heap->allocate(10).code(), Errc::shut_down);
  EXPECT_EQ(heap->free(keep).code(), Errc::shut_down);
  EXPECT_EQ(heap->pin(keep).code(), Errc::shut_down);
  EXPECT_EQ(heap->resize(keep, 10).code(), Errc::shut_down);
  EXPECT_EQ(heap->compact().code(), Errc::shut_down);
  EXPECT_TRUE(heap->shutdown().ok()) << "shutdown is idempotent";
}

TEST(Heap, ShutdownWithPinsIsRefusedAndChangesNothing) {
  auto heap = make_heap();
  auto h = *heap->allocate(4096);
  fill(*heap, h, 3);
  {
    auto pin = heap->pin(h);
    EXPECT_EQ(heap->shutdown().code(), Errc::pinned);
    EXPECT_FALSE(heap->is_shut_down());
  }
  EXPECT_VALID(*heap);
  EXPECT_EQ(mismatches(*heap, h, 3), 0u);
  auto& host = static_cast<BackendModel<HostBackend>&>(heap->backend()).impl();
  ASSERT_TRUE(heap->shutdown().ok());
  EXPECT_EQ(host.pages_in_use(), 0u) << "every page went back to the backend";
}

TEST(Heap, ResizeKeepsContentsAcrossEveryKindOfChange) {
  auto heap = make_heap();
  auto h = *heap->allocate(1000);
  fill(*heap, h, 77);
  const std::size_t steps[] = {1020,        3000,       200,         900 * 1024, 5 * kMiB,
                               9 * kMiB,    7 * kMiB,   300 * 1024,  64};
  std::size_t kept = 200;  // the smallest size so far bounds what must be intact
  for (std::size_t bytes : steps) {
    ASSERT_TRUE(heap->resize(h, bytes).ok()) << bytes;
    kept = std::min(kept, bytes);
    EXPECT_EQ(*heap->size_of(h), bytes);
    EXPECT_EQ(mismatches(*heap, h, 77, kept), 0u) << "after resize to " << bytes;
    EXPECT_VALID(*heap);
  }
}

TEST(Heap, LargeObjectsGrowInPlaceOrMoveByRemapping) {
  auto heap = make_heap();
  auto a = *heap->allocate(4 * kMiB);
  fill(*heap, a, 5);
  const DevicePtr before = heap->pin(a)->address();
  ASSERT_TRUE(heap->resize(a, 8 * kMiB).ok());
  EXPECT_EQ(mismatches(*heap, a, 5, 4 * kMiB), 0u);
  // Block the space after `a`, then grow again: the pages move to a new range, not copied.
  auto stats0 = heap->stats();
  auto b = *heap->allocate(4 * kMiB);
  DevicePtr b_addr = heap->pin(b)->address();
  DevicePtr a_now = heap->pin(a)->address();
  const bool blocked = b_addr == a_now + 8 * kMiB;
  ASSERT_TRUE(heap->resize(a, 40 * kMiB).ok());
  EXPECT_EQ(mismatches(*heap, a, 5, 4 * kMiB), 0u);
  if (blocked) {
    EXPECT_NE(heap->pin(a)->address(), a_now);
  }
  EXPECT_EQ(heap->stats().driver_calls.copy, stats0.driver_calls.copy) << "large resize never copies";
  (void)before;
  ASSERT_TRUE(heap->resize(a, 2 * kMiB + 1).ok());
  EXPECT_EQ(mismatches(*heap, a, 5, 2 * kMiB), 0u);
  EXPECT_VALID(*heap);
}

TEST(Heap, LargeRequestsSucceedWhenFreePagesAreScattered) {
  // Fill the capacity with 1-page objects, free every other one: a 20-page request must be
  // stitched from scattered free pages. With the keeper's thread too: its trims of the freed
  // pages are in flight when the request comes, and the out-of-memory path must wait for them
  // without the keeper starting the next one.
  for (bool keeper : {false, true}) {
  SCOPED_TRACE(keeper ? "with the keeper's thread" : "no keeper thread");
  auto cfg = host_config(64 * kMiB);
  cfg.compact_on_oom = false;
  cfg.background_reserve = keeper;
  auto heap = make_heap(cfg);
  std::vector<Handle> hs;
  for (;;) {
    auto h = heap->allocate(2 * kMiB);
    if (!h.ok()) break;
    hs.push_back(*h);
  }
  ASSERT_EQ(hs.size(), 32u);
  for (std::size_t i = 0; i < hs.size(); i += 2) ASSERT_TRUE(heap->free(hs[i]).ok());
  auto big = heap->allocate(32 * kMiB);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  fill(*heap, *big, 9);
  EXPECT_EQ(mismatches(*heap, *big, 9), 0u);
  EXPECT_EQ(heap->allocate(2 * kMiB).code(), Errc::out_of_memory);
  EXPECT_VALID(*heap);
  }
}

// Out-of-memory is never reported while free pages are held. Each size class keeps an empty
// slab page against allocate/free ping-pong; a request that needs those pages gets them, with or
// without compaction on out-of-memory (giving back an empty page moves nothing). compact() and
// maintain() give them back too.
TEST(Heap, AnEmptiedHeapServesARequestThatFitsItsCapacity) {
  for (bool compact_on_oom : {true, false}) {
    SCOPED_TRACE(compact_on_oom ? "compact_on_oom" : "no compaction on out-of-memory");
    auto cfg = host_config(128 * kMiB);
    cfg.compact_on_oom = compact_on_oom;
    auto heap = make_heap(cfg);
    auto churn = [&] {
      std::vector<Handle> hs;
      for (int i = 0; i < 50; ++i) {
        // 16 B .. 1 MiB, geometrically: one or two objects in each of most size classes.
        auto h = heap->allocate(std::size_t(16.0 * std::pow(65536.0, i / 49.0)));
        ASSERT_TRUE(h.ok()) << h.error().to_string();
        hs.push_back(*h);
      }
      for (Handle h : hs) ASSERT_TRUE(heap->free(h).ok());
    };
    churn();
    ASSERT_GE(heap->stats().pages.slab, 30u) << "the test needs empty slab pages held";
    auto big = heap->allocate(96 * kMiB);
    ASSERT_TRUE(big.ok()) << big.error().to_string();
    EXPECT_VALID(*heap);
    ASSERT_TRUE(heap->free(*big).ok());
    churn();
    ASSERT_TRUE(heap->compact().ok());
    EXPECT_EQ(heap->stats().pages.slab, 0u) << "compact() kept empty slab pages";
    churn();
    ASSERT_TRUE(heap->maintain().ok());
    EXPECT_EQ(heap->stats().pages.slab, 0u) << "maintain() kept empty slab pages";
    EXPECT_VALID(*heap);
  }
}

TEST(Heap, AHeapFilledToOutOfMemoryAndEmptiedServesItsWholeCapacity) {
  auto heap = make_heap(host_config(128 * kMiB));
  std::mt19937_64 rng(5);
  std::vector<Handle> hs;
  for (;;) {
    const std::size_t bytes = (rng() % 4 == 0) ? 1 + rng() % (5 * kMiB) : 16 + rng() % (600 * 1024);
    auto h = heap->allocate(bytes);
    if (!h.ok()) {
      ASSERT_EQ(h.code(), Errc::out_of_memory) << h.error().to_string();
      break;
    }
    hs.push_back(*h);
  }
  ASSERT_GT(hs.size(), 20u);
  for (Handle h : hs) ASSERT_TRUE(heap->free(h).ok());
  auto big = heap->allocate(128 * kMiB - kPage);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->free(*big).ok());
  auto whole = heap->allocate(128 * kMiB);
  ASSERT_TRUE(whole.ok()) << whole.error().to_string();
  EXPECT_VALID(*heap);
}

TEST(Heap, OutOfMemoryMessageSaysAskedLiveAndHeld) {
  auto heap = make_heap(host_config(32 * kMiB));
  auto a = *heap->allocate(30 * kMiB);
  (void)a;
  auto r = heap->allocate(4 * kMiB);
  ASSERT_EQ(r.code(), Errc::out_of_memory);
  const std::string& m = r.error().message;
  EXPECT_NE(m.find("4194304 bytes"), std::string::npos) << m;
  EXPECT_NE(m.find("live"), std::string::npos) << m;
  EXPECT_NE(m.find("held"), std::string::npos) << m;
  // What holds the pages: here the one 15-page object, nothing on its way back.
  EXPECT_NE(m.find("pages: large 15, slab 0 of their own"), std::string::npos) << m;
  EXPECT_NE(m.find("releasing 0, moving 0"), std::string::npos) << m;
  EXPECT_EQ(heap->stats().ops.failed_allocations, 1u);
  EXPECT_VALID(*heap);
}

TEST(Heap, ReserveIsTrimmedBackToTheBackend) {
  auto heap = make_heap(uncached());  // every free reaches the reserve
  std::vector<Handle> hs;
  for (int i = 0; i < 40; ++i) hs.push_back(*heap->allocate(2 * kMiB));
  EXPECT_GE(heap->stats().mapped_bytes, 80 * kMiB);
  for (auto h : hs) ASSERT_TRUE(heap->free(h).ok());
  auto s = heap->stats();
  EXPECT_LE(s.mapped_bytes, heap->config().reserve_high_pages * kPage);
  EXPECT_LE(s.pages.reserve, heap->config().reserve_high_pages);
  auto& host = static_cast<BackendModel<HostBackend>&>(heap->backend()).impl();
  EXPECT_EQ(host.pages_in_use() * kPage, s.mapped_bytes);
  EXPECT_VALID(*heap);
}

TEST(Heap, BackgroundKeeperRefillsTheReserve) {
  auto cfg = host_config();
  cfg.background_reserve = true;
  cfg.reserve_low_pages = 6;
  cfg.reserve_high_pages = 12;
  auto heap = make_heap(cfg);
  for (int i = 0; i < 10; ++i) (void)*heap->allocate(2 * kMiB);
  for (int i = 0; i < 200 && heap->stats().pages.reserve < 6; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_GE(heap->stats().pages.reserve, 6u);
  EXPECT_VALID(*heap);
}

TEST(Heap, RandomOperationsKeepEveryInvariantAndEveryByte) {
  auto heap = make_heap(host_config(512 * kMiB));
  std::mt19937_64 rng(12345);
  std::vector<std::pair<Handle, std::uint64_t>> live;
  std::uniform_real_distribution<double> u(0, 1);
  for (int op = 0; op < test::scaled_ops(4000); ++op) {
    const double r = u(rng);
    if (r < 0.5 || live.empty()) {
      const std::size_t bytes = u(rng) < 0.9 ? 1 + rng() % 65536 : 1 + rng() % (6 * kMiB);
      auto h = heap->allocate(bytes);
      if (!h.ok()) {
        ASSERT_EQ(h.code(), Errc::out_of_memory);
        continue;
      }
      const std::uint64_t seed = rng();
      fill(*heap, *h, seed);
      live.emplace_back(*h, seed);
    } else if (r < 0.85) {
      const std::size_t i = rng() % live.size();
      ASSERT_EQ(mismatches(*heap, live[i].first, live[i].second), 0u);
      ASSERT_TRUE(heap->free(live[i].first).ok());
      live[i] = live.back();
      live.pop_back();
    } else if (r < 0.95) {
      const std::size_t i = rng() % live.size();
      const std::size_t bytes = 1 + rng() % (u(rng) < 0.8 ? 100000 : 5 * kMiB);
      auto st = heap->resize(live[i].first, bytes);
      if (!st.ok()) {
        ASSERT_EQ(st.code(), Errc::out_of_memory);
        continue;
      }
      // Rewrite the pattern over the new size, as an owner would.
      live[i].second = rng();
      fill(*heap, live[i].first, live[i].second);
    } else {
      auto rec = heap->compact();
      ASSERT_TRUE(rec.ok()) << rec.error().to_string();
    }
    if (op % 250 == 0) {
      EXPECT_VALID(*heap);
      for (auto& [h, seed] : live) ASSERT_EQ(mismatches(*heap, h, seed), 0u);
    }
  }
  EXPECT_VALID(*heap);
  for (auto& [h, seed] : live) ASSERT_EQ(mismatches(*heap, h, seed), 0u);
}

TEST(Heap, ManyThreadsAllocateFreeResizeAndPin) {
  auto cfg = host_config(1024 * kMiB);
  cfg.background_reserve = true;
  auto heap = make_heap(cfg);
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      std::vector<std::pair<Handle, std::uint8_t>> mine;
      for (int op = 0; op < 3000; ++op) {
        const int r = int(rng() % 10);
        if (r < 5 || mine.empty()) {
          auto h = heap->allocate(1 + rng() % (rng() % 16 == 0 ? 3 * kMiB : 20000));
          if (!h.ok()) continue;
          auto p = heap->pin(*h);
          const std::uint8_t tag = std::uint8_t(rng());
          std::memset(p->as<void>(), tag, p->size());
          mine.emplace_back(*h, tag);
        } else if (r < 8) {
          auto [h, tag] = mine.back();
          {
            auto p = heap->pin(h);
            auto bytes = p->span<std::uint8_t>();
            if (std::any_of(bytes.begin(), bytes.end(), [&](std::uint8_t b) { return b != tag; })) ++errors;
          }
          if (!heap->free(h).ok()) ++errors;
          mine.pop_back();
        } else if (r < 9) {
          auto& [h, tag] = mine[rng() % mine.size()];
          if (!heap->resize(h, 1 + rng() % 30000).ok()) continue;
          auto p = heap->pin(h);
          std::memset(p->as<void>(), tag, p->size());
        } else {
          (void)heap->compact();
        }
      }
      for (auto [h, tag] : mine)
        if (!heap->free(h).ok()) ++errors;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().live_objects, 0u);
}

TEST(Heap, StatsJsonHasTheDocumentedKeys) {
  auto heap = make_heap();
  auto h = *heap->allocate(12345);
  (void)h;
  auto j = to_json(heap->stats());
  for (const char* key : {"live_bytes", "mapped_bytes", "reserved_bytes", "fragmentation", "largest_allocatable_bytes",
                          "pages", "occupancy_histogram", "ops", "driver_calls", "compaction"})
    EXPECT_TRUE(j.contains(key)) << key;
  for (const char* key : {"slab", "large", "reserve", "meshed"}) EXPECT_TRUE(j["pages"].contains(key)) << key;
  for (const char* key : {"allocate", "free", "resize", "pin"}) EXPECT_TRUE(j["ops"].contains(key)) << key;
  for (const char* key : {"cycles", "bytes_moved", "objects_moved", "pages_meshed", "pages_freed"})
    EXPECT_TRUE(j["compaction"].contains(key)) << key;
  EXPECT_EQ(j["live_bytes"].get<std::size_t>(), 12345u);
}

}  // namespace
}  // namespace valet::test
