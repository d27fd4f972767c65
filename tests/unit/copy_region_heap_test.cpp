// The copying region inside a heap (Config::copy_region_min_bytes; heap/src/heap_region.cpp), on
// the host backend: placement, compaction's copies with every byte checked at the new address,
// pins and frees during a copy, resize, stream-ordered frees, trims, out-of-memory, and bad
// configs.
#include <atomic>
#include <thread>

#include "../support/test_scale.h"
#include "heap_test_util.h"
#include "valet/fault_injection.h"

namespace valet::test {
namespace {

constexpr std::size_t kChunk = 8 * kMiB;

Config region_config(std::size_t capacity = 256 * kMiB) {
  Config c = uncached(host_config(capacity));
  c.copy_region_min_bytes = kMiB + 1;
  c.copy_region_chunk_bytes = kChunk;
  c.copy_region_headroom_chunks = 1;
  c.copy_region_hysteresis_chunks = 1;
  return c;
}

std::vector<Kept> allocate_filled(Heap& heap, std::size_t count, std::size_t bytes) {
  std::vector<Kept> out;
  for (std::size_t i = 0; i < count; ++i) {
    auto h = heap.allocate(bytes);
    EXPECT_TRUE(h.ok()) << h.error().to_string();
    if (!h.ok()) break;
    fill(heap, *h, seed_of(*h));
    out.push_back({*h, seed_of(*h)});
  }
  return out;
}

TEST(CopyRegionHeap, IsOffByDefault) {
  auto heap = make_heap();
  ASSERT_TRUE(heap->allocate(3 * kMiB).ok());
  const auto s = heap->stats();
  EXPECT_EQ(s.copy_region.objects, 0u);
  EXPECT_EQ(s.copy_region.mapped_bytes, 0u);
  EXPECT_EQ(s.pages.region, 0u);
}

TEST(CopyRegionHeap, PlacesLargeMovableObjectsThereAndNothingElse) {
  auto heap = make_heap(region_config());
  auto kept = allocate_filled(*heap, 6, 3 * kMiB + 100);
  auto s = heap->stats();
  EXPECT_EQ(s.copy_region.objects, 6u);
  EXPECT_EQ(s.copy_region.placed, 6u);
  EXPECT_EQ(s.copy_region.top_bytes, 6 * (3 * kMiB + 512));  // 512-byte footprints, back to back
  // Without the keeper's thread, the allocations grew it, a chunk at a time.
  EXPECT_GE(s.copy_region.mapped_bytes, s.copy_region.top_bytes);
  EXPECT_LT(s.copy_region.mapped_bytes, s.copy_region.top_bytes + kChunk);
  EXPECT_EQ(s.copy_region.mapped_bytes % kChunk, 0u);
  EXPECT_EQ(s.pages.region * kPage, s.copy_region.mapped_bytes);
  EXPECT_EQ(s.pages.large, 0u);
  EXPECT_GE(s.mapped_bytes, s.copy_region.mapped_bytes);
  // Not there: a small object (a slab page's), one of exactly the slab limit, a fixed one.
  ASSERT_TRUE(heap->allocate(64 * 1024).ok());
  ASSERT_TRUE(heap->allocate(kMiB).ok());
  auto fixed = heap->allocate_fixed(3 * kMiB, Stream{});
  ASSERT_TRUE(fixed.ok());
  s = heap->stats();
  EXPECT_EQ(s.copy_region.objects, 6u);
  EXPECT_GT(s.pages.large, 0u);
  for (const auto& k : kept) EXPECT_EQ(mismatches(*heap, k.h, k.seed), 0u);
  EXPECT_VALID(*heap);
  // Every 512-byte aligned start, as PyTorch's allocator would give.
  for (const auto& k : kept) EXPECT_EQ(heap->pin(k.h)->address() % 512, 0u);
}

TEST(CopyRegionHeap, CompactionCopiesObjectsIntoHolesAndKeepsEveryByte) {
  auto heap = make_heap(region_config());
  auto all = allocate_filled(*heap, 24, 3 * kMiB);
  std::vector<Kept> kept;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % 3 == 0) {
      ASSERT_TRUE(heap->free(all[i].h).ok());
    } else {
      kept.push_back(all[i]);
    }
  }
  const auto before = heap->stats();
  EXPECT_EQ(before.copy_region.hole_bytes, 8 * 3 * kMiB);
  std::vector<DevicePtr> where;
  for (const auto& k : kept) where.push_back(heap->pin(k.h)->address());
  auto rec = heap->compact(evacuate_only());
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_GT(rec->objects_moved, 0u);
  const auto after = heap->stats();
  EXPECT_LE(double(after.copy_region.hole_bytes), 0.025 * double(after.copy_region.mapped_bytes) + 1);
  EXPECT_LT(after.copy_region.top_bytes, before.copy_region.top_bytes);
  EXPECT_EQ(after.copy_region.moves, rec->objects_moved);
  EXPECT_GT(after.driver_calls.copy, before.driver_calls.copy);
  std::size_t moved = 0;
  for (std::size_t i = 0; i < kept.size(); ++i) {
    EXPECT_EQ(mismatches(*heap, kept[i].h, kept[i].seed), 0u) << "object " << i;
    moved += heap->pin(kept[i].h)->address() != where[i];
  }
  EXPECT_EQ(moved, rec->objects_moved);
  EXPECT_VALID(*heap);
  // The keeper's trim (maintain() here: no keeper thread) gives back what the top fell by.
  ASSERT_TRUE(heap->maintain().ok());
  const auto trimmed = heap->stats();
  EXPECT_LT(trimmed.copy_region.mapped_bytes, before.copy_region.mapped_bytes);
  EXPECT_LE(trimmed.copy_region.mapped_bytes, trimmed.copy_region.top_bytes + 2 * kChunk);
  EXPECT_LT(trimmed.mapped_bytes, before.mapped_bytes);
  EXPECT_VALID(*heap);
  for (const auto& k : kept) ASSERT_TRUE(heap->free(k.h).ok());
  EXPECT_EQ(heap->stats().copy_region.objects, 0u);
  EXPECT_VALID(*heap);
}

