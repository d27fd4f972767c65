// Chunks (heap/src/page_pool_chunks.cpp): pages a large run must create come as one physical
// allocation; its slots serve large objects only, move only whole, and go back to the backend
// only when no object uses any of them. Driver calls counted at the backend door; bytes written,
// remapped and read back at the same addresses.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "faulty_pool.h"
#include "heap_test_util.h"
#include "page_pool.h"
#include "valet/counting_backend.h"

namespace valet::detail {
namespace {

// A pool of `pages` behind a fault injector and a counting door; chunks of four pages and more.
struct ChunkPool : test::FaultyPool {
  explicit ChunkPool(std::size_t pages) : FaultyPool(pages) { pool.set_chunk_min_pages(4); }
};

// 64 pages over an arena of 256 slots.
class Chunks : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(pool.init(256).ok()); }
  ChunkPool c{64};
  PagePool& pool = c.pool;
};

bool bytes_hold(Backend& b, const PagePool& pool, std::uint32_t slot, std::uint32_t n, std::uint64_t seed) {
  const PatternRange r{pool.address(slot), std::size_t(n) * kPageBytes, seed};
  auto differ = b.verify_pattern({&r, 1}, Stream{});
  return differ.ok() && *differ == 0;
}

void write(Backend& b, const PagePool& pool, std::uint32_t slot, std::uint32_t n, std::uint64_t seed) {
  const PatternRange r{pool.address(slot), std::size_t(n) * kPageBytes, seed};
  ASSERT_TRUE(b.fill_pattern({&r, 1}, Stream{}).ok());
  ASSERT_TRUE(b.synchronize_stream(Stream{}).ok());
}

// A run of ten pages at the arena's start (a chunk of nine and a page) whose chunk is given back
// while its last page stays in use: no window of more than nine pages can then hold the whole
// free chunk (none reaches before slot 0), so a longer run must create pages. Returns its start.
std::uint32_t free_chunk_behind_a_used_page(PagePool& pool) {
  auto a = pool.take_run(10, 1);
  EXPECT_TRUE(a.ok() && *a == 0) << "the run is not the arena's first (the tests' case is gone)";
  pool.give_back(*a, 9);
  EXPECT_TRUE(pool.free_chunk_waits());
  return *a;
}

