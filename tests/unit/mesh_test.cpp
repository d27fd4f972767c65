// Meshing on the host backend: pages whose taken slots do not overlap share one physical page,
// and every object stays at its address with its bytes (the Mesh allocator's own test: write a
// pattern, mesh, read the same bytes at the same raw addresses).
#include <algorithm>
#include <random>
#include <set>
#include <thread>

#include "heap_test_util.h"
#include "valet/fault_injection.h"

namespace valet::test {
namespace {

struct Placed {
  Handle h;
  std::uint64_t seed;
  DevicePtr address;
  std::size_t size;
};

// `pages` pages of 64 KiB objects (32 a page), every `keep_every`-th kept: neighbouring pages
// fill from opposite ends, so their kept sets do not overlap and pairs are meshable. Each object
// with the raw address it has now.
std::vector<Placed> sparse_pages(Heap& heap, std::size_t pages, std::size_t keep_every, std::uint64_t seed) {
  std::vector<Placed> placed;
  for (const Kept& k : fragment(heap, pages * 32, 64 * 1024, keep_every, seed))
    placed.push_back({k.h, k.seed, heap.pin(k.h)->address(), 64 * 1024});
  return placed;
}

// Differing bytes read at the objects' raw addresses, without pins.
std::uint64_t raw_mismatches(Heap& heap, const std::vector<Placed>& objs) {
  std::vector<PatternRange> r;
  for (const auto& o : objs) r.push_back({o.address, o.size, o.seed});
  auto bad = heap.backend().verify_pattern(r, Stream{});
  EXPECT_TRUE(bad.ok());
  return bad.ok() ? *bad : ~0ull;
}

TEST(Mesh, RawAddressesReadTheSameBytesAfterMeshing) {
  auto heap = make_heap();
  auto kept = sparse_pages(*heap, 16, 4, 1);
  const auto before = heap->stats();
  auto rec = heap->compact(mesh_only());
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_GE(rec->pages_meshed, 6u);
  EXPECT_EQ(rec->objects_moved, 0u);
  EXPECT_GT(rec->bytes_meshed, 0u);
  const auto after = heap->stats();
  EXPECT_EQ(after.pages.meshed, rec->pages_meshed);
  EXPECT_EQ(after.pages.slab, before.pages.slab - rec->pages_meshed);
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
  for (const auto& o : kept) EXPECT_EQ(heap->pin(o.h)->address(), o.address) << "meshing changed an address";
  // The page map shows each alias and the slab page whose memory it shares.
  std::size_t meshed = 0;
  const auto map = heap->page_map();
  for (const auto& p : map) {
    if (p.kind != PageKind::meshed) continue;
    ++meshed;
    auto owner = std::find_if(map.begin(), map.end(), [&](const PageInfo& q) { return q.slot == p.maps_page_of; });
    ASSERT_NE(owner, map.end());
    EXPECT_EQ(owner->kind, PageKind::slab);
    EXPECT_EQ(owner->sharers, 2u);
    EXPECT_EQ(p.used_slots, owner->used_slots);
    EXPECT_EQ(p.through_this + owner->through_this, owner->used_slots);
  }
  EXPECT_EQ(meshed, rec->pages_meshed);
  // The emptied physical pages went back: with the reserve trimmed, fewer pages are held.
  ASSERT_TRUE(heap->maintain().ok());
  const auto trimmed = heap->stats();
  EXPECT_LE(trimmed.mapped_bytes, before.mapped_bytes - rec->pages_meshed * kPage + 8 * kPage);
}

TEST(Mesh, AllocationIntoAMeshedPageNeverOverwritesASharer) {
  auto heap = make_heap();
  auto kept = sparse_pages(*heap, 8, 4, 2);
  auto rec = heap->compact(mesh_only());
  ASSERT_TRUE(rec.ok());
  ASSERT_GT(rec->pages_meshed, 0u);
  // Fill every free slot of the class: new objects land in meshed pages' free slots.
  std::vector<Placed> fresh;
  std::mt19937_64 rng(3);
  for (int i = 0; i < 200; ++i) {
    auto h = heap->allocate(64 * 1024);
    ASSERT_TRUE(h.ok());
    const std::uint64_t s = rng();
    fill(*heap, *h, s);
    fresh.push_back({*h, s, heap->pin(*h)->address(), 64 * 1024});
  }
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
  EXPECT_EQ(raw_mismatches(*heap, fresh), 0u);
  // No two live objects share bytes: the addresses of one physical page differ per sharer, so
  // compare (page, offset) through contents instead: every object still reads its own pattern.
  std::set<DevicePtr> addresses;
  for (const auto& o : kept) addresses.insert(o.address);
  for (const auto& o : fresh) EXPECT_TRUE(addresses.insert(o.address).second);
}

TEST(Mesh, AnAliasIsUnmappedWhenItsLastObjectGoesAndTheLastMappingReleasesThePage) {
  auto heap = make_heap(uncached());
  auto kept = sparse_pages(*heap, 2, 4, 4);  // one ascending, one descending page
  auto rec = heap->compact(mesh_only());
  ASSERT_TRUE(rec.ok());
  ASSERT_EQ(rec->pages_meshed, 1u);
  EXPECT_EQ(heap->stats().pages.meshed, 1u);
  EXPECT_EQ(heap->stats().pages.slab, 1u);
  // Free objects one by one, checking the others after each free.
  for (std::size_t i = 0; i < kept.size(); ++i) {
    ASSERT_TRUE(heap->free(kept[i].h).ok());
    EXPECT_VALID(*heap);
    std::vector<Placed> rest(kept.begin() + std::ptrdiff_t(i) + 1, kept.end());
    EXPECT_EQ(raw_mismatches(*heap, rest), 0u);
  }
  const auto s = heap->stats();
  EXPECT_EQ(s.pages.meshed, 0u) << "an alias with no objects stayed mapped";
  EXPECT_EQ(s.live_objects, 0u);
  ASSERT_TRUE(heap->shutdown().ok());
}

TEST(Mesh, APinnedObjectKeepsItsPageOutOfMeshing) {
  auto heap = make_heap();
  auto kept = sparse_pages(*heap, 2, 4, 5);
  std::vector<Pin> pins;
  for (const auto& o : kept) pins.push_back(*heap->pin(o.h));  // every object of both pages
  auto rec = heap->compact(mesh_only());
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->pages_meshed, 0u);
  EXPECT_GT(rec->objects_skipped, 0u);
  pins.clear();
  rec = heap->compact(mesh_only());
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->pages_meshed, 1u);
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
}