TEST(CopyRegionHeap, APinnedObjectStaysWhereItIs) {
  auto heap = make_heap(region_config());
  auto all = allocate_filled(*heap, 6, 3 * kMiB);
  ASSERT_TRUE(heap->free(all[0].h).ok());
  auto pin = heap->pin(all[5].h);  // the highest: the one a round would move first
  ASSERT_TRUE(pin.ok());
  const DevicePtr at = pin->address();
  auto rec = heap->compact(evacuate_only());
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(pin->address(), at);
  EXPECT_EQ(heap->pin(all[5].h)->address(), at);
  EXPECT_VALID(*heap);
  for (std::size_t i = 1; i < all.size(); ++i) EXPECT_EQ(mismatches(*heap, all[i].h, all[i].seed), 0u);
}

// A pin during a region copy gets the object where it is at once and cancels its move; the
// object may then even be freed before the cycle takes the lock back.
void pin_during_region_copy(bool free_after_pin) {
  auto fh = make_faultable_heap(region_config());
  ASSERT_TRUE(fh.heap);
  auto& host = fh.host();
  Heap& heap = *fh.heap;
  auto all = allocate_filled(heap, 4, 3 * kMiB);
  ASSERT_TRUE(heap.free(all[0].h).ok());
  const Handle top = all[3].h;
  const DevicePtr before = heap.pin(top)->address();
  const std::uint64_t copies = fh.faults->calls(FaultOp::copy);
  host.set_task_delay(std::chrono::seconds(1));
  std::atomic<bool> finished{false};
  Result<CompactionRecord> rec = make_error(Errc::internal, "not run");
  std::thread cycle([&] {
    rec = heap.compact(evacuate_only());
    finished = true;
  });
  while (fh.faults->calls(FaultOp::copy) == copies) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  {
    auto p = heap.pin(top);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->address(), before);
    EXPECT_FALSE(finished.load()) << "the pin waited for the copy";
  }
  if (free_after_pin) {
    ASSERT_TRUE(heap.free(top).ok());
  }
  cycle.join();
  host.set_task_delay(std::chrono::microseconds(0));
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->objects_moved, 0u);
  EXPECT_GE(rec->objects_skipped, 1u);
  EXPECT_EQ(heap.stats().copy_region.moves_cancelled, 1u);
  EXPECT_VALID(heap);
  for (std::size_t i = 1; i < 3; ++i) EXPECT_EQ(mismatches(heap, all[i].h, all[i].seed), 0u);
  if (!free_after_pin) {
    EXPECT_EQ(mismatches(heap, top, all[3].seed), 0u);
    auto again = heap.compact(evacuate_only());  // nothing pins it now
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->objects_moved, 1u);
    EXPECT_NE(heap.pin(top)->address(), before);
    EXPECT_EQ(mismatches(heap, top, all[3].seed), 0u);
  } else {
    EXPECT_EQ(heap.stats().copy_region.objects, 2u);
  }
  EXPECT_VALID(heap);
}

