// The evacuation planning rule (valet/evacuation_plan.h) on plain data, and the policy engine's
// prediction against the heap's own choice on a live host heap.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "heap_test_util.h"
#include "policy_engine.h"
#include "valet/evacuation_plan.h"

namespace valet::test {
namespace {

using planner::Budget;

constexpr std::uint32_t k64K = 65536;  // a class of 32 slots a page

ClassOccupancy cls(std::vector<std::uint32_t> used, std::uint64_t tail_free = 0, std::uint32_t size = k64K) {
  return ClassOccupancy{size, std::uint32_t(kPageBytes / size), std::move(used), tail_free};
}

TEST(SparsePlan, SparsestFirstWhileTheOthersHaveRoom) {
  // Free slots of the class: 2+12+28+26 = 68. The 4 goes (4 <= 68-28), then the 6 (10 <= 40-26),
  // not the 20 (30 > 14-12).
  Budget b;
  const auto c = planner::choose_sparse_pages(cls({30, 20, 4, 6}), 0.9, b);
  EXPECT_EQ(c.pages, (std::vector<std::uint32_t>{2, 3}));
  EXPECT_EQ(c.slots_moved, 10u);
  EXPECT_EQ(c.bytes_moved, 10u * k64K);
  EXPECT_EQ(b.pages, ~0ull - 2);
  EXPECT_EQ(b.bytes, ~0ull - 10u * k64K);
}

TEST(SparsePlan, TheLevelCutsOff) {
  Budget b;
  // 0.25 of 32 slots: 8. The 4 and the 8 qualify, the 9 does not.
  const auto c = planner::choose_sparse_pages(cls({9, 4, 8, 30, 30}), 0.25, b);
  EXPECT_EQ(c.pages, (std::vector<std::uint32_t>{1, 2}));
  // One page under the level among dense pages: not worth a cycle, even with room for it.
  Budget b2;
  EXPECT_TRUE(planner::choose_sparse_pages(cls({4, 20, 20, 20}), 0.25, b2).pages.empty());
  EXPECT_EQ(b2.pages, ~0ull) << "nothing chosen, nothing spent";
}

TEST(SparsePlan, DestinationRoomIncludesPagesOnTails) {
  // Four pages of 20: each move needs the 12 free slots of the others; the first fits, the second
  // does not (40 > 36-12).
  Budget b;
  EXPECT_EQ(planner::choose_sparse_pages(cls({20, 20, 20, 20}), 0.7, b).pages.size(), 1u);
  // 40 free slots on pages on tails (never candidates) take two pages' objects.
  Budget b2;
  EXPECT_EQ(planner::choose_sparse_pages(cls({20, 20, 20, 20}, 40), 0.7, b2).pages.size(), 2u);
  // Two half-full pages: one empties into the other; two pages of 17 do not fit one page.
  Budget b3;
  EXPECT_EQ(planner::choose_sparse_pages(cls({16, 16}), 0.5, b3).pages.size(), 1u);
  Budget b4;
  EXPECT_TRUE(planner::choose_sparse_pages(cls({17, 17}), 0.6, b4).pages.empty()) << "17 > 15 free slots";
}

TEST(SparsePlan, BudgetsEndTheClass) {
  Budget pages{2, ~0ull};
  EXPECT_EQ(planner::choose_sparse_pages(cls({4, 4, 4, 4, 4}), 0.5, pages).pages.size(), 2u);
  EXPECT_EQ(pages.pages, 0u);
  // A budget of 9 objects' bytes takes the 3 and the 4; the 5 is over what is left and ends the
  // class (the 6 is not tried).
  Budget bytes{~0ull, 9u * k64K + 1};
  const auto c = planner::choose_sparse_pages(cls({6, 5, 4, 3}), 0.5, bytes);
  EXPECT_EQ(c.pages, (std::vector<std::uint32_t>{3, 2}));
  EXPECT_EQ(bytes.bytes, 2u * k64K + 1);
  Budget none{0, ~0ull};
  EXPECT_TRUE(planner::choose_sparse_pages(cls({4, 4}), 0.5, none).pages.empty());
}

TEST(SparsePlan, EmptyPages) {
  // The rule takes an empty page like any other, at no byte cost.
  Budget b;
  const auto c = planner::choose_sparse_pages(cls({0, 4, 20}), 0.5, b);
  EXPECT_EQ(c.pages, (std::vector<std::uint32_t>{0, 1}));
  EXPECT_EQ(c.bytes_moved, 4u * k64K);
  // The prediction of a cycle: empty pages go back first, then the rule runs over the rest
  // (here one sparse page among dense ones: nothing more).
  const auto p = planner::predict_class(cls({0, 0, 4, 30}), 0.5);
  EXPECT_EQ(p.pages_freed, 2u);
  EXPECT_EQ(p.bytes_moved, 0u);
  const auto q = planner::predict_class(cls({0, 4, 4, 20}), 0.5);
  EXPECT_EQ(q.pages_freed, 3u);
  EXPECT_EQ(q.bytes_moved, 8u * k64K);
  EXPECT_EQ(planner::predict_class(ClassOccupancy{}, 0.5).pages_freed, 0u) << "a class with no slots";
}

TEST(TailPlan, FittingPagesGoToTheFullestTailsFirst) {
  // 64 KiB objects, 32 slots a page. Tails using 1 MiB (16 slots left) and 300 KiB (27 left):
  // the fuller tail (index 1) takes the cheapest page (12 objects), the other the page of 16; the
  // page of 30 fits neither.
  Budget b;
  const auto c = planner::choose_tail_pages({cls({30, 12, 16})}, {300u << 10, 1u << 20}, b);
  ASSERT_EQ(c.matches.size(), 2u);
  EXPECT_EQ(c.matches[0].tail, 1u);
  EXPECT_EQ(c.matches[0].page, 1u);
  EXPECT_EQ(c.matches[1].tail, 0u);
  EXPECT_EQ(c.matches[1].page, 2u);
  EXPECT_EQ(c.bytes_moved, 28u * k64K);
  EXPECT_EQ(b.pages, ~0ull - 2);
}

TEST(TailPlan, PagesThatDoNotFitAndTiesAcrossClasses) {
  Budget b;
  // A tail using 1.9 MiB leaves one 64 KiB slot: no page of 2 objects fits; a tail using all but
  // 200 KiB blocks every slot of the class.
  EXPECT_TRUE(planner::choose_tail_pages({cls({2, 3})}, {1945u << 10, (2048u - 40) << 10}, b).matches.empty());
  // Empty pages hold nothing to move.
  EXPECT_TRUE(planner::choose_tail_pages({cls({0, 0})}, {1u << 20}, b).matches.empty());
  EXPECT_TRUE(planner::choose_tail_pages({cls({4})}, {}, b).matches.empty());
  // The cheapest page over all classes; equal cost: the lower class, then the earlier page.
  const auto c = planner::choose_tail_pages({cls({4, 2, 2}), cls({1, 1}, 0, 2 * k64K)}, {1u << 20, 1u << 20}, b);
  ASSERT_EQ(c.matches.size(), 2u);
  EXPECT_EQ(c.matches[0].cls, 0u);
  EXPECT_EQ(c.matches[0].page, 1u);
  EXPECT_EQ(c.matches[1].cls, 0u);
  EXPECT_EQ(c.matches[1].page, 2u);
  // Equally full tails: the later one first.
  EXPECT_EQ(c.matches[0].tail, 1u);
}

TEST(TailPlan, BudgetsAndRefusedMatches) {
  Budget one{1, ~0ull};
  EXPECT_EQ(planner::choose_tail_pages({cls({4, 5})}, {1u << 20, 1u << 20}, one).matches.size(), 1u);
  // Over the byte budget: that tail is passed over, a cheaper page still fits the next.
  Budget bytes{~0ull, 3u * k64K};
  const auto c = planner::choose_tail_pages({cls({4}), cls({3}, 0, 32768)}, {1u << 20}, bytes);
  ASSERT_EQ(c.matches.size(), 1u);
  EXPECT_EQ(c.matches[0].cls, 1u) << "3 x 32 KiB fits the budget, 4 x 64 KiB does not";
  // A refused match (the heap could not build the slab page on the tail) keeps the page: the
  // next tail takes it.
  Budget b;
  int asked = 0;
  const auto r = planner::choose_tail_pages({cls({4, 9})}, {1u << 20, 512u << 10}, b, [&](const planner::TailMatch& m) {
    ++asked;
    return m.tail != 0;
  });
  EXPECT_EQ(asked, 2);
  ASSERT_EQ(r.matches.size(), 1u);
  EXPECT_EQ(r.matches[0].tail, 1u);
  EXPECT_EQ(r.matches[0].page, 0u);
  EXPECT_EQ(b.pages, ~0ull - 1);
}

// --- the policy's prediction against the heap's choice ---

CompactRequest evacuation_at(double level) {
  CompactRequest req;
  req.mesh = false;  // the planner predicts evacuation; meshing is its own search
  req.max_occupancy = level;
  return req;
}

// Pages of several classes filled, then freed at random (seeded): objects of exact class sizes,
// so the slot bytes the planner counts are the bytes the heap moves.
std::vector<Handle> fragmented(Heap& heap, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Handle> all, kept;
  for (std::size_t bytes : {std::size_t{4096}, std::size_t{16384}, std::size_t{65536}, std::size_t{262144}})
    for (std::size_t i = 0; i < 3 * kPageBytes / bytes + bytes / 4096; ++i) all.push_back(*heap.allocate(bytes));
  std::shuffle(all.begin(), all.end(), rng);
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (rng() % 100 < 60) {
      EXPECT_TRUE(heap.free(all[i]).ok());
    } else {
      kept.push_back(all[i]);
    }
  }
  return kept;
}

TEST(PlanMatchesHeap, PredictedLevelsAreWhatTheHeapEvacuates) {
  std::uint64_t pages_freed = 0;
  for (std::uint64_t seed : {1u, 2u, 3u})
    for (double level : {0.25, 0.5, 0.8}) {
      auto heap = make_heap(uncached());
      (void)fragmented(*heap, seed);
      ASSERT_TRUE(heap->open_tail_bytes().empty());
      const auto plan = policy::plan_levels(heap->occupancy(), {level});
      ASSERT_EQ(plan.size(), 1u);
      auto rec = heap->compact(evacuation_at(level));
      ASSERT_TRUE(rec.ok()) << rec.error().to_string();
      EXPECT_EQ(rec->pages_freed, plan[0].pages_freed) << "seed " << seed << " level " << level;
      EXPECT_EQ(rec->bytes_moved, plan[0].bytes_moved) << "seed " << seed << " level " << level;
      EXPECT_EQ(rec->objects_skipped, 0u);
      EXPECT_VALID(*heap);
      pages_freed += rec->pages_freed;
    }
  EXPECT_GT(pages_freed, 9u) << "the heaps were not sparse enough to test anything";
}

TEST(PlanMatchesHeap, FreeSlotsOnTailsTakeObjects) {
  auto heap = make_heap(uncached());
  // Two large objects using 512 KiB of their last pages: the first two slab pages of the 64 KiB
  // class are built there (8 slots blocked, 24 free each), then four pages of their own.
  std::vector<Handle> large = {*heap->allocate(2 * kPageBytes + (512u << 10)), *heap->allocate(2 * kPageBytes + (512u << 10))};
  std::vector<Handle> small;
  for (int i = 0; i < 48 + 4 * 32; ++i) small.push_back(*heap->allocate(k64K));
  ASSERT_TRUE(heap->open_tail_bytes().empty()) << "both tails carry a slab page";
  // Four objects stay on each tail page (20 free slots each), twenty on each page of its own.
  for (int i = 0; i < 48; ++i) {
    if (i % 24 >= 4) {
      ASSERT_TRUE(heap->free(small[i]).ok());
    }
  }
  for (int i = 48; i < 48 + 4 * 32; ++i) {
    if ((i - 48) % 32 >= 20) {
      ASSERT_TRUE(heap->free(small[i]).ok());
    }
  }
  const auto occupancy = heap->occupancy();
  const auto it = std::find_if(occupancy.begin(), occupancy.end(), [](const ClassOccupancy& o) { return o.class_size == k64K; });
  ASSERT_NE(it, occupancy.end());
  const auto& c = *it;
  EXPECT_EQ(c.used, (std::vector<std::uint32_t>{20, 20, 20, 20}));
  EXPECT_EQ(c.tail_free_slots, 40u);
  // The pages of their own alone have room for one page's objects; with the tails', two.
  EXPECT_EQ(planner::predict_class(ClassOccupancy{c.class_size, c.slots_per_page, c.used, 0}, 0.7).pages_freed, 1u);
  const auto plan = policy::plan_levels(occupancy, {0.7});
  EXPECT_EQ(plan[0].pages_freed, 2u);
  auto rec = heap->compact(evacuation_at(0.7));
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->pages_freed, plan[0].pages_freed);
  EXPECT_EQ(rec->bytes_moved, plan[0].bytes_moved);
  EXPECT_EQ(rec->bytes_moved, 40u * k64K);
  EXPECT_VALID(*heap);
}

