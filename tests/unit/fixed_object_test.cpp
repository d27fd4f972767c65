// Fixed objects (Heap::allocate_fixed): compaction never moves them; meshing folds their pages
// only at a safe point, and then every byte stays at its raw address (written, compacted, read
// at the same addresses without pins, as raw-pointer users read them).
#include <set>

#include "heap_test_util.h"
#include "valet/fault_injection.h"

namespace valet::test {
namespace {

struct RawObject {
  Handle h;
  DevicePtr address;
  std::size_t size;
  std::uint64_t seed;
};

// `count` fixed objects of `bytes`, every `keep_every`-th kept with a pattern written at its raw
// address, the others freed: sparse pages whose neighbours fill from opposite ends (meshable).
std::vector<RawObject> sparse_fixed(Heap& heap, std::size_t count, std::size_t bytes, std::size_t keep_every,
                                    std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<FixedObject> all;
  for (std::size_t i = 0; i < count; ++i) {
    auto f = heap.allocate_fixed(bytes);
    EXPECT_TRUE(f.ok()) << f.error().to_string();
    if (f.ok()) all.push_back(*f);
  }
  std::vector<RawObject> kept;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % keep_every != 0) {
      EXPECT_TRUE(heap.free(all[i].handle).ok());
      continue;
    }
    const RawObject o{all[i].handle, all[i].address, all[i].size, rng()};
    PatternRange r{o.address, o.size, o.seed};
    EXPECT_TRUE(heap.backend().fill_pattern({&r, 1}, Stream{}).ok());
    kept.push_back(o);
  }
  EXPECT_TRUE(heap.backend().synchronize_stream(Stream{}).ok());
  return kept;
}

std::uint64_t raw_mismatches(Heap& heap, const std::vector<RawObject>& objs) {
  std::vector<PatternRange> r;
  for (const auto& o : objs) r.push_back({o.address, o.size, o.seed});
  auto bad = heap.backend().verify_pattern(r, Stream{});
  EXPECT_TRUE(bad.ok());
  return bad.ok() ? *bad : ~0ull;
}

CompactRequest at_safe_point() {
  CompactRequest r;
  r.safe_point = true;
  return r;
}

TEST(FixedObjects, CompactionNeverMovesThem) {
  auto heap = make_heap();
  auto kept = sparse_fixed(*heap, 32 * 8, 64 * 1024, 4, 1);
  const auto before = heap->stats();
  EXPECT_EQ(before.fixed_objects, kept.size());
  EXPECT_EQ(before.fixed_bytes, kept.size() * 64 * 1024);
  for (int i = 0; i < 3; ++i) {
    auto rec = heap->compact();
    ASSERT_TRUE(rec.ok()) << rec.error().to_string();
    EXPECT_EQ(rec->objects_moved, 0u);
    EXPECT_EQ(rec->pages_meshed, 0u) << "no safe point: the pages of fixed objects are not meshed";
  }
  EXPECT_EQ(heap->stats().pages.slab, before.pages.slab);
  for (const auto& o : kept) EXPECT_EQ(heap->pin(o.h)->address(), o.address);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
  EXPECT_VALID(*heap);
}

TEST(FixedObjects, MeshingAtASafePointKeepsEveryAddressAndByte) {
  auto heap = make_heap();
  auto kept = sparse_fixed(*heap, 32 * 16, 64 * 1024, 4, 2);
  const auto before = heap->stats();
  auto rec = heap->compact(at_safe_point());
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_GE(rec->pages_meshed, 6u);
  EXPECT_EQ(rec->objects_moved, 0u);
  const auto after = heap->stats();
  EXPECT_EQ(after.pages.slab, before.pages.slab - rec->pages_meshed);
  EXPECT_LT(after.mapped_bytes, before.mapped_bytes + 1);
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
  for (const auto& o : kept) EXPECT_EQ(heap->pin(o.h)->address(), o.address);
  // Allocations into the meshed pages never overwrite a sharer; frees unmap the aliases.
  std::vector<FixedObject> more;
  for (int i = 0; i < 200; ++i) more.push_back(*heap->allocate_fixed(64 * 1024));
  EXPECT_EQ(raw_mismatches(*heap, kept), 0u);
  for (const auto& f : more) ASSERT_TRUE(heap->free(f.handle).ok());
  for (const auto& o : kept) ASSERT_TRUE(heap->free(o.h).ok());
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().fixed_objects, 0u);
  EXPECT_EQ(heap->stats().pages.meshed, 0u);
}

