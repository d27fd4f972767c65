// Shared tails on the host backend: slab pages built on the unused part of a large object's last
// page. Every test writes patterns, shares, frees, resizes, and reads the same bytes back (at the
// same raw addresses where the design promises them).
#include <algorithm>
#include <random>

#include "../support/test_scale.h"
#include "heap_test_util.h"
#include "valet/fault_injection.h"

namespace valet::test {
namespace {

constexpr std::size_t kSmall = 64 * 1024;  // a 64 KiB class: 32 slots a page

struct Obj {
  Handle h;
  std::uint64_t seed;
  DevicePtr address;
  std::size_t size;
};

Obj make(Heap& heap, std::size_t bytes) {
  auto h = heap.allocate(bytes);
  EXPECT_TRUE(h.ok()) << h.error().to_string();
  const std::uint64_t seed = seed_of(*h);
  fill(heap, *h, seed);
  return {*h, seed, heap.pin(*h)->address(), bytes};
}

std::uint64_t raw_mismatches(Heap& heap, const std::vector<Obj>& objs) {
  std::vector<PatternRange> r;
  for (const auto& o : objs) r.push_back({o.address, o.size, o.seed});
  auto bad = heap.backend().verify_pattern(r, Stream{});
  EXPECT_TRUE(bad.ok());
  return bad.ok() ? *bad : ~0ull;
}

const PageInfo* page_at(const std::vector<PageInfo>& map, std::uint64_t slot) {
  auto it = std::find_if(map.begin(), map.end(), [&](const PageInfo& p) { return p.slot == slot; });
  return it == map.end() ? nullptr : &*it;
}

// A large object using 512 KiB of its last page, then `n` small objects: the first slab page of
// their class is built on the large object's last page.
struct Shared {
  Obj large;
  std::vector<Obj> small;
};

Shared share(Heap& heap, std::size_t n) {
  Shared s;
  s.large = make(heap, 2 * kPage + 512 * 1024);
  for (std::size_t i = 0; i < n; ++i) s.small.push_back(make(heap, kSmall));
  return s;
}

TEST(SharedTails, ASlabPageIsBuiltOnALargeObjectsLastPage) {
  auto heap = make_heap();
  auto s = share(*heap, 20);
  const auto stats = heap->stats();
  EXPECT_EQ(stats.pages.shared_tails, 1u);
  EXPECT_VALID(*heap);
  // The large object's bytes and every small object's bytes, at their raw addresses.
  std::vector<Obj> all = s.small;
  all.push_back(s.large);
  EXPECT_EQ(raw_mismatches(*heap, all), 0u);
  // The slab page blocks the slots under the object's 512 KiB (8 of 32) and maps its last page.
  const auto map = heap->page_map();
  const PageInfo* slab = nullptr;
  for (const auto& p : map)
    if (p.kind == PageKind::slab && p.blocked_slots > 0) slab = &p;
  ASSERT_NE(slab, nullptr);
  EXPECT_EQ(slab->blocked_slots, 8u);
  EXPECT_EQ(slab->used_slots, 8u + 20u);
  EXPECT_EQ(slab->sharers, 2u);
  const PageInfo* tail = page_at(map, slab->maps_page_of);
  ASSERT_NE(tail, nullptr);
  EXPECT_EQ(tail->kind, PageKind::large);
  EXPECT_EQ(tail->sharers, 2u);
  EXPECT_EQ(tail->used_bytes, 512u * 1024);
}

TEST(SharedTails, SharingSavesThePhysicalPage) {
  Config off = host_config();
  off.share_tails = false;
  auto plain = make_heap(off);
  auto shared = make_heap();
  auto a = share(*plain, 20);
  auto b = share(*shared, 20);
  const auto sa = plain->stats(), sb = shared->stats();
  EXPECT_EQ(sa.pages.shared_tails, 0u);
  // Same objects, one physical page fewer (the reserve is refilled alike in both heaps).
  EXPECT_EQ((sa.mapped_bytes - sa.reserve_bytes) - (sb.mapped_bytes - sb.reserve_bytes), kPage);
  EXPECT_VALID(*plain);
  EXPECT_VALID(*shared);
}

TEST(SharedTails, FreeingTheLargeObjectLeavesTheSlabPageWhole) {
  auto heap = make_heap(uncached());  // the large object's free reaches its tail at once
  auto s = share(*heap, 20);
  ASSERT_TRUE(heap->free(s.large.h).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().pages.shared_tails, 0u);
  EXPECT_EQ(raw_mismatches(*heap, s.small), 0u);
  // The blocked slots are free again: the page takes 12 more objects, and nothing overlaps.
  for (int i = 0; i < 12; ++i) s.small.push_back(make(*heap, kSmall));
  const auto map = heap->page_map();
  std::size_t full_pages = 0;
  for (const auto& p : map)
    if (p.kind == PageKind::slab && p.used_slots == p.total_slots) ++full_pages;
  EXPECT_EQ(full_pages, 1u);
  EXPECT_EQ(raw_mismatches(*heap, s.small), 0u);
  EXPECT_VALID(*heap);
}

TEST(SharedTails, AnEmptiedSlabPageLeavesTheTailAndTheTailIsReused) {
  auto heap = make_heap();
  auto s = share(*heap, 4);
  // A second page of another class first, so the emptied tail page is not the class's last page.
  auto other = make(*heap, 8 * 1024);
  for (const auto& o : s.small) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_VALID(*heap);
  // The only page of the class stays (against allocate/free ping-pong) ...
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u);
  // ... until another page of the class exists.
  std::vector<Obj> more;
  for (int i = 0; i < 40; ++i) more.push_back(make(*heap, kSmall));
  for (const auto& o : more) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, {s.large, other}), 0u);
  ASSERT_TRUE(heap->free(other.h).ok());
  ASSERT_TRUE(heap->free(s.large.h).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().live_bytes, 0u);
}