TEST_F(Chunks, ARunWhosePagesMustBeCreatedGetsOneChunkForItsBodyAndAPageForItsLastSlot) {
  ThreadDriverCalls scope(c.door);
  auto run = pool.take_run(10, 1);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  const DriverCallCounts made = scope.made();
  EXPECT_EQ(made[DriverOp::create_page], 2u) << "one chunk of nine pages and one page";
  EXPECT_EQ(made[DriverOp::map], 2u);
  EXPECT_EQ(made[DriverOp::set_access], 1u);
  EXPECT_EQ(pool.chunks(), 1u);
  EXPECT_EQ(pool.chunk_pages(), 9u);
  EXPECT_EQ(pool.created_pages(), 10u);
  for (std::uint32_t s = *run; s < *run + 9; ++s) EXPECT_TRUE(pool.in_chunk(s));
  EXPECT_FALSE(pool.in_chunk(*run + 9)) << "the last slot stays a page of its own (a shared tail's)";
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *run, 10, 7));
  pool.give_back(*run, 10);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(Chunks, FewerNewPagesThanTheMinimumComeOneByOne) {
  auto run = pool.take_run(4, 1);  // a body of three new pages
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(pool.chunks(), 0u);
  pool.set_chunk_min_pages(0);
  auto off = pool.take_run(20, 2);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(pool.chunks(), 0u) << "chunks switched off";
  ASSERT_VALID(pool);
  pool.give_back(*run, 4);
  pool.give_back(*off, 20);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(Chunks, FreedChunkSlotsServeLargeRunsWithoutADriverCallButNeverASlabPage) {
  auto a = pool.take_run(20, 1);  // a chunk of 19 pages and a page
  ASSERT_TRUE(a.ok());
  pool.give_back(*a + 10, 10);  // shrunk to ten of the chunk's slots
  EXPECT_EQ(pool.chunk_reserve_pages(), 9u);
  EXPECT_EQ(pool.reserve_pages(), 1u) << "the chunk reserve is outside the reserve's count";
  EXPECT_FALSE(pool.free_chunk_waits()) << "the chunk is still in use";
  ASSERT_VALID(pool);
  auto slab = pool.take_page(SlotKind::slab, 3);
  ASSERT_TRUE(slab.ok());
  EXPECT_FALSE(pool.in_chunk(*slab)) << "a slab page (meshed and remapped alone) on a chunk's slot";
  ThreadDriverCalls scope(c.door);
  auto b = pool.take_run(8, 2);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(scope.made().total(), 0u) << "the chunk's free slots were mapped already";
  EXPECT_TRUE(pool.in_chunk(*b));
  EXPECT_EQ(pool.chunk_reserve_pages(), 1u);
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *b, 8, 9));
  pool.give_back(*b, 8);
  pool.give_back(*a, 10);
  // A whole free chunk serves only a run that holds it whole (an object on part of it would
  // strand the rest): not one of 18 pages; the next run that must create pages releases it first.
  ASSERT_TRUE(pool.free_chunk_waits());
  auto d = pool.take_run(18, 4);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(pool.in_chunk(*d) && *d >= *a && *d < *a + 19) << "a whole free chunk served a run";
  EXPECT_FALSE(pool.free_chunk_waits());
  pool.give_back(*d, 18);
  pool.give_back(*slab, 1);
  ASSERT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(Chunks, OnlyAWholeFreeChunkGoesBackAndWithOneUnmapAndOneRelease) {
  auto a = pool.take_run(10, 1);
  ASSERT_TRUE(a.ok());
  pool.give_back(*a + 4, 6);  // shrunk to four of the chunk's nine slots
  const std::uint32_t b = *a;
  auto loose = pool.take_run(3, 2);
  ASSERT_TRUE(loose.ok());
  EXPECT_FALSE(pool.in_chunk(*loose)) << "a loose fit took a chunk's free slots";
  pool.give_back(*loose, 3);
  auto batch = pool.begin_release(0, 64, true);
  pool.release_calls(batch);
  ASSERT_TRUE(pool.finish_release(batch).ok());
  EXPECT_EQ(pool.chunks(), 1u) << "a chunk an object still uses went back";
  EXPECT_EQ(pool.chunk_reserve_pages(), 5u);
  EXPECT_EQ(pool.created_pages(), 9u);
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(c.door, pool, b, 4, 11));
  pool.give_back(b, 4);
  ThreadDriverCalls scope(c.door);
  batch = pool.begin_release(0, 64, true);
  pool.release_calls(batch);
  ASSERT_TRUE(pool.finish_release(batch).ok());
  const DriverCallCounts made = scope.made();
  EXPECT_EQ(made[DriverOp::unmap], 1u);
  EXPECT_EQ(made[DriverOp::release_page], 1u);
  EXPECT_EQ(pool.chunks(), 0u);
  EXPECT_EQ(pool.created_pages(), 0u);
  EXPECT_EQ(pool.reserve_pages(), 0u);
  ASSERT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

// A free leaves its emptied chunk to the keeper (ReserveKeeper::trim_surplus); a miss that must
// create pages meanwhile releases it first, so that mapped memory never holds both.
TEST_F(Chunks, AMissThatMustCreatePagesReleasesTheFreeChunksFirst) {
  const std::uint32_t a = free_chunk_behind_a_used_page(pool);
  ASSERT_EQ(pool.peak_created_pages(), 10u);
  // Twenty pages: no window holds the free chunk; twenty new pages.
  ThreadDriverCalls scope(c.door);
  auto b = pool.take_run(20, 2);
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  const DriverCallCounts made = scope.made();
  EXPECT_GE(made[DriverOp::release_page], 1u);
  EXPECT_FALSE(pool.free_chunk_waits()) << "the miss created pages beside a free chunk";
  EXPECT_EQ(pool.chunk_reserve_pages(), 0u);
  EXPECT_EQ(pool.created_pages(), 21u);
  EXPECT_EQ(pool.peak_created_pages(), 21u) << "the free chunk and the new pages were counted together";
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *b, 20, 13));
  pool.give_back(*b, 20);
  pool.give_back(a + 9, 1);
  EXPECT_TRUE(pool.destroy().ok());
}