TEST(FixedObjects, MovableObjectsBesideThemStillMove) {
  auto heap = make_heap();
  // Pages holding one fixed object each among movable ones: evacuation empties the pages that
  // hold only movable objects and leaves the others, whose free slots take the moved objects.
  std::vector<RawObject> fixed;
  std::vector<Kept> movable;
  std::vector<Handle> drop;
  std::mt19937_64 rng(3);
  for (int page = 0; page < 12; ++page)
    for (int i = 0; i < 32; ++i) {
      if (page % 3 == 0 && i == 0) {
        auto f = *heap->allocate_fixed(64 * 1024);
        RawObject o{f.handle, f.address, f.size, rng()};
        PatternRange r{o.address, o.size, o.seed};
        ASSERT_TRUE(heap->backend().fill_pattern({&r, 1}, Stream{}).ok());
        fixed.push_back(o);
      } else if (i % 8 == 1) {
        Handle h = *heap->allocate(64 * 1024);
        const std::uint64_t s = rng();
        fill(*heap, h, s);
        movable.push_back({h, s});
      } else {
        drop.push_back(*heap->allocate(64 * 1024));
      }
    }
  for (Handle h : drop) ASSERT_TRUE(heap->free(h).ok());
  ASSERT_TRUE(heap->backend().synchronize_stream(Stream{}).ok());
  CompactRequest evac;
  evac.mesh = false;
  auto rec = heap->compact(evac);
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_GT(rec->objects_moved, 0u);
  EXPECT_GT(rec->pages_freed, 0u);
  EXPECT_VALID(*heap);
  EXPECT_EQ(raw_mismatches(*heap, fixed), 0u);
  for (const auto& o : fixed) EXPECT_EQ(heap->pin(o.h)->address(), o.address);
  for (const auto& k : movable) EXPECT_EQ(mismatches(*heap, k.h, k.seed), 0u);
}

TEST(FixedObjects, ResizeIsRefusedAndPinsFreesAndErrorsWork) {
  auto heap = make_heap();
  for (std::size_t bytes : {std::size_t{512}, std::size_t{300} * 1024, std::size_t{5} * kMiB}) {
    auto f = heap->allocate_fixed(bytes);
    ASSERT_TRUE(f.ok()) << f.error().to_string();
    EXPECT_EQ(f->size, bytes);
    auto r = heap->resize(f->handle, bytes * 2);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.code(), Errc::pinned);
    EXPECT_EQ(*heap->size_of(f->handle), bytes);
    auto pin = heap->pin(f->handle);
    ASSERT_TRUE(pin.ok());
    EXPECT_EQ(pin->address(), f->address);
    EXPECT_EQ(heap->free(f->handle).code(), Errc::pinned);
    pin->reset();
    ASSERT_TRUE(heap->free(f->handle).ok());
    EXPECT_EQ(heap->free(f->handle).code(), Errc::stale_handle);
    EXPECT_VALID(*heap);
  }
  EXPECT_EQ(heap->allocate_fixed(0).code(), Errc::invalid_argument);
  EXPECT_EQ(heap->allocate_fixed(std::size_t{1} << 50).code(), Errc::invalid_argument);
  EXPECT_EQ(heap->allocate_fixed(std::size_t{1} << 40).code(), Errc::out_of_memory);
  EXPECT_EQ(heap->stats().fixed_objects, 0u);
  EXPECT_VALID(*heap);
}

TEST(FixedObjects, RequestsRoundedTo512BytesGet512ByteAlignedAddresses) {
  auto heap = make_heap(host_config(512 * kMiB));
  std::mt19937_64 rng(4);
  std::vector<Handle> live;
  for (int i = 0; i < 3000; ++i) {
    const std::size_t want = 1 + rng() % (4 * kMiB);
    const std::size_t rounded = (want + 511) / 512 * 512;
    auto f = heap->allocate_fixed(rounded);
    ASSERT_TRUE(f.ok()) << f.error().to_string();
    EXPECT_EQ(f->address % 512, 0u) << rounded;
    live.push_back(f->handle);
    if (live.size() > 40) {
      const std::size_t k = rng() % live.size();
      ASSERT_TRUE(heap->free(live[k]).ok());
      live.erase(live.begin() + std::ptrdiff_t(k));
    }
  }
  for (Handle h : live) ASSERT_TRUE(heap->free(h).ok());
  EXPECT_VALID(*heap);
}

TEST(FixedObjects, ARemapFailureAtASafePointKeepsEveryAddress) {
  for (FaultOp op : {FaultOp::unmap, FaultOp::map, FaultOp::set_access}) {
    for (std::uint64_t k = 1; k <= 4; ++k) {
      auto fh = make_faultable_heap();
      ASSERT_TRUE(fh.heap);
      auto kept = sparse_fixed(*fh.heap, 32 * 4, 64 * 1024, 4, 10 + k);
      fh.faults->fail_nth(op, k);
      (void)fh.heap->compact(at_safe_point());
      fh.faults->disarm_all();
      EXPECT_VALID(*fh.heap);
      for (const auto& o : kept) EXPECT_EQ(fh.heap->pin(o.h)->address(), o.address) << fault_op_name(op) << " #" << k;
      EXPECT_EQ(raw_mismatches(*fh.heap, kept), 0u) << fault_op_name(op) << " #" << k;
      for (const auto& o : kept) ASSERT_TRUE(fh.heap->free(o.h).ok());
      EXPECT_VALID(*fh.heap);
      ASSERT_TRUE(fh.heap->shutdown().ok());
    }
  }
}

}  // namespace
}  // namespace valet::test
