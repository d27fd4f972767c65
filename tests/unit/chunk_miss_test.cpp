// Chunked misses (Config::chunk_miss_pages): a large run that no mapped run serves gets a new
// chunk for its body instead of reserve pages moved one by one, while created pages stay within
// the ceiling; above it, the reserve's pages as before. Driver calls counted at the backend door.
#include <gtest/gtest.h>

#include <vector>

#include "heap_test_util.h"
#include "page_pool.h"
#include "valet/counting_backend.h"

namespace valet::detail {
namespace {

// 64 pages over an arena of 256 slots, chunks from four new pages, misses chunked from a body of
// four pages. SetUp leaves the reserve in two runs of three pages, an object between them: six
// reserve pages, no run of more than three.
class ChunkMisses : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pool.init(256).ok());
    pool.set_chunk_min_pages(4);
    for (std::uint32_t i = 0; i < 3; ++i) {
      auto r = pool.take_run(3, i + 1);
      ASSERT_TRUE(r.ok());
      runs.push_back(*r);
    }
    ASSERT_EQ(runs[1], runs[0] + 3);
    ASSERT_EQ(runs[2], runs[1] + 3);
    pool.give_back(runs[0], 3);
    pool.give_back(runs[2], 3);
    ASSERT_EQ(pool.reserve_pages(), 6u);
    ASSERT_EQ(pool.longest_reserve_run(), 3u);
    pool.set_chunk_miss_pages(4);
  }
  void TearDown() override {
    pool.give_back(runs[1], 3);
    EXPECT_TRUE(pool.destroy().ok());
  }
  CountingBackend door{test::open_host_backend(64 * kPageBytes)};
  PagePool pool{door, 64};
  std::vector<std::uint32_t> runs;
};

TEST_F(ChunkMisses, ALayoutMissGetsANewChunkForItsBodyAndLeavesTheReserveAsItWas) {
  ThreadDriverCalls scope(door);
  auto run = pool.take_run(6, 9);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  const DriverCallCounts made = scope.made();
  EXPECT_EQ(made[DriverOp::create_page], 2u) << "a chunk of five pages and the last page";
  EXPECT_EQ(made[DriverOp::map], 2u);
  EXPECT_EQ(made[DriverOp::set_access], 1u);
  EXPECT_EQ(made[DriverOp::unmap], 0u) << "no reserve page was moved";
  EXPECT_EQ(made.total(), 5u);
  EXPECT_EQ(pool.reserve_pages(), 6u);
  EXPECT_EQ(pool.chunks(), 1u);
  for (std::uint32_t s = *run; s < *run + 5; ++s) EXPECT_TRUE(pool.in_chunk(s));
  EXPECT_FALSE(pool.in_chunk(*run + 5)) << "the last slot stays a page of its own";
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(door, pool, *run, 6, 21));
  pool.give_back(*run, 6);
  ASSERT_VALID(pool);
}

TEST_F(ChunkMisses, AtTheCeilingTheMissTakesTheReservesPagesAsBefore) {
  pool.set_create_ceiling(pool.created_pages() + 5);  // one page short of a new run of six
  ThreadDriverCalls scope(door);
  auto run = pool.take_run(6, 9);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_EQ(pool.chunks(), 0u);
  EXPECT_GE(scope.made()[DriverOp::unmap], 1u) << "reserve pages were moved into the run";
  EXPECT_LT(pool.reserve_pages(), 6u);
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(door, pool, *run, 6, 22));
  pool.give_back(*run, 6);
}

TEST_F(ChunkMisses, OffOrUnderTheThresholdTheMissTakesTheReservesPages) {
  pool.set_chunk_miss_pages(0);
  auto a = pool.take_run(6, 9);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(pool.chunks(), 0u) << "chunked misses are off";
  pool.give_back(*a, 6);
  pool.set_chunk_miss_pages(8);
  auto b = pool.take_run(7, 10);  // a body of six: under the threshold
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(pool.chunks(), 0u);
  pool.give_back(*b, 7);
  ASSERT_VALID(pool);
}