// A whole free chunk that a run can hold inside its body serves it where it lies: no page is
// created, moved or released for it (a KV cache reallocated a token longer, docs/speed.md,
// "Session 39").
TEST_F(Chunks, AWholeFreeChunkServesARunThatHoldsItWhereItLies) {
  auto a = pool.take_run(10, 1);  // a chunk of nine pages and a page
  ASSERT_TRUE(a.ok());
  write(c.door, pool, *a, 10, 23);
  pool.give_back(*a, 10);
  ASSERT_TRUE(pool.free_chunk_waits());
  {
    ThreadDriverCalls scope(c.door);
    auto same = pool.take_run(10, 2);
    ASSERT_TRUE(same.ok()) << same.error().to_string();
    EXPECT_EQ(*same, *a);
    EXPECT_EQ(scope.made().total(), 0u) << "the chunk and the reserve's last page were mapped already";
    EXPECT_TRUE(bytes_hold(c.door, pool, *same, 10, 23)) << "not the same pages at the same addresses";
    EXPECT_FALSE(pool.free_chunk_waits());
    ASSERT_VALID(pool);
    pool.give_back(*same, 10);
  }
  // Longer: the chunk and the page stay, only the two slots after them get new pages.
  ThreadDriverCalls scope(c.door);
  auto longer = pool.take_run(12, 3);
  ASSERT_TRUE(longer.ok()) << longer.error().to_string();
  EXPECT_EQ(*longer, *a);
  const DriverCallCounts made = scope.made();
  EXPECT_EQ(made[DriverOp::create_page], 2u);
  EXPECT_EQ(made[DriverOp::release_page], 0u);
  EXPECT_EQ(made[DriverOp::unmap], 0u);
  EXPECT_EQ(pool.chunks(), 1u);
  EXPECT_EQ(pool.created_pages(), 12u);
  EXPECT_TRUE(bytes_hold(c.door, pool, *longer, 10, 23));
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *longer, 12, 25));
  pool.give_back(*longer, 12);
  EXPECT_TRUE(pool.destroy().ok());
}

// A miss that creates pages releases only as many free chunks as hold its new pages (the one
// that fits best alone): the others stay for the runs that can take them where they lie.
TEST_F(Chunks, AMissReleasesOnlyTheFreeChunksItsNewPagesNeed) {
  const test::TwoFreeChunks f = test::two_free_chunks(pool);  // no run of four holds either
  ASSERT_EQ(pool.chunk_reserve_pages(), 14u);
  ThreadDriverCalls scope(c.door);
  auto b = pool.take_run(4, 3);  // four new pages (no chunk holds inside four)
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  EXPECT_EQ(scope.made()[DriverOp::release_page], 1u);
  EXPECT_EQ(pool.chunk_reserve_pages(), 9u) << "not the five-page chunk (the best fit) alone went back";
  EXPECT_TRUE(pool.free_chunk_waits());
  EXPECT_EQ(pool.created_pages(), 10u + 6u - 5u + 4u);
  EXPECT_EQ(pool.peak_created_pages(), 16u) << "the new pages were counted beside the chunk they replace";
  ASSERT_VALID(pool);
  pool.give_back(*b, 4);
  pool.give_back(f.five + 5, 1);
  pool.give_back(f.nine + 9, 1);
  EXPECT_TRUE(pool.destroy().ok());
}

