// The mesh pair search (heap/src/mesh_search.h) on plain bitmaps: no heap.
#include <gtest/gtest.h>

#include <set>

#include "mesh_search.h"

namespace valet::detail {
namespace {

constexpr std::uint32_t kSlots = 32;       // a 64 KiB class
constexpr std::uint64_t kSize = 65536;
constexpr std::size_t kSharers = 8;

// A page of the class with the given taken slots; the padding bits past the capacity read as
// taken, as in a slab page.
struct Page {
  std::vector<std::uint64_t> bitmap;
  MeshCandidate candidate;
};

Page page(std::initializer_list<std::uint32_t> taken, bool descending, std::uint32_t capacity = kSlots) {
  Page p;
  p.bitmap.assign((capacity + 63) / 64, 0);
  if (capacity % 64) p.bitmap.back() = ~0ull << (capacity % 64);
  for (auto i : taken) p.bitmap[i / 64] |= 1ull << (i % 64);
  p.candidate.used = std::uint32_t(taken.size());
  p.candidate.descending = descending;
  return p;
}

std::vector<MeshCandidate> view(const std::vector<Page>& pages) {
  std::vector<MeshCandidate> out;
  for (const auto& p : pages) {
    out.push_back(p.candidate);
    out.back().bitmap = p.bitmap;
  }
  return out;
}

std::vector<MeshMatch> search(const std::vector<Page>& pages, planner::Budget& budget, std::uint32_t seed = 1) {
  std::mt19937 rng(seed);
  const auto candidates = view(pages);
  return find_mesh_pairs(candidates, kSlots, kSize, kSharers, rng, budget);
}

TEST(MeshSearch, DisjointIgnoresPaddingBits) {
  const auto a = page({0, 1, 2}, false), b = page({3, 31}, true), c = page({2}, true);
  EXPECT_TRUE(bitmaps_disjoint(a.bitmap, b.bitmap, kSlots)) << "the padding bits above slot 31 are set in both";
  EXPECT_FALSE(bitmaps_disjoint(a.bitmap, c.bitmap, kSlots));
  // Several words: a collision in the first word, and in the last below the capacity.
  const auto d = page({5, 100}, false, 128), e = page({64, 127}, true, 128), f = page({5}, true, 128);
  EXPECT_TRUE(bitmaps_disjoint(d.bitmap, e.bitmap, 128));
  EXPECT_FALSE(bitmaps_disjoint(d.bitmap, f.bitmap, 128));
  const auto g = page({99}, false, 100), h = page({99}, true, 100);
  EXPECT_FALSE(bitmaps_disjoint(g.bitmap, h.bitmap, 100));
}

TEST(MeshSearch, DisjointPagesPairTheSparserAsSource) {
  planner::Budget budget;
  const auto pairs = search({page({0, 1, 2, 3}, false), page({31}, true)}, budget);
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(pairs[0].src, 1u) << "the page that copies less moves";
  EXPECT_EQ(pairs[0].dst, 0u);
  EXPECT_EQ(pairs[0].bytes, kSize);
  EXPECT_EQ(budget.pages, ~0ull - 1);
  EXPECT_EQ(budget.bytes, ~0ull - kSize);
}

TEST(MeshSearch, OverlappingBitmapsOrTooManyObjectsFindNoPair) {
  planner::Budget budget;
  EXPECT_TRUE(search({page({0, 1, 2}, false), page({2, 30}, true)}, budget).empty()) << "slot 2 in both";
  // Disjoint halves of 17 and 16 objects: 33 do not fit 32 slots (cannot happen with real
  // bitmaps, but the count is checked first).
  Page a = page({0}, false), b = page({31}, true);
  a.candidate.used = 17;
  b.candidate.used = 16;
  EXPECT_TRUE(search({a, b}, budget).empty());
  EXPECT_EQ(budget.pages, ~0ull);
}

TEST(MeshSearch, ASourceThatCannotMoveSwapsOrBlocks) {
  planner::Budget budget;
  // The sparser page is on a tail (or has aliases): the other one moves onto it.
  Page sparse = page({0}, false), dense = page({10, 11, 12}, true);
  sparse.candidate.movable = false;
  auto pairs = search({sparse, dense}, budget);
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(pairs[0].src, 1u);
  EXPECT_EQ(pairs[0].bytes, 3 * kSize);
  // Neither can move: no pair.
  dense.candidate.movable = false;
  EXPECT_TRUE(search({sparse, dense}, budget).empty());
  // The destination already shares its page with the most virtual pages allowed.
  Page full_dst = page({10, 11, 12}, true);
  full_dst.candidate.sharers = kSharers;
  EXPECT_TRUE(search({page({0}, false), full_dst}, budget).empty());
  full_dst.candidate.sharers = kSharers - 1;
  EXPECT_EQ(search({page({0}, false), full_dst}, budget).size(), 1u);
}

TEST(MeshSearch, BudgetsBoundThePairs) {
  std::vector<Page> pages;
  for (std::uint32_t k = 0; k < 8; ++k) pages.push_back(page({k}, k % 2 == 1));  // 4 asc, 4 desc, all disjoint
  planner::Budget unbounded;
  EXPECT_EQ(search(pages, unbounded).size(), 4u) << "each page in one pair";
  planner::Budget two{2, ~0ull};
  EXPECT_EQ(search(pages, two).size(), 2u);
  EXPECT_EQ(two.pages, 0u);
  // One object's bytes left after the first pair: the second pair does not fit.
  planner::Budget bytes{~0ull, kSize + kSize / 2};
  EXPECT_EQ(search(pages, bytes).size(), 1u);
  EXPECT_EQ(bytes.bytes, kSize / 2);
}

TEST(MeshSearch, FewerThanTwoPagesDrawNothing) {
  planner::Budget budget;
  std::mt19937 rng(5), untouched(5);
  std::vector<Page> one = {page({0}, false)};
  const auto candidates = view(one);
  EXPECT_TRUE(find_mesh_pairs(candidates, kSlots, kSize, kSharers, rng, budget).empty());
  EXPECT_EQ(rng, untouched) << "the next class's shuffle must not depend on this one";
  EXPECT_TRUE(find_mesh_pairs({}, kSlots, kSize, kSharers, rng, budget).empty());
}

TEST(MeshSearch, PagesFilledTheSameWayAreSplitInHalves) {
  // Six ascending pages, pairwise disjoint: the search splits them in two halves of three.
  std::vector<Page> pages;
  for (std::uint32_t k = 0; k < 6; ++k) pages.push_back(page({2 * k, 2 * k + 1}, false));
  planner::Budget budget;
  const auto pairs = search(pages, budget);
  EXPECT_EQ(pairs.size(), 3u);
  std::set<std::uint32_t> seen;
  for (const auto& m : pairs) {
    EXPECT_TRUE(seen.insert(m.src).second);
    EXPECT_TRUE(seen.insert(m.dst).second);
  }
}

TEST(MeshSearch, DeterministicForOneSeed) {
  std::vector<Page> pages;
  for (std::uint32_t k = 0; k < 20; ++k) pages.push_back(page({k % 16, 16 + (k * 7) % 16}, k % 3 == 0));
  planner::Budget a, b;
  const auto first = search(pages, a, 42), second = search(pages, b, 42);
  EXPECT_FALSE(first.empty());
  ASSERT_EQ(first.size(), second.size());
  for (std::size_t k = 0; k < first.size(); ++k) {
    EXPECT_EQ(first[k].src, second[k].src);
    EXPECT_EQ(first[k].dst, second[k].dst);
  }
  // Every pair found is one that may mesh.
  for (const auto& m : first) {
    EXPECT_TRUE(bitmaps_disjoint(pages[m.src].bitmap, pages[m.dst].bitmap, kSlots));
    EXPECT_LE(pages[m.src].candidate.used, pages[m.dst].candidate.used);
  }
}

}  // namespace
}  // namespace valet::detail