TEST_F(ChunkMisses, ASharedTailsBodyIsOneNewChunkAndItsLastSlotMapsTheSlabPage) {
  auto slab = pool.take_page(SlotKind::slab, 7);
  ASSERT_TRUE(slab.ok());
  const std::size_t reserve = pool.reserve_pages();
  ThreadDriverCalls scope(door);
  auto run = pool.take_run_onto(6, 9, *slab);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  const DriverCallCounts made = scope.made();
  EXPECT_EQ(made[DriverOp::create_page], 1u) << "one chunk for the five pages of the body";
  EXPECT_EQ(made[DriverOp::unmap], 0u);
  EXPECT_EQ(pool.reserve_pages(), reserve);
  for (std::uint32_t s = *run; s < *run + 5; ++s) EXPECT_TRUE(pool.in_chunk(s));
  EXPECT_EQ(pool.mappings_of(*run + 5), 2u) << "the last slot maps the slab page's page";
  ASSERT_VALID(pool);
  EXPECT_TRUE(test::pattern_holds(door, pool, *run, 5, 23));
  pool.give_back(*run, 5);
  ASSERT_TRUE(pool.drop_alias(*run + 5).ok());
  pool.give_back(*slab, 1);
  ASSERT_VALID(pool);
}

// Through the heap: the ceiling is reserve_peak_ratio x the recent live peak.
std::vector<Handle> scattered_reserve(Heap& heap) {
  std::vector<Handle> all, kept;
  for (int i = 0; i < 8; ++i) {
    auto h = heap.allocate(6 * test::kMiB);  // three whole pages: no room for a shared tail
    EXPECT_TRUE(h.ok());
    all.push_back(*h);
  }
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % 2 == 0) kept.push_back(all[i]);
    else EXPECT_TRUE(heap.free(all[i]).ok());
  }
  return kept;
}

TEST(HeapChunkMisses, AMissWithinThePeakBoundIsChunkedAndOneBeyondItIsNot) {
  for (const double ratio : {2.0, 1.04}) {
    Config cfg = test::uncached(test::host_config(256 * test::kMiB));
    cfg.chunk_min_pages = 0;  // chunks only from misses
    cfg.chunk_miss_pages = 4;
    cfg.reserve_high_pages = 64;  // the freed runs stay in the reserve
    cfg.reserve_peak_ratio = ratio;
    auto heap = test::make_heap(cfg);
    std::vector<Handle> kept = scattered_reserve(*heap);
    ASSERT_GE(heap->stats().pages.reserve, 12u);
    auto big = heap->allocate(12 * test::kMiB);  // six pages: no reserve run is that long
    ASSERT_TRUE(big.ok());
    test::fill(*heap, *big, 5);
    EXPECT_EQ(test::mismatches(*heap, *big, 5, 12 * test::kMiB), 0u);
    if (ratio > 1.5)
      EXPECT_EQ(heap->stats().pages.chunks_created, 1u) << "within the bound: a new chunk";
    else
      EXPECT_EQ(heap->stats().pages.chunks_created, 0u) << "beyond the bound: the reserve's pages";
    EXPECT_VALID(*heap);
    ASSERT_TRUE(heap->free(*big).ok());
    for (Handle h : kept) ASSERT_TRUE(heap->free(h).ok());
    EXPECT_VALID(*heap);
  }
}

TEST(HeapChunkMisses, TheKnobsBoundsAreChecked) {
  Config cfg = test::host_config();
  BackendOptions host;
  host.choice = BackendChoice::host;
  for (const std::size_t bad : {std::size_t{1}, (std::size_t{1} << 20) + 1}) {
    cfg.chunk_miss_pages = bad;
    auto heap = open_heap(host, cfg);
    ASSERT_FALSE(heap.ok()) << bad;
    EXPECT_EQ(heap.error().code, Errc::invalid_argument);
  }
  cfg.chunk_miss_pages = 2;
  EXPECT_TRUE(open_heap(host, cfg).ok());
}

}  // namespace
}  // namespace valet::detail