// A slab page the reserve cannot give (a page created on the allocating thread) comes after a
// whole free chunk went back: mapped memory never holds both.
TEST_F(Chunks, ANewSlabPageIsCreatedOnlyAfterAFreeChunkWentBack) {
  const std::uint32_t a = free_chunk_behind_a_used_page(pool);
  ASSERT_EQ(pool.reserve_pages(), 0u);
  ASSERT_EQ(pool.peak_created_pages(), 10u);
  ThreadDriverCalls scope(c.door);
  auto slab = pool.take_page(SlotKind::slab, 2);
  ASSERT_TRUE(slab.ok()) << slab.error().to_string();
  EXPECT_EQ(scope.made()[DriverOp::release_page], 1u);
  EXPECT_FALSE(pool.free_chunk_waits());
  EXPECT_EQ(pool.created_pages(), 2u);
  EXPECT_EQ(pool.peak_created_pages(), 10u) << "the new page was created beside the free chunk";
  ASSERT_VALID(pool);
  pool.give_back(*slab, 1);
  pool.give_back(a + 9, 1);
  EXPECT_TRUE(pool.destroy().ok());
}

// A free chunk whose release fails there stays idle (counted, released later); the slab page gets
// its page all the same.
TEST_F(Chunks, ANewSlabPageWhoseFreeChunkFailsToGoBackIsMadeAllTheSame) {
  const std::uint32_t a = free_chunk_behind_a_used_page(pool);
  c.faults->fail_nth(DriverOp::release_page, 1);
  auto slab = pool.take_page(SlotKind::slab, 2);
  ASSERT_TRUE(slab.ok()) << slab.error().to_string();
  EXPECT_FALSE(pool.free_chunk_waits());
  EXPECT_EQ(pool.reserve_pages(), 9u) << "the unreleased chunk counts as idle reserve";
  EXPECT_EQ(pool.created_pages(), 11u);
  ASSERT_VALID(pool);
  ASSERT_TRUE(pool.release_free_chunks().ok());
  EXPECT_EQ(pool.created_pages(), 2u);
  pool.give_back(*slab, 1);
  pool.give_back(a + 9, 1);
  ASSERT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

// A run whose last slot must stay unmapped (a shared tail's) still finds the window that holds a
// free chunk and ends on an unmapped slot when the one starting left of it ends on a reserve page.
TEST_F(Chunks, ATailsWindowAroundAFreeChunkEndsOnAnUnmappedSlot) {
  auto guard = pool.take_run(1, 1);  // slot 0
  auto x = pool.take_run(2, 2);      // slots 1-2
  auto a = pool.take_run(10, 3);     // slots 3-12: a chunk of nine and a page
  auto y = pool.take_run(2, 4);      // slots 13-14
  ASSERT_TRUE(guard.ok() && x.ok() && a.ok() && y.ok());
  ASSERT_EQ(*a, 3u) << "the runs are not laid out as the test needs";
  ASSERT_EQ(*y, 13u);
  pool.give_back(*x, 2);
  pool.give_back(*y, 1);
  auto batch = pool.begin_release(0, 64, true);  // slots 1, 2 and 13 unmapped again
  pool.release_calls(batch);
  ASSERT_TRUE(pool.finish_release(batch).ok());
  pool.give_back(*a, 10);  // the chunk free, slot 12 a reserve page
  ASSERT_TRUE(pool.free_chunk_waits());
  // [1, 13) ends on the reserve page; [2, 14) ends on unmapped slot 13 and holds the chunk and
  // the reserve page.
  auto w = pool.best_window(12, /*last_unmapped=*/true);
  ASSERT_TRUE(w.has_value()) << "no window for the tail's run";
  EXPECT_EQ(w->start, 2u);
  EXPECT_EQ(w->mapped, 10u);
  ASSERT_VALID(pool);
  pool.give_back(*guard, 1);
  pool.give_back(*y + 1, 1);
  EXPECT_TRUE(pool.destroy().ok());
}

// A free chunk whose release fails in a miss's batch is kept idle (the reserve's, released
// later); the miss itself succeeds.
TEST_F(Chunks, AFreeChunkAMissFailsToReleaseIsKeptIdleAndTheMissSucceeds) {
  const std::uint32_t a = free_chunk_behind_a_used_page(pool);
  c.faults->fail_nth(DriverOp::release_page, 1);
  auto b = pool.take_run(20, 2);
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  EXPECT_FALSE(pool.free_chunk_waits());
  EXPECT_EQ(pool.reserve_pages(), 9u) << "the unreleased chunk counts as idle reserve";
  EXPECT_EQ(pool.created_pages(), 30u);
  EXPECT_EQ(pool.peak_created_pages(), 30u) << "the chunk held beside the new pages is not in the peak";
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *b, 20, 17));
  ASSERT_TRUE(pool.release_free_chunks().ok());
  EXPECT_EQ(pool.created_pages(), 21u);
  pool.give_back(*b, 20);
  pool.give_back(a + 9, 1);
  ASSERT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