TEST(SharedTails, TheTailOpensAgainWhenItsSlabPageRetires) {
  auto heap = make_heap(uncached());
  auto large = make(*heap, 3 * kPage + 256 * 1024);
  // Two pages of the 64 KiB class; the first is on the tail. Emptying it retires it (another
  // page of the class remains) and the next new slab page, of any class, takes the tail again.
  std::vector<Obj> first, second;
  for (int i = 0; i < 28; ++i) first.push_back(make(*heap, kSmall));  // 4 blocked + 28 = full
  for (int i = 0; i < 3; ++i) second.push_back(make(*heap, kSmall));
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u);
  for (const auto& o : first) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_EQ(heap->stats().pages.shared_tails, 0u);
  EXPECT_VALID(*heap);
  auto fresh = make(*heap, 32 * 1024);
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u);
  second.push_back(fresh);
  second.push_back(large);
  EXPECT_EQ(raw_mismatches(*heap, second), 0u);
  EXPECT_VALID(*heap);
}

TEST(SharedTails, GrowingAnObjectUnsharesItsTailFirst) {
  auto heap = make_heap();
  auto s = share(*heap, 20);
  const auto before = heap->stats();
  ASSERT_TRUE(heap->resize(s.large.h, 4 * kPage + 100).ok());
  EXPECT_VALID(*heap);
  // The slab page moved to a page of its own: small objects keep their addresses and bytes.
  EXPECT_EQ(raw_mismatches(*heap, s.small), 0u);
  for (const auto& o : s.small) EXPECT_EQ(heap->pin(o.h)->address(), o.address);
  // The large object kept its first bytes.
  EXPECT_EQ(mismatches(*heap, s.large.h, s.large.seed, s.large.size), 0u);
  const auto after = heap->stats();
  EXPECT_EQ(after.pages.shared_tails, 0u);
  EXPECT_EQ(after.ops.resize, before.ops.resize + 1);
  // Shrinking back: the object's last page is open to sharing again.
  ASSERT_TRUE(heap->resize(s.large.h, 2 * kPage + 300 * 1024).ok());
  auto next = make(*heap, 16 * 1024);
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u);
  EXPECT_EQ(mismatches(*heap, s.large.h, s.large.seed, 2 * kPage + 300 * 1024), 0u);
  EXPECT_EQ(raw_mismatches(*heap, {next}), 0u);
  EXPECT_VALID(*heap);
}