TEST(CopyRegionHeap, APinDuringACopyCancelsTheMoveWithoutWaiting) { pin_during_region_copy(false); }
TEST(CopyRegionHeap, AnObjectPinnedAndFreedDuringItsCopyLeavesTheRegionConsistent) { pin_during_region_copy(true); }

TEST(CopyRegionHeap, ResizeMovesAnObjectBetweenTheRegionAndTheSlabs) {
  auto heap = make_heap(region_config());
  auto h = *heap->allocate(3 * kMiB);
  fill(*heap, h, 11);
  ASSERT_TRUE(heap->resize(h, 5 * kMiB).ok());
  EXPECT_EQ(mismatches(*heap, h, 11, 3 * kMiB), 0u);
  EXPECT_EQ(heap->stats().copy_region.objects, 1u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->resize(h, 512 * 1024).ok());  // to a slab page
  EXPECT_EQ(mismatches(*heap, h, 11, 512 * 1024), 0u);
  EXPECT_EQ(heap->stats().copy_region.objects, 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->resize(h, 2 * kMiB).ok());  // back
  EXPECT_EQ(mismatches(*heap, h, 11, 512 * 1024), 0u);
  EXPECT_EQ(heap->stats().copy_region.objects, 1u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->free(h).ok());
  EXPECT_VALID(*heap);
}