// A miss given up before its calls (a pending object freed while queued) leaves the free chunk
// it took where it was, counted as before.
TEST_F(Chunks, AnAbandonedMissLeavesTheFreeChunkAsItWas) {
  const std::uint32_t a = free_chunk_behind_a_used_page(pool);
  auto batch = pool.begin_miss(20);
  ASSERT_TRUE(batch.ok()) << batch.error().to_string();
  EXPECT_FALSE(pool.free_chunk_waits()) << "the batch took no free chunk (the test's case is gone)";
  EXPECT_EQ(pool.created_pages(), 21u) << "the chunk's pages counted as released from the batch's start";
  ASSERT_VALID(pool);
  ThreadDriverCalls scope(c.door);
  pool.abandon_place(*batch);
  EXPECT_EQ(scope.made().total(), 0u);
  EXPECT_TRUE(pool.free_chunk_waits());
  EXPECT_EQ(pool.chunk_reserve_pages(), 9u);
  EXPECT_EQ(pool.created_pages(), 10u);
  ASSERT_VALID(pool);
  pool.give_back(a + 9, 1);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(Chunks, ARunHoldingWholeChunksRelocatesWithTheSameBytesAndOneSharingAChunkIsRefused) {
  auto a = pool.take_run(10, 1);
  ASSERT_TRUE(a.ok());
  write(c.door, pool, *a, 10, 21);
  ThreadDriverCalls scope(c.door);
  auto moved = pool.relocate_run(*a, 10, 12, 1);
  ASSERT_TRUE(moved.ok()) << moved.error().to_string();
  EXPECT_EQ(scope.made()[DriverOp::map], 4u) << "the chunk once, its last page, two new pages";
  EXPECT_EQ(scope.made()[DriverOp::copy], 0u);
  EXPECT_TRUE(bytes_hold(c.door, pool, *moved, 10, 21)) << "the bytes did not move with their pages";
  EXPECT_TRUE(pool.in_chunk(*moved));
  EXPECT_EQ(pool.slot(*a).kind, SlotKind::unmapped);
  ASSERT_VALID(pool);
  // Shrunk to 5 pages: the chunk's other slots are free, so the run cannot move without them.
  pool.give_back(*moved + 5, 7);
  ASSERT_VALID(pool);
  EXPECT_TRUE(pool.cuts_chunk(*moved, 5));
  auto refused = pool.relocate_run(*moved, 5, 8, 1);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::unsupported);
  EXPECT_TRUE(bytes_hold(c.door, pool, *moved, 5, 21));
  ASSERT_VALID(pool);
  pool.give_back(*moved, 5);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(Chunks, ARunGrowsInPlaceOverAChunksFreeSlots) {
  auto a = pool.take_run(10, 1);
  ASSERT_TRUE(a.ok());
  pool.give_back(*a + 3, 7);  // shrunk to three pages
  ThreadDriverCalls scope(c.door);
  auto grown = pool.extend_run(*a + 3, 5, 1);
  ASSERT_TRUE(grown.ok() && *grown);
  EXPECT_EQ(scope.made().total(), 0u);
  EXPECT_EQ(pool.chunk_reserve_pages(), 1u);
  ASSERT_VALID(pool);
  pool.give_back(*a, 8);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(Chunks, AChunkThatCannotBeHadFallsBackToPagesAndAFailedMapUnwindsIt) {
  c.faults->fail_nth(DriverOp::create_page, 1);
  auto a = pool.take_run(10, 1);
  ASSERT_TRUE(a.ok()) << a.error().to_string();
  EXPECT_EQ(pool.chunks(), 0u);
  EXPECT_EQ(pool.created_pages(), 10u);
  ASSERT_VALID(pool);
  // The chunk is mapped first; the last page's map fails: everything made is given back.
  c.faults->fail_nth(DriverOp::map, 2);
  auto b = pool.take_run(10, 2);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(pool.chunks(), 0u);
  EXPECT_LE(pool.created_pages(), 11u) << "only the page made for the last slot may stay, idle";
  ASSERT_VALID(pool);
  c.faults->fail_nth(DriverOp::set_access, 1);
  b = pool.take_run(10, 2);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(pool.chunks(), 0u);
  ASSERT_VALID(pool);
  b = pool.take_run(10, 2);
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  EXPECT_EQ(pool.chunks(), 1u);
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *b, 10, 5));
  pool.give_back(*a, 10);
  pool.give_back(*b, 10);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(Chunks, AChunkWhoseReleaseFailsIsKeptAndReleasedLater) {
  auto a = pool.take_run(10, 1);
  ASSERT_TRUE(a.ok());
  pool.give_back(*a, 10);
  c.faults->fail_nth(DriverOp::release_page, 1);
  auto batch = pool.begin_release(1, 64, false);  // the chunk (its nine pages fit the want)
  pool.release_calls(batch);
  EXPECT_FALSE(pool.finish_release(batch).ok());
  EXPECT_EQ(pool.chunks(), 1u);
  EXPECT_EQ(pool.reserve_pages(), 10u) << "the unreleased chunk counts as idle reserve";
  ASSERT_VALID(pool);
  ASSERT_TRUE(pool.release_free_chunks().ok());
  EXPECT_EQ(pool.chunks(), 0u);
  EXPECT_EQ(pool.created_pages(), 1u);
  ASSERT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

}  // namespace
}  // namespace valet::detail