TEST(PlanMatchesHeap, PredictedTailSourcesAreWhatTheHeapEmpties) {
  auto heap = make_heap();
  // Full slab pages first (no page has free low slots for a large object's last page), then
  // large objects whose last pages stay open, then the frees that leave the slab pages sparse.
  std::vector<Handle> small;
  for (std::size_t bytes : {std::size_t{16384}, std::size_t{65536}, std::size_t{131072}})
    for (std::size_t i = 0; i < 6 * kPageBytes / bytes; ++i) small.push_back(*heap->allocate(bytes));
  std::vector<Handle> large;
  for (std::size_t tail : {std::size_t{300} << 10, std::size_t{1} << 20, std::size_t{1536} << 10, std::size_t{700} << 10})
    large.push_back(*heap->allocate(2 * kPageBytes + tail));
  ASSERT_EQ(heap->open_tail_bytes().size(), 4u);
  std::mt19937_64 rng(7);
  for (std::size_t i = 0; i < small.size(); ++i) {
    if (i % 7 != 0 && rng() % 100 < 80) {
      ASSERT_TRUE(heap->free(small[i]).ok());
    }
  }
  const auto occupancy = heap->occupancy();
  for (const auto& c : occupancy)
    for (auto u : c.used) ASSERT_GT(u, 0u) << "every page keeps an object: no empty page to give back";
  const auto plan = policy::plan_tails(occupancy, heap->open_tail_bytes());
  EXPECT_GE(plan.pages_freed, 3u);
  auto rec = heap->compact(evacuation_at(1e-6));  // only the tails' sources
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->pages_freed, plan.pages_freed);
  EXPECT_EQ(rec->bytes_moved, plan.bytes_moved);
  EXPECT_VALID(*heap);
}

}  // namespace
}  // namespace valet::test