TEST(CopyRegionHeap, AStreamOrderedFreeGoesBackOnceItsStreamPassed) {
  auto heap = make_heap(region_config());
  auto& host = host_of(*heap);
  Stream s = *host.create_stream();
  auto h = *heap->allocate(3 * kMiB, s);
  ASSERT_TRUE(heap->free(h, s).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().copy_region.objects, 1u) << "held until its stream passes the free";
  ASSERT_TRUE(host.synchronize_stream(s).ok());
  ASSERT_TRUE(heap->compact(evacuate_only()).ok());  // a cycle records an event after the cached frees
  ASSERT_TRUE(host.synchronize_stream(s).ok());
  ASSERT_TRUE(heap->maintain().ok());  // and what completed events cover goes back
  EXPECT_EQ(heap->stats().copy_region.objects, 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(host.destroy_stream(s).ok());
}

TEST(CopyRegionHeap, OutOfMemoryGivesBackTheRegionsHeadroomFirst) {
  auto heap = make_heap(region_config(64 * kMiB));
  // 7 of 3 MiB fill 21 MiB of the region; its headroom chunk above holds 8 MiB more.
  auto kept = allocate_filled(*heap, 7, 3 * kMiB);
  ASSERT_EQ(kept.size(), 7u);
  // Fill the rest of the capacity with page-window objects (fixed: never the region's).
  std::vector<Handle> fixed;
  for (;;) {
    auto f = heap->allocate_fixed(4 * kMiB, Stream{});
    if (!f.ok()) {
      EXPECT_EQ(f.error().code, Errc::out_of_memory);
      break;
    }
    fixed.push_back(f->handle);
  }
  EXPECT_VALID(*heap);
  const auto s = heap->stats();
  EXPECT_LE(s.copy_region.mapped_bytes, s.copy_region.top_bytes + kChunk) << "the headroom went back before out-of-memory";
  EXPECT_LE(s.mapped_bytes, 64 * kMiB);
  for (const auto& k : kept) EXPECT_EQ(mismatches(*heap, k.h, k.seed), 0u);
  // Freeing a region object leaves a hole the next one of its size takes.
  ASSERT_TRUE(heap->free(kept[2].h).ok());
  auto again = heap->allocate(3 * kMiB);
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_VALID(*heap);
}

TEST(CopyRegionHeap, RefusesABadConfig) {
  BackendOptions host;
  host.choice = BackendChoice::host;
  const auto refused = [&](Config c, const char* what) {
    auto h = open_heap(host, c);
    ASSERT_FALSE(h.ok()) << what;
    EXPECT_EQ(h.error().code, Errc::invalid_argument) << what;
    EXPECT_NE(h.error().message.find("copy_region"), std::string::npos) << h.error().message;
  };
  Config c = region_config();
  c.copy_region_min_bytes = kMiB;
  refused(c, "a slab-sized minimum");
  c = region_config();
  c.copy_region_chunk_bytes = 3 * kMiB;
  refused(c, "a chunk of no whole pages");
  c = region_config();
  c.copy_region_chunk_bytes = 512 * kMiB;
  refused(c, "a chunk over the capacity");
  c = region_config();
  c.copy_region_hole_low = 0.5;
  c.copy_region_hole_high = 0.1;
  refused(c, "low above high");
}

// With the keeper's thread the region grows ahead of allocations and trims behind frees, and
// allocations that find no room fall back to the page windows: many threads, one compacting.
TEST(CopyRegionHeap, ThreadsAllocateFreeAndPinWhileCompactionCopies) {
  // Under TSan this test took from 2 s to 4 minutes from one run to the next (session 51: the
  // workers waiting on their pattern fills; not explained), too uncertain for CI's time limit.
  // The sanitizer runs cover the same threads with the stress smoke of the copying region.
  if (test_scale() > 1) GTEST_SKIP() << "run in full by the plain build; the sanitizers run the region's stress smoke";
  Config c = region_config(512 * kMiB);
  c.background_reserve = true;
  c.background_misses = true;
  auto heap = make_heap(c);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 3; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(std::uint64_t(t) + 1);
      std::vector<Kept> mine;
      for (int i = 0; i < 400; ++i) {
        if (mine.size() < 12 && (mine.empty() || rng() % 3 != 0)) {
          auto h = heap->allocate(kMiB + 1 + rng() % (4 * kMiB));
          if (!h.ok()) continue;
          const std::uint64_t seed = rng();
          fill(*heap, *h, seed);
          mine.push_back({*h, seed});
        } else {
          const std::size_t k = rng() % mine.size();
          if (mismatches(*heap, mine[k].h, mine[k].seed) != 0) ++bad;
          if (!heap->free(mine[k].h).ok()) ++bad;
          mine.erase(mine.begin() + std::ptrdiff_t(k));
        }
      }
      for (const auto& k : mine) {
        if (mismatches(*heap, k.h, k.seed) != 0) ++bad;
        if (!heap->free(k.h).ok()) ++bad;
      }
    });
  }
  // Cycles bounded as the policy engine bounds them: an unbounded explicit cycle every
  // millisecond copies without pause, and under the sanitizers the workers' fills then queue
  // behind its copies for many minutes.
  std::thread compactor([&] {
    CompactRequest request = evacuate_only();
    request.max_bytes = 8 * kMiB;
    while (!stop) {
      if (!heap->compact(request).ok()) ++bad;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  for (auto& w : workers) w.join();
  stop = true;
  compactor.join();
  EXPECT_EQ(bad.load(), 0u);
  const auto s = heap->stats();
  EXPECT_GT(s.copy_region.placed, 0u);
  EXPECT_EQ(s.copy_region.objects, 0u);
  EXPECT_VALID(*heap);
}

}  // namespace
}  // namespace valet::test