namespace valet {
namespace {

using test::kMiB;

// Through the heap: a large object made of a chunk keeps its bytes through growth in place,
// relocation (the chunk whole) and growth by copy (when the chunk is shared with free slots),
// and a heap without chunks makes one create per page.
TEST(HeapChunks, AChunkedObjectKeepsItsBytesThroughEveryResize) {
  Config cfg = test::host_config(512 * kMiB);
  cfg.chunk_min_pages = 16;
  auto heap = test::make_heap(cfg);
  auto h = heap->allocate(64 * kMiB);
  ASSERT_TRUE(h.ok());
  HeapStats s = heap->stats();
  EXPECT_GE(s.pages.chunked, 16u);
  EXPECT_GE(s.pages.chunks, 1u);
  EXPECT_EQ(s.pages.chunks_created, s.pages.chunks) << "nothing was released yet";
  test::fill(*heap, *h, 41);
  auto blocker = heap->allocate(3 * kMiB);  // a neighbour: the next growth relocates or copies
  ASSERT_TRUE(blocker.ok());
  ASSERT_TRUE(heap->resize(*h, 100 * kMiB).ok());
  EXPECT_EQ(test::mismatches(*heap, *h, 41, 64 * kMiB), 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->resize(*h, 20 * kMiB).ok());  // shrunk: the chunk's rest is free
  EXPECT_VALID(*heap);
  EXPECT_GT(heap->stats().pages.chunk_reserve, 0u);
  ASSERT_TRUE(heap->resize(*h, 160 * kMiB).ok());
  EXPECT_EQ(test::mismatches(*heap, *h, 41, 20 * kMiB), 0u);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->free(*h).ok());
  ASSERT_TRUE(heap->free(*blocker).ok());
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->maintain().ok());
  EXPECT_VALID(*heap);
}