TEST(SharedTails, GrowingWhileASharerIsPinnedCopiesTheObjectInstead) {
  auto heap = make_heap();
  auto s = share(*heap, 20);
  auto held = heap->pin(s.small[3].h);
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(heap->resize(s.large.h, 3 * kPage).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(mismatches(*heap, s.large.h, s.large.seed, s.large.size), 0u);
  EXPECT_EQ(raw_mismatches(*heap, s.small), 0u);
  EXPECT_EQ(heap->stats().pages.shared_tails, 0u) << "the old last page stays with the slab page";
  held->reset();
  EXPECT_VALID(*heap);
}

TEST(SharedTails, ALargeObjectResizedToASlabObjectLetsGoOfItsTail) {
  auto heap = make_heap();
  auto s = share(*heap, 10);
  ASSERT_TRUE(heap->resize(s.large.h, 100 * 1024).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().pages.shared_tails, 0u);
  EXPECT_EQ(mismatches(*heap, s.large.h, s.large.seed, 100 * 1024), 0u);
  EXPECT_EQ(raw_mismatches(*heap, s.small), 0u);
}

TEST(SharedTails, CompactionKeepsTailPagesAndBytes) {
  auto heap = make_heap();
  std::vector<Obj> larges, small;
  for (int i = 0; i < 6; ++i) larges.push_back(make(*heap, kPage + std::size_t(i + 1) * 128 * 1024));
  for (int i = 0; i < 200; ++i) small.push_back(make(*heap, 48 * 1024));
  EXPECT_GT(heap->stats().pages.shared_tails, 0u);
  // Free most small objects so that pages are sparse, then compact (evacuation and meshing).
  std::vector<Obj> kept;
  for (std::size_t i = 0; i < small.size(); ++i) {
    if (i % 7 == 0)
      kept.push_back(small[i]);
    else
      ASSERT_TRUE(heap->free(small[i].h).ok());
  }
  for (int round = 0; round < 3; ++round) {
    auto rec = heap->compact();
    ASSERT_TRUE(rec.ok()) << rec.error().to_string();
    EXPECT_VALID(*heap);
  }
  for (const auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  for (const auto& o : larges) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  for (const auto& o : larges) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_VALID(*heap);
  for (const auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
}

// Two pages of 64 KiB objects: the first (ascending) is emptied and retired, the second (filled
// from slot 31 down) keeps its first 10 objects (slots 31..22) and, if `keep_low`, its last one
// (slot 0). Returns the kept objects with their addresses; the low one last.
std::vector<Obj> descending_page(Heap& heap, bool keep_low) {
  std::vector<Obj> kept;
  std::vector<Handle> all;
  for (int i = 0; i < 64; ++i) all.push_back(*heap.allocate(kSmall));
  for (int i = 0; i < 64; ++i) {
    const Handle h = all[std::size_t(i)];
    if ((i >= 32 && i < 42) || (keep_low && i == 63)) {
      fill(heap, h, seed_of(h));
      kept.push_back({h, seed_of(h), heap.pin(h)->address(), kSmall});
    } else {
      EXPECT_TRUE(heap.free(h).ok());
    }
  }
  return kept;
}

// A new large object's last page goes on a slab page whose low slots are free for the bytes the
// object uses there: no page of its own, no copy, every address unchanged.
TEST(SharedTails, ALargeObjectsLastPageGoesOnASlabPageWithRoom) {
  auto heap = make_heap(uncached());
  auto kept = descending_page(*heap, false);
  const auto before = heap->stats();
  auto large = make(*heap, 2 * kPage + 512 * 1024);
  const auto after = heap->stats();
  EXPECT_EQ(after.pages.shared_tails, 1u);
  // Two pages of its own, not three.
  EXPECT_EQ((after.mapped_bytes - after.reserve_bytes) - (before.mapped_bytes - before.reserve_bytes), 2 * kPage);
  EXPECT_VALID(*heap);
  kept.push_back(large);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
  kept.pop_back();
  ASSERT_TRUE(heap->free(large.h).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
}

// An empty page of a class whose slots do not fill 2 MiB (here 3 x 640 KiB) takes a tail only
// if a slot stays free above the object's bytes.
TEST(SharedTails, AnEmptyPageTakesATailOnlyWithASlotToSpare) {
  auto heap = make_heap(uncached());
  auto a = make(*heap, 600 * 1024);
  auto b = make(*heap, 600 * 1024);
  ASSERT_TRUE(heap->free(a.h).ok());
  ASSERT_TRUE(heap->free(b.h).ok());  // the class's last page stays, empty
  auto nearly_full = make(*heap, kPage + kPage - 300 * 1024);  // 1.7 MiB on its last page
  EXPECT_EQ(heap->stats().pages.shared_tails, 0u) << "no slot would be left on the empty page";
  auto fits = make(*heap, kPage + 1200 * 1024);  // 1.17 MiB: one slot left above it
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u);
  EXPECT_VALID(*heap);
  auto c = make(*heap, 600 * 1024);
  EXPECT_EQ(raw_mismatches(*heap, {nearly_full, fits, c}), 0u);
  for (const auto& o : {nearly_full, fits, c}) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_VALID(*heap);
}

// Compaction moves a slab page onto an open tail (meshing: its objects copied to the same
// offsets of the tail's physical page, its slot remapped there): addresses and bytes unchanged,
// one physical page given back.
TEST(SharedTails, MeshingMovesASlabPageOntoAnOpenTail) {
  auto heap = make_heap();
  auto kept = descending_page(*heap, true);  // slot 0 taken: no room for a tail yet
  auto large = make(*heap, 2 * kPage + 512 * 1024);
  EXPECT_EQ(heap->stats().pages.shared_tails, 0u);
  EXPECT_EQ(heap->open_tail_bytes(), std::vector<std::uint32_t>{512u * 1024});
  ASSERT_TRUE(heap->free(kept.back().h).ok());  // now slots 0..21 are free
  kept.pop_back();
  const auto before = heap->stats();
  auto rec = heap->compact(mesh_only());
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->pages_meshed, 1u);
  EXPECT_EQ(rec->objects_moved, 0u);
  EXPECT_VALID(*heap);
  const auto after = heap->stats();
  EXPECT_EQ(after.pages.shared_tails, 1u);
  EXPECT_EQ(after.pages.meshed, 1u);
  EXPECT_TRUE(heap->open_tail_bytes().empty());
  EXPECT_EQ((before.mapped_bytes - before.reserve_bytes) - (after.mapped_bytes - after.reserve_bytes), kPage);
  for (const auto& o : kept) EXPECT_EQ(heap->pin(o.h)->address(), o.address);
  kept.push_back(large);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
  kept.pop_back();
  // The large object goes first: the slab page keeps the physical page, objects in place.
  ASSERT_TRUE(heap->free(large.h).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
  for (const auto& o : kept) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_VALID(*heap);
}

// Evacuation empties a page into a new slab page on an open tail, however its objects are laid
// out: the objects move (handles repointed, bytes kept) and the page is given back.
TEST(SharedTails, EvacuationEmptiesAPageIntoAnOpenTail) {
  auto heap = make_heap();
  std::vector<Obj> kept;
  std::vector<Handle> all;
  for (int i = 0; i < 32; ++i) all.push_back(*heap->allocate(kSmall));  // page 0: slots 0..31
  for (int i = 0; i < 32; ++i) {
    if (i < 5) {
      fill(*heap, all[std::size_t(i)], seed_of(all[std::size_t(i)]));
      kept.push_back({all[std::size_t(i)], seed_of(all[std::size_t(i)]), 0, kSmall});
    } else {
      ASSERT_TRUE(heap->free(all[std::size_t(i)]).ok());
    }
  }
  auto large = make(*heap, kPage + 1024 * 1024);  // 1 MiB used on its last page: 16 slots free
  const auto before = heap->stats();
  auto rec = heap->compact(evacuate_only());
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->objects_moved, 5u);
  EXPECT_EQ(rec->pages_freed, 1u);
  EXPECT_VALID(*heap);
  const auto after = heap->stats();
  EXPECT_EQ(after.pages.shared_tails, 1u);
  EXPECT_EQ((before.mapped_bytes - before.reserve_bytes) - (after.mapped_bytes - after.reserve_bytes), kPage);
  for (const auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  EXPECT_EQ(mismatches(*heap, large.h, large.seed), 0u);
  ASSERT_TRUE(heap->free(large.h).ok());
  EXPECT_VALID(*heap);
  for (const auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
}

// Random allocations, frees and resizes of large and slab objects with compaction cycles in
// between: the heap is valid after every operation and every object keeps its bytes.
TEST(SharedTails, RandomOperationsKeepEveryByte) {
  auto heap = make_heap(host_config(512 * kMiB));
  std::mt19937_64 rng(11);
  std::vector<Obj> live;
  for (int op = 0; op < test::scaled_ops(3000); ++op) {
    const unsigned r = unsigned(rng() % 100);
    if (r < 40 || live.size() < 8) {
      const std::size_t bytes = rng() % 3 == 0 ? kPage / 2 + rng() % (6 * kPage) : 1 + rng() % (300 * 1024);
      auto h = heap->allocate(bytes);
      if (!h.ok()) continue;
      fill(*heap, *h, seed_of(*h) + std::uint64_t(op));
      live.push_back({*h, seed_of(*h) + std::uint64_t(op), 0, bytes});
    } else if (r < 70) {
      const std::size_t i = rng() % live.size();
      ASSERT_TRUE(heap->free(live[i].h).ok());
      live[i] = live.back();
      live.pop_back();
    } else if (r < 90) {
      auto& o = live[rng() % live.size()];
      const std::size_t bytes = rng() % 2 ? kPage / 2 + rng() % (6 * kPage) : 1 + rng() % (300 * 1024);
      auto st = heap->resize(o.h, bytes);
      if (st.ok()) {
        ASSERT_EQ(mismatches(*heap, o.h, o.seed, std::min(bytes, o.size)), 0u) << "op " << op;
        o.size = bytes;
        fill(*heap, o.h, o.seed);
      }
    } else {
      ASSERT_TRUE(heap->compact().ok());
    }
    auto v = heap->validate();
    ASSERT_TRUE(v.ok()) << "op " << op << ": " << v.error().to_string();
  }
  for (const auto& o : live) ASSERT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  EXPECT_GT(heap->stats().pages.shared_tails + heap->stats().compaction.pages_freed, 0u);
}

// Every map, unmap, set_access and copy of sharing, freeing and unsharing fails once in turn:
// the heap stays valid and no byte is lost.
TEST(SharedTails, DriverFailuresLoseNothing) {
  for (FaultOp op : {FaultOp::map, FaultOp::unmap, FaultOp::set_access, FaultOp::copy, FaultOp::create_page}) {
    for (std::uint64_t k = 1; k <= 4; ++k) {
      auto fh = make_faultable_heap();
      ASSERT_TRUE(fh.heap);
      auto* fi = fh.faults;
      Heap& heap = *fh.heap;
      fi->fail_nth(op, k);
      std::vector<Obj> objs;
      auto large = heap.allocate(2 * kPage + 512 * 1024);
      std::vector<Handle> smalls;
      for (int i = 0; i < 20; ++i) {
        auto h = heap.allocate(kSmall);
        if (h.ok()) smalls.push_back(*h);
      }
      fi->disarm_all();
      EXPECT_VALID(heap);
      // Patterns now (fills use copies of their own), then share-resize-free under a new fault.
      std::vector<Kept> kept;
      for (Handle h : smalls) {
        fill(heap, h, seed_of(h));
        kept.push_back({h, seed_of(h)});
      }
      if (large.ok()) {
        fill(heap, *large, seed_of(*large));
        fi->fail_nth(op, k);
        (void)heap.resize(*large, 3 * kPage + 4096);
        fi->disarm_all();
        EXPECT_VALID(heap);
        EXPECT_EQ(mismatches(heap, *large, seed_of(*large), 2 * kPage + 512 * 1024), 0u) << fault_op_name(op) << " #" << k;
      }
      for (const auto& o : kept) EXPECT_EQ(mismatches(heap, o.h, o.seed), 0u) << fault_op_name(op) << " #" << k;
      fi->fail_nth(op, k);
      if (large.ok()) (void)heap.free(*large);
      fi->disarm_all();
      EXPECT_VALID(heap);
      for (const auto& o : kept) EXPECT_EQ(mismatches(heap, o.h, o.seed), 0u) << fault_op_name(op) << " #" << k;
      for (const auto& o : kept) ASSERT_TRUE(heap.free(o.h).ok());
      EXPECT_VALID(heap);
      ASSERT_TRUE(heap.shutdown().ok());
    }
  }
}

// With the keeper's thread, a compaction cycle that builds a slab page on a tail maps its alias
// before it plans, without the heap lock: no map, access grant or copy is made under the lock,
// and the slab page's objects end on the tail, their bytes intact.
Config keeper_config() {
  Config c = uncached();
  c.background_reserve = true;
  return c;
}

struct TailCase {
  std::vector<Obj> smalls;  // on a slab page of their own, made before the tail existed
  Handle large;
};

TailCase make_tail_case(Heap& heap) {
  TailCase t;
  for (int i = 0; i < 5; ++i) t.smalls.push_back(make(heap, kSmall));
  auto large = heap.allocate(2 * kPage + 512 * 1024);  // 1.5 MiB free on its last page
  EXPECT_TRUE(large.ok());
  t.large = *large;
  fill(heap, t.large, seed_of(t.large));
  EXPECT_EQ(heap.open_tail_bytes(), std::vector<std::uint32_t>{512u * 1024});
  EXPECT_EQ(heap.stats().pages.shared_tails, 0u);
  return t;
}

TEST(PreparedTailAliases, ACompactionCycleMapsItsTailAliasWithoutTheHeapLock) {
  auto heap = make_heap(keeper_config());
  ASSERT_TRUE(heap);
  TailCase t = make_tail_case(*heap);
  const DriverCallCounts locked_before = heap->driver_calls().under_lock();
  const std::uint64_t maps_before = heap->stats().driver_calls.map;
  auto rec = heap->compact(CompactRequest{});
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  const DriverCallCounts locked_after = heap->driver_calls().under_lock();
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u) << "the cycle built no slab page on the tail";
  EXPECT_GT(heap->stats().driver_calls.map, maps_before) << "no alias was mapped";
  for (DriverOp op : {DriverOp::map, DriverOp::set_access, DriverOp::copy, DriverOp::record_event})
    EXPECT_EQ(locked_after[op], locked_before[op]) << driver_op_name(op) << " calls made under the heap lock";
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, t.smalls), 0u) << "objects moved: their raw addresses changed or lost bytes";
  for (const auto& o : t.smalls) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  EXPECT_EQ(mismatches(*heap, t.large, seed_of(t.large)), 0u);
  ASSERT_TRUE(heap->free(t.large).ok());
  for (const auto& o : t.smalls) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  for (const auto& o : t.smalls) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_VALID(*heap);
}

// A prepared alias whose map or access grant fails: the cycle builds nothing on that tail, the
// heap stays valid and no byte is lost; the next cycle shares the tail.
TEST(PreparedTailAliases, AFailedAliasLeavesTheTailOpenAndLosesNothing) {
  for (FaultOp op : {FaultOp::map, FaultOp::set_access}) {
    SCOPED_TRACE(fault_op_name(op));
    auto fh = make_faultable_heap(keeper_config());
    ASSERT_TRUE(fh.heap);
    Heap& heap = *fh.heap;
    TailCase t = make_tail_case(heap);
    fh.faults->fail_nth(op, 1);
    auto rec = heap.compact(CompactRequest{});
    fh.faults->disarm_all();
    ASSERT_TRUE(rec.ok()) << rec.error().to_string();
    EXPECT_EQ(heap.stats().pages.shared_tails, 0u) << "a slab page was built on a tail whose alias failed";
    EXPECT_VALID(heap);
    for (const auto& o : t.smalls) EXPECT_EQ(mismatches(heap, o.h, o.seed), 0u);
    ASSERT_TRUE(heap.compact(CompactRequest{}).ok());
    EXPECT_EQ(heap.stats().pages.shared_tails, 1u) << "the next cycle did not share the tail";
    EXPECT_VALID(heap);
    for (const auto& o : t.smalls) EXPECT_EQ(mismatches(heap, o.h, o.seed), 0u);
    EXPECT_EQ(mismatches(heap, t.large, seed_of(t.large)), 0u);
    ASSERT_TRUE(heap.free(t.large).ok());
    for (const auto& o : t.smalls) ASSERT_TRUE(heap.free(o.h).ok());
    EXPECT_VALID(heap);
  }
}

}  // namespace
}  // namespace valet::test
