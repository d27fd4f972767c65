// CopyRegion (heap/src/copy_region.h): placement, the mapped extent, compaction rounds, refusals,
// and a random walk checked against a map of which owner holds each aligned unit.
#include "copy_region.h"

#include <gtest/gtest.h>

#include <random>

namespace valet::detail::copy_region_test {

constexpr std::uint64_t kMiB = 1ull << 20;
constexpr std::uint64_t kChunk = 64 * kMiB;

CopyRegion make(std::uint64_t chunks = 16) {
  auto r = CopyRegion::create({chunks * kChunk, kChunk, 512});
  EXPECT_TRUE(r.ok());
  return std::move(r).value();
}

const auto kAny = [](std::uint32_t) { return true; };

TEST(CopyRegion, RefusesABadShape) {
  EXPECT_EQ(CopyRegion::create({kChunk, kChunk, 300}).error().code, Errc::invalid_argument);
  EXPECT_EQ(CopyRegion::create({kChunk + 512, kChunk, 512}).error().code, Errc::invalid_argument);
  EXPECT_EQ(CopyRegion::create({kChunk, 1000, 512}).error().code, Errc::invalid_argument);
}

TEST(CopyRegion, PlacesInTheTightestHoleElseAtTheTop) {
  CopyRegion r = make();
  EXPECT_FALSE(r.place(kMiB, 1));  // nothing mapped yet
  ASSERT_TRUE(r.grow(kChunk).ok());
  const auto a = r.place(3 * kMiB, 1), b = r.place(kMiB, 2), c = r.place(2 * kMiB, 3), d = r.place(kMiB, 4);
  ASSERT_TRUE(a && b && c && d);
  EXPECT_EQ(*a, 0u);
  EXPECT_EQ(*d, 6 * kMiB);
  EXPECT_EQ(r.top(), 7 * kMiB);
  ASSERT_TRUE(r.free(*a).ok());
  ASSERT_TRUE(r.free(*c).ok());
  EXPECT_EQ(r.hole_bytes(), 5 * kMiB);
  // 2 MiB fits both holes: the tighter one (c's) takes it, whole.
  EXPECT_EQ(r.place(2 * kMiB, 5), *c);
  // 1 MiB: only a's hole is left; its start is taken and the rest stays a hole.
  EXPECT_EQ(r.place(kMiB + 1, 6), *a);
  EXPECT_EQ(r.hole_bytes(), 2 * kMiB - 512);
  EXPECT_EQ(r.footprint(kMiB + 1), kMiB + 512);
  EXPECT_EQ(r.object_count(), 4u);
  EXPECT_TRUE(r.validate().ok());
}

TEST(CopyRegion, FreesMergeHolesAndLowerTheTop) {
  CopyRegion r = make();
  ASSERT_TRUE(r.grow(kChunk).ok());
  std::vector<CopyRegion::Offset> at;
  for (std::uint32_t i = 0; i < 6; ++i) at.push_back(*r.place(kMiB, i));
  ASSERT_TRUE(r.free(at[1]).ok());
  ASSERT_TRUE(r.free(at[3]).ok());
  EXPECT_EQ(r.hole_count(), 2u);
  ASSERT_TRUE(r.free(at[2]).ok());  // joins both neighbours
  EXPECT_EQ(r.hole_count(), 1u);
  EXPECT_EQ(r.largest_hole(), 3 * kMiB);
  ASSERT_TRUE(r.free(at[4]).ok());
  ASSERT_TRUE(r.free(at[5]).ok());  // the top object: the top falls past the merged holes to a's end
  EXPECT_EQ(r.top(), kMiB);
  EXPECT_EQ(r.hole_count(), 0u);
  EXPECT_EQ(r.hole_bytes(), 0u);
  EXPECT_TRUE(r.validate().ok());
}

TEST(CopyRegion, GrowsAndTrimsByWholeChunksWithinTheCapacity) {
  CopyRegion r = make(4);
  EXPECT_EQ(r.growth_for(kMiB), kChunk);
  EXPECT_EQ(r.growth_for(kChunk + 1), 2 * kChunk);
  EXPECT_EQ(r.growth_for(4 * kChunk), 4 * kChunk);
  EXPECT_FALSE(r.growth_for(4 * kChunk + 1));  // past the capacity
  EXPECT_EQ(r.grow(kMiB).error().code, Errc::invalid_argument);
  EXPECT_EQ(r.grow(5 * kChunk).error().code, Errc::invalid_argument);
  ASSERT_TRUE(r.grow(3 * kChunk).ok());
  ASSERT_TRUE(r.place(kChunk + kMiB, 1));
  EXPECT_EQ(r.growth_for(kMiB), 0u);
  // Top at 65 MiB: a chunk of headroom wants 3 chunks, so there is no surplus; half a chunk
  // wants 2, a surplus of 1 chunk, taken only at a hysteresis of 1 or less.
  EXPECT_EQ(r.surplus(kChunk, 1), 0u);
  EXPECT_EQ(r.surplus(kChunk / 2, 1), kChunk);
  EXPECT_EQ(r.surplus(kChunk / 2, 2), 0u);
  EXPECT_EQ(r.shrink(2 * kChunk).error().code, Errc::invalid_argument);  // below the top
  ASSERT_TRUE(r.shrink(kChunk).ok());
  EXPECT_EQ(r.mapped(), 2 * kChunk);
  EXPECT_TRUE(r.validate().ok());
}

TEST(CopyRegion, RefusalsChangeNothing) {
  CopyRegion r = make();
  ASSERT_TRUE(r.grow(kChunk).ok());
  const auto a = *r.place(kMiB, 1);
  const auto b = *r.place(kMiB, 2);
  EXPECT_EQ(r.free(a + 512).error().code, Errc::invalid_argument);  // not an object's start
  EXPECT_FALSE(r.place(0, 3));
  ASSERT_TRUE(r.free(a).ok());
  EXPECT_EQ(r.free(a).error().code, Errc::invalid_argument);  // twice
  const auto round = r.plan_round({0, kChunk, 200}, kAny);
  ASSERT_EQ(round.moves.size(), 1u);  // b into a's hole
  EXPECT_EQ(round.moves[0].from, b);
  EXPECT_EQ(r.free(a).error().code, Errc::invalid_argument);  // a move's destination is nobody's to free
  CopyRegion::Move wrong = round.moves[0];
  wrong.owner = 9;
  EXPECT_EQ(r.commit(wrong).error().code, Errc::invalid_argument);
  EXPECT_EQ(r.cancel(wrong).error().code, Errc::invalid_argument);
  EXPECT_TRUE(r.validate().ok());
  ASSERT_TRUE(r.commit(round.moves[0]).ok());
  EXPECT_EQ(r.commit(round.moves[0]).error().code, Errc::invalid_argument);  // twice
  EXPECT_EQ(r.object_at(a)->second, 2u);
  EXPECT_TRUE(r.validate().ok());
}

TEST(CopyRegion, AnObjectFreedWhileItsMoveIsInFlightLeavesAMoveThatOnlyCancels) {
  CopyRegion r = make();
  ASSERT_TRUE(r.grow(kChunk).ok());
  const auto a = *r.place(kMiB, 1);
  const auto b = *r.place(kMiB, 2);
  const auto c = *r.place(kMiB, 3);
  ASSERT_TRUE(r.free(a).ok());
  const auto round = r.plan_round({0, kChunk, 200}, kAny);
  ASSERT_EQ(round.moves.size(), 1u);  // c into a's hole
  ASSERT_TRUE(r.free(c).ok());        // a pin cancelled the move, and the object was freed
  EXPECT_EQ(r.top(), 2 * kMiB);       // its source went at once: the top fell to b's end
  EXPECT_EQ(r.object_count(), 1u);
  EXPECT_TRUE(r.validate().ok()) << r.validate().error().to_string();
  EXPECT_EQ(r.commit(round.moves[0]).error().code, Errc::invalid_argument);
  // Something else may take the freed source meanwhile: the cancel still finds its move.
  ASSERT_EQ(r.place(kMiB, 4), 2 * kMiB);
  ASSERT_TRUE(r.cancel(round.moves[0]).ok());
  EXPECT_EQ(r.object_at(2 * kMiB)->second, 4u);
  EXPECT_EQ(r.hole_bytes(), kMiB);  // a's hole again
  EXPECT_EQ(r.moves_in_flight(), 0u);
  EXPECT_TRUE(r.validate().ok()) << r.validate().error().to_string();
  (void)b;
}

TEST(CopyRegion, ARoundMovesTheHighestObjectsIntoHolesBelowThem) {
  CopyRegion r = make();
  ASSERT_TRUE(r.grow(kChunk).ok());
  std::vector<CopyRegion::Offset> at;
  for (std::uint32_t i = 0; i < 8; ++i) at.push_back(*r.place(2 * kMiB, i));
  ASSERT_TRUE(r.free(at[1]).ok());
  ASSERT_TRUE(r.free(at[3]).ok());
  const auto round = r.plan_round({0, kChunk, 200}, [](std::uint32_t owner) { return owner != 7; });  // 7 is pinned
  ASSERT_EQ(round.moves.size(), 2u);
  EXPECT_EQ(round.moves[0].owner, 6u);  // the highest movable first, into the lowest of equal holes
  EXPECT_EQ(round.moves[0].to, at[1]);
  EXPECT_EQ(round.moves[1].owner, 5u);
  EXPECT_EQ(round.moves[1].to, at[3]);
  EXPECT_EQ(r.moves_in_flight(), 2u);
  EXPECT_EQ(r.object_count(), 6u);
  EXPECT_TRUE(r.validate().ok());
  ASSERT_TRUE(r.commit(round.moves[0]).ok());
  ASSERT_TRUE(r.cancel(round.moves[1]).ok());  // a pin came first: 5 stays, its destination is a hole again
  EXPECT_EQ(r.object_at(at[1])->second, 6u);
  EXPECT_EQ(r.object_at(at[5])->second, 5u);
  EXPECT_EQ(r.hole_bytes(), 4 * kMiB);  // at[3] and at[6]
  EXPECT_TRUE(r.validate().ok());
}

TEST(CopyRegion, WithNoHoleBelowTheTopObjectARoundCopiesTheCheapestRunToTheTop) {
  CopyRegion r = make();
  ASSERT_TRUE(r.grow(kChunk).ok());
  // [1 MiB hole][A 4 MiB][1 MiB hole][B 2 MiB][C 1 MiB][1 MiB hole][D 8 MiB]
  const auto h1 = *r.place(kMiB, 100);
  const auto a = *r.place(4 * kMiB, 1);
  const auto h2 = *r.place(kMiB, 101);
  const auto b = *r.place(2 * kMiB, 2);
  const auto c = *r.place(kMiB, 3);
  const auto h3 = *r.place(kMiB, 102);
  const auto d = *r.place(8 * kMiB, 4);
  for (auto h : {h1, h2, h3}) ASSERT_TRUE(r.free(h).ok());
  const std::uint64_t top = r.top();
  auto round = r.plan_round({0, kChunk, 200}, kAny);
  // D fits no hole; the runs are A (4 MiB), B+C (3 MiB) and D (8 MiB): B and C go to the top.
  ASSERT_EQ(round.moves.size(), 2u);
  EXPECT_EQ(round.moves[0].from, b);
  EXPECT_EQ(round.moves[0].to, top);
  EXPECT_EQ(round.moves[1].from, c);
  EXPECT_EQ(round.moves[1].to, top + 2 * kMiB);
  for (const auto& m : round.moves) ASSERT_TRUE(r.commit(m).ok());
  EXPECT_EQ(r.largest_hole(), 5 * kMiB);  // h2, B, C and h3 are one hole now
  (void)a;
  (void)d;
  // The next round: C (now highest) into h1, B into the merged hole.
  round = r.plan_round({0, kChunk, 200}, kAny);
  ASSERT_EQ(round.moves.size(), 2u);
  EXPECT_EQ(round.moves[0].to, h1);
  EXPECT_EQ(round.moves[1].to, h2);
  for (const auto& m : round.moves) ASSERT_TRUE(r.commit(m).ok());
  EXPECT_EQ(r.hole_bytes(), 3 * kMiB);
  EXPECT_TRUE(r.validate().ok());
}

TEST(CopyRegion, ARunThatDoesNotFitTheMappedTopAsksForGrowth) {
  CopyRegion r = make();
  ASSERT_TRUE(r.grow(kChunk).ok());
  const auto h1 = *r.place(kMiB, 100);
  (void)*r.place(20 * kMiB, 1);
  const auto h2 = *r.place(kMiB, 101);
  (void)*r.place(40 * kMiB, 2);
  ASSERT_TRUE(r.free(h1).ok());
  ASSERT_TRUE(r.free(h2).ok());
  const auto round = r.plan_round({0, kChunk, 200}, kAny);
  EXPECT_TRUE(round.moves.empty());
  EXPECT_EQ(round.growth_wanted, kChunk);  // 20 MiB above a top of 62 MiB needs a second chunk
  ASSERT_TRUE(r.grow(round.growth_wanted).ok());
  EXPECT_EQ(r.plan_round({0, kChunk, 200}, kAny).moves.size(), 1u);
  // Nothing is moved past the budget.
  EXPECT_TRUE(r.validate().ok());
}

TEST(CopyRegion, AtTheCapacityARunGoesToHolesElsewhere) {
  CopyRegion r = make(1);
  ASSERT_TRUE(r.grow(kChunk).ok());
  // [hp 1][A 2][hq 1][B 1][hr 1][C 58]: the region is full.
  const auto hp = *r.place(kMiB, 100);
  (void)*r.place(2 * kMiB, 1);
  const auto hq = *r.place(kMiB, 101);
  const auto b = *r.place(kMiB, 2);
  const auto hr = *r.place(kMiB, 102);
  (void)*r.place(58 * kMiB, 3);
  EXPECT_EQ(r.top(), kChunk);
  for (auto h : {hp, hq, hr}) ASSERT_TRUE(r.free(h).ok());
  const auto round = r.plan_round({0, kChunk, 200}, kAny);
  ASSERT_EQ(round.moves.size(), 1u);  // B, the cheapest run, into hp: not into the holes beside it
  EXPECT_EQ(round.growth_wanted, 0u);
  EXPECT_EQ(round.moves[0].from, b);
  EXPECT_EQ(round.moves[0].to, hp);
  ASSERT_TRUE(r.commit(round.moves[0]).ok());
  EXPECT_EQ(r.largest_hole(), 3 * kMiB);  // hq, B's space and hr
  EXPECT_TRUE(r.validate().ok());
  // A run that fits no hole elsewhere is left where it is.
  CopyRegion full = make(1);
  ASSERT_TRUE(full.grow(kChunk).ok());
  const auto h = *full.place(kMiB, 100);
  (void)*full.place(2 * kMiB, 1);
  const auto g = *full.place(kMiB, 101);
  (void)*full.place(60 * kMiB, 2);
  ASSERT_TRUE(full.free(h).ok());
  ASSERT_TRUE(full.free(g).ok());
  const auto none = full.plan_round({0, kChunk, 200}, kAny);
  EXPECT_TRUE(none.moves.empty());
  EXPECT_EQ(none.growth_wanted, 0u);
  EXPECT_EQ(full.moves_in_flight(), 0u);
  EXPECT_EQ(full.hole_bytes(), 2 * kMiB);
  EXPECT_TRUE(full.validate().ok());
}

TEST(CopyRegion, ARoundKeepsWithinItsBudgetAndStopsAtItsTarget) {
  CopyRegion r = make();
  ASSERT_TRUE(r.grow(kChunk).ok());
  std::vector<CopyRegion::Offset> at;
  for (std::uint32_t i = 0; i < 10; ++i) at.push_back(*r.place(kMiB, i));
  for (int i : {0, 2, 4}) ASSERT_TRUE(r.free(at[i]).ok());
  auto round = r.plan_round({0, 2 * kMiB, 200}, kAny);
  EXPECT_EQ(round.moves.size(), 2u);
  for (const auto& m : round.moves) ASSERT_TRUE(r.cancel(m).ok());
  round = r.plan_round({0, kMiB + kMiB / 2, 200}, kAny);
  EXPECT_EQ(round.moves.size(), 2u);  // the second move begins within the budget and passes it
  for (const auto& m : round.moves) ASSERT_TRUE(r.cancel(m).ok());
  EXPECT_TRUE(r.plan_round({0, kChunk, 200, kMiB - 1}, kAny).moves.empty());  // none is small enough
  round = r.plan_round({2 * kMiB, kChunk, 200}, kAny);
  EXPECT_EQ(round.moves.size(), 1u);  // 3 MiB of holes, down to 2 after one move
  EXPECT_TRUE(r.validate().ok());
}

// A random walk of places, frees, growth, trims and rounds whose moves commit or cancel at random,
// with some owners not movable. A map of which owner holds each 512-byte unit checks that every
// place and every move's destination was free, that no destination of a round overlaps any of its
// sources, and that the region's own validate() agrees after each step.
TEST(CopyRegion, ARandomWalkKeepsEveryObjectsBytesItsOwn) {
  constexpr std::uint64_t kUnit = 512, kChunkSmall = 4 * kMiB, kCap = 64 * kChunkSmall;
  auto made = CopyRegion::create({kCap, kChunkSmall, kUnit});
  ASSERT_TRUE(made.ok());
  CopyRegion r = std::move(made).value();
  std::vector<std::uint32_t> units(kCap / kUnit, 0);  // 0: free; else owner + 1
  std::map<std::uint32_t, CopyRegion::Offset> live;     // owner -> offset
  std::mt19937_64 rng(7);
  std::uint32_t next_owner = 0;
  auto fill = [&](CopyRegion::Offset at, std::uint64_t bytes, std::uint32_t owner, std::uint32_t expect) {
    for (std::uint64_t u = at / kUnit; u < (at + bytes) / kUnit; ++u) {
      ASSERT_EQ(units[u], expect) << "unit " << u;
      units[u] = owner;
    }
  };
  std::uint64_t moved = 0, rounds = 0, cancels = 0;
  for (int step = 0; step < 20000; ++step) {
    const int op = int(rng() % 10);
    if (op < 5) {
      const std::uint64_t bytes = 1 + rng() % (rng() % 4 == 0 ? 6 * kMiB : 256 * 1024);
      const std::uint32_t owner = next_owner++;
      auto at = r.place(bytes, owner);
      if (!at) {
        const auto g = r.growth_for(bytes);
        if (g && *g > 0 && r.grow(*g).ok()) at = r.place(bytes, owner);
      }
      if (at) {
        fill(*at, r.footprint(bytes), owner + 1, 0);
        live[owner] = *at;
      }
    } else if (op < 9 && !live.empty()) {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      const auto [bytes, owner] = *r.object_at(it->second);
      ASSERT_EQ(owner, it->first);
      ASSERT_TRUE(r.free(it->second).ok());
      fill(it->second, bytes, 0, owner + 1);
      live.erase(it);
      if (const std::uint64_t extra = r.surplus(kChunkSmall, 2)) {
        ASSERT_TRUE(r.shrink(extra).ok());
      }
    } else {
      auto round = r.plan_round({r.mapped() / 50, 16 * kMiB, 64}, [](std::uint32_t owner) { return owner % 7 != 0; });
      if (round.growth_wanted) {
      ASSERT_TRUE(r.grow(round.growth_wanted).ok());
    }
      ++rounds;
      for (const auto& m : round.moves) {
        ASSERT_NE(m.owner % 7, 0u);
        for (const auto& other : round.moves) {
          ASSERT_TRUE(m.to + m.bytes <= other.from || other.from + other.bytes <= m.to) << "a destination overlaps a source";
        }
        fill(m.to, m.bytes, m.owner + 1, 0);  // the destination was free
      }
      ASSERT_TRUE(r.validate().ok()) << r.validate().error().to_string();
      for (const auto& m : round.moves) {
        if (rng() % 16 == 0) {  // cancelled by a pin, then freed before the heap takes the lock back
          ASSERT_TRUE(r.free(m.from).ok());
          fill(m.from, m.bytes, 0, m.owner + 1);
          live.erase(m.owner);
          EXPECT_FALSE(r.commit(m).ok());
          ASSERT_TRUE(r.cancel(m).ok());
          fill(m.to, m.bytes, 0, m.owner + 1);
          ++cancels;
        } else if (rng() % 8 == 0) {
          ASSERT_TRUE(r.cancel(m).ok());
          fill(m.to, m.bytes, 0, m.owner + 1);
          ++cancels;
        } else {
          ASSERT_TRUE(r.commit(m).ok());
          fill(m.from, m.bytes, 0, m.owner + 1);
          live[m.owner] = m.to;
          moved += m.bytes;
        }
      }
    }
    ASSERT_TRUE(r.validate().ok()) << "step " << step << ": " << r.validate().error().to_string();
  }
  EXPECT_GT(moved, 0u);
  EXPECT_GT(cancels, 0u);
  EXPECT_GT(rounds, 1000u);
  // Rounds with every object movable bring the holes down to their target or to none left to fill.
  for (int i = 0; i < 1000 && r.hole_bytes() > r.mapped() / 50; ++i) {
    auto round = r.plan_round({r.mapped() / 50, 64 * kMiB, 1000}, kAny);
    if (round.growth_wanted) {
      ASSERT_TRUE(r.grow(round.growth_wanted).ok());
    }
    if (round.moves.empty() && !round.growth_wanted) break;
    for (const auto& m : round.moves) ASSERT_TRUE(r.commit(m).ok());
  }
  EXPECT_LE(r.hole_bytes(), r.mapped() / 50) << r.hole_count() << " holes, top " << r.top() << " mapped " << r.mapped() << " objects " << r.object_bytes();
  EXPECT_TRUE(r.validate().ok());
}

}  // namespace valet::detail::copy_region_test