TEST(HeapChunks, AFreeGivesItsChunkBackAndItsPagesServeEveryShapeAgain) {
  Config cfg = test::host_config(128 * kMiB);  // 64 pages
  cfg.chunk_min_pages = 16;
  cfg.reserve_high_pages = 64;                  // the reserve's budget keeps everything
  auto heap = test::make_heap(cfg);
  auto a = heap->allocate(100 * kMiB);          // 50 pages, most in one chunk
  ASSERT_TRUE(a.ok());
  ASSERT_GE(heap->stats().pages.chunks, 1u);
  ASSERT_TRUE(heap->free(*a).ok());
  // The chunk went back in the free (it would serve only a run of a close size), whatever the
  // reserve's budget: its pages can be created again as slab pages.
  HeapStats s = heap->stats();
  EXPECT_EQ(s.pages.chunks, 0u);
  EXPECT_EQ(s.pages.chunk_reserve, 0u);
  EXPECT_LE(s.mapped_bytes, 8 * kMiB);
  std::vector<Handle> small;
  for (int i = 0; i < 200; ++i) {  // 100 MiB of slab pages
    auto x = heap->allocate(512 * 1024);
    ASSERT_TRUE(x.ok()) << i << ": " << x.error().to_string();
    small.push_back(*x);
  }
  EXPECT_VALID(*heap);
  for (Handle x : small) ASSERT_TRUE(heap->free(x).ok());
  EXPECT_VALID(*heap);
}

// An object that fills its last page has no tail to share: from an empty reserve its whole run
// is one chunk (one create, one map), with the mapper and without it; an object a byte longer
// keeps its last page apart (a shared tail's). Each keeps its bytes, and the heap its invariants,
// through a shrink that makes a chunk's page its last and a free that gives the chunk back.
TEST(HeapChunks, AnObjectThatFillsItsLastPageIsOneChunk) {
  for (const bool mapper : {false, true}) {
    SCOPED_TRACE(mapper ? "background misses" : "misses on the allocating thread");
    Config cfg = test::host_config(512 * kMiB);
    cfg.chunk_min_pages = 4;
    cfg.reserve_low_pages = 0;
    cfg.reserve_high_pages = 0;
    cfg.thread_cache_run_bytes = 0;
    cfg.background_misses = mapper;
    auto heap = test::make_heap(cfg);
    for (const std::size_t bytes : {8 * kMiB, 64 * kMiB, 64 * kMiB + 1}) {
      SCOPED_TRACE(bytes);
      const DriverCallCounts before = heap->driver_calls().totals();
      auto h = heap->allocate(bytes);
      ASSERT_TRUE(h.ok()) << h.error().to_string();
      test::fill(*heap, *h, 23);  // pins: a pending object is mapped once this returns
      const DriverCallCounts made = heap->driver_calls().totals().since(before);
      const bool whole = bytes % test::kPage == 0;
      EXPECT_EQ(made[DriverOp::create_page], whole ? 1u : 2u);
      EXPECT_EQ(made[DriverOp::map], whole ? 1u : 2u);
      EXPECT_EQ(heap->stats().pages.chunks, 1u);
      EXPECT_VALID(*heap);
      ASSERT_TRUE(heap->resize(*h, bytes / 2 + 100).ok());  // its last page a chunk's now
      EXPECT_EQ(test::mismatches(*heap, *h, 23, bytes / 2 + 100), 0u);
      EXPECT_VALID(*heap);
      ASSERT_TRUE(heap->free(*h).ok());
      ASSERT_TRUE(heap->maintain().ok());
      // With the mapper, the free leaves the chunk's release to it.
      for (int i = 0; i < 2000 && heap->stats().pages.chunks > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      EXPECT_EQ(heap->stats().pages.chunks, 0u) << "the chunk went back with its object";
      EXPECT_VALID(*heap);
    }
  }
}

TEST(HeapChunks, ChunksOffMeansOneCreatePerPage) {
  Config cfg = test::host_config(512 * kMiB);
  cfg.chunk_min_pages = 0;
  auto heap = test::make_heap(cfg);
  auto h = heap->allocate(64 * kMiB);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(heap->stats().pages.chunks, 0u);
  ASSERT_TRUE(heap->free(*h).ok());
  cfg.chunk_min_pages = 1;
  BackendOptions host;
  host.choice = BackendChoice::host;
  auto bad = open_heap(host, cfg);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, Errc::invalid_argument);
}

}  // namespace
}  // namespace valet