TEST(Mesh, AMeshedPageIsEvacuatedLikeAnyOther) {
  auto heap = make_heap(uncached());
  auto kept = sparse_pages(*heap, 16, 8, 6);
  ASSERT_GT(heap->compact(mesh_only())->pages_meshed, 0u);
  CompactRequest evacuate;
  evacuate.mesh = false;
  evacuate.max_occupancy = 0.99;
  auto rec = heap->compact(evacuate);
  ASSERT_TRUE(rec.ok());
  EXPECT_GT(rec->objects_moved, 0u);
  EXPECT_VALID(*heap);
  for (const auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  for (const auto& o : kept) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_EQ(heap->stats().pages.meshed, 0u);
  EXPECT_VALID(*heap);
}

// A pin that arrives while meshing remaps its object's page (an unmap made to take a second)
// returns at once with the object's complete copy in the destination page, which stays valid.
TEST(Mesh, APinDuringTheRemapTakesTheAliasWithoutWaiting) {
  auto fh = make_faultable_heap();
  ASSERT_TRUE(fh.heap);
  auto* fi = fh.faults;
  Heap& heap = *fh.heap;
  auto kept = sparse_pages(heap, 2, 4, 5);  // one pair: 8 + 8 objects
  const std::uint64_t unmaps = fi->calls(FaultOp::unmap);
  fi->delay_calls(FaultOp::unmap, std::chrono::seconds(1));
  std::atomic<bool> finished{false};
  Result<CompactionRecord> rec = make_error(Errc::internal, "not run");
  std::thread cycle([&] {
    rec = heap.compact(mesh_only());
    finished = true;
  });
  // The remap's unmap has started (and sleeps): the source's objects are committed, aliased.
  while (fi->calls(FaultOp::unmap) == unmaps) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::size_t aliased = 0;
  for (const auto& o : kept) {
    auto p = heap.pin(o.h);
    ASSERT_TRUE(p.ok());
    if (p->address() != o.address) {
      ++aliased;
      // The alias holds the object's bytes, and stays valid after the remap.
      PatternRange r{p->address(), o.size, o.seed};
      auto bad = heap.backend().verify_pattern({&r, 1}, Stream{});
      ASSERT_TRUE(bad.ok());
      EXPECT_EQ(*bad, 0u);
    }
  }
  EXPECT_FALSE(finished.load()) << "a pin waited for the remap";
  EXPECT_EQ(aliased, 8u) << "the source page's objects are pinned at their aliases";
  cycle.join();
  fi->disarm_all();
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->pages_meshed, 1u);
  EXPECT_VALID(heap);
  EXPECT_EQ(raw_mismatches(heap, kept), 0u);
  for (const auto& o : kept) EXPECT_EQ(heap.pin(o.h)->address(), o.address);
}

// Every map, unmap and set_access of a meshing cycle fails once in turn: the cycle reports the
// error or succeeds, the heap stays valid, and no object's bytes change. An object whose page's
// remap failed is repointed to its copy in the destination page (where pins during the remap
// used it); every other object keeps its address.
TEST(Mesh, DriverFailuresMidRemapLoseNothing) {
  for (FaultOp op : {FaultOp::unmap, FaultOp::map, FaultOp::set_access, FaultOp::copy}) {
    for (std::uint64_t k = 1; k <= 6; ++k) {
      auto fh = make_faultable_heap();
      ASSERT_TRUE(fh.heap);
      auto* fi = fh.faults;
      auto* heap = &fh.heap;
      auto kept = sparse_pages(**heap, 4, 4, 7 + k);
      fi->fail_nth(op, k);
      auto rec = (*heap)->compact(mesh_only());
      fi->disarm_all();
      EXPECT_VALID(**heap);
      std::vector<Placed> now;
      for (const auto& o : kept) now.push_back({o.h, o.seed, (*heap)->pin(o.h)->address(), o.size});
      EXPECT_EQ(raw_mismatches(**heap, now), 0u) << fault_op_name(op) << " #" << k;
      std::size_t repointed = 0;
      for (std::size_t i = 0; i < kept.size(); ++i) repointed += now[i].address != kept[i].address;
      if (rec.ok()) {
        EXPECT_LE(rec->pages_meshed, 2u);
        EXPECT_EQ(repointed, 0u);
      } else {
        EXPECT_LE(repointed, 8u) << "only the failed pair's source objects move";
      }
      for (const auto& o : kept) ASSERT_TRUE((*heap)->free(o.h).ok());
      EXPECT_VALID(**heap);
      ASSERT_TRUE((*heap)->shutdown().ok());
    }
  }
}

}  // namespace
}  // namespace valet::test
