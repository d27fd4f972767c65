// HandleTable::validate (heap/src/handle_table.cpp): a table used as the heap uses it passes, and
// each kind of corruption it claims to catch is caught with a message naming it. Entries are
// corrupted through get(), the free list and the high water through HandleTableTestPeer (not
// through release(), whose assertions would stop the corruption first in checked builds).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "handle_table.h"
#include "invariants.h"

namespace valet::detail {

struct HandleTableTestPeer {
  static std::vector<std::uint32_t>& free_list(HandleTable& t) { return t.free_; }
  static std::uint32_t& high_water(HandleTable& t) { return t.high_water_; }
};

namespace {

std::string failure(const HandleTable& t) {
  auto st = t.validate();
  return st.ok() ? std::string() : st.error().message;
}

#define EXPECT_CAUGHT(table, text)                                                      \
  do {                                                                                  \
    const std::string msg_ = failure(table);                                            \
    EXPECT_NE(msg_.find(text), std::string::npos) << "expected \"" << (text) << "\", got \"" << msg_ << "\""; \
  } while (0)

// What the heap does: acquire an index and make it LIVE (allocate), or clear LIVE and release it
// (free), keeping the generation.
std::uint32_t allocate(HandleTable& t) {
  std::uint32_t i = 0;
  EXPECT_TRUE(t.acquire(i));
  HandleEntry* e = t.get(i);
  e->state.store(state::make(state::generation(e->state.load()) + 1, state::kLive));
  return i;
}

void free_index(HandleTable& t, std::uint32_t i) {
  HandleEntry* e = t.get(i);
  e->state.store(state::make(state::generation(e->state.load()), 0));
  t.release(i);
}

class HandleTableValidate : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int k = 0; k < 10; ++k) live.push_back(allocate(table));
    free_index(table, live[3]);
    free_index(table, live[7]);
    freed = {live[3], live[7]};
    ASSERT_EQ(failure(table), "");
  }

  HandleTable table;
  std::vector<std::uint32_t> live, freed;
};

TEST_F(HandleTableValidate, UntouchedTablePassesThroughAllocationsAndFrees) {
  // Across a chunk boundary, with LIFO reuse of freed indices.
  HandleTable t;
  std::vector<std::uint32_t> in_use;
  std::mt19937 rng(3);
  for (int step = 0; step < 5 * int(HandleTable::kChunk); ++step) {
    if (in_use.empty() || rng() % 3 != 0) {
      in_use.push_back(allocate(t));
    } else {
      const std::size_t k = rng() % in_use.size();
      free_index(t, in_use[k]);
      in_use.erase(in_use.begin() + std::ptrdiff_t(k));
    }
    if (step % 97 == 0) {
      ASSERT_EQ(failure(t), "") << "step " << step;
    }
  }
  EXPECT_GT(t.high_water(), HandleTable::kChunk) << "the walk crossed into a second chunk";
  EXPECT_EQ(failure(t), "");
}

TEST_F(HandleTableValidate, CatchesAFreeIndexAtOrAboveTheHighWater) {
  HandleTableTestPeer::free_list(table).push_back(table.high_water());
  EXPECT_CAUGHT(table, "free index 11 is not in [1, high water 11)");
}

TEST_F(HandleTableValidate, CatchesIndexZeroOnTheFreeList) {
  HandleTableTestPeer::free_list(table).push_back(0);
  EXPECT_CAUGHT(table, "free index 0 is not in [1, high water");
}

TEST_F(HandleTableValidate, CatchesADuplicateFreeIndex) {
  HandleTableTestPeer::free_list(table).push_back(freed[0]);
  EXPECT_CAUGHT(table, "free index " + std::to_string(freed[0]) + " is listed twice");
}

TEST_F(HandleTableValidate, CatchesALiveEntryOnTheFreeList) {
  HandleTableTestPeer::free_list(table).push_back(live[5]);
  EXPECT_CAUGHT(table, "free index " + std::to_string(live[5]) + " names a LIVE entry");
}

TEST_F(HandleTableValidate, CatchesAFreeEntryThatIsMovingOrPinned) {
  HandleEntry* e = table.get(freed[1]);
  const std::uint64_t settled = e->state.load();
  e->state.store(settled | state::kMoving);
  EXPECT_CAUGHT(table, "free index " + std::to_string(freed[1]) + " has state flags or pins");
  e->state.store(settled + 1);  // one pin
  EXPECT_CAUGHT(table, "has state flags or pins (state 1)");
}

TEST_F(HandleTableValidate, CatchesAFreeEntryWithPendingUnpins) {
  table.get(freed[0])->pending_unpins.push_back(Event{42});
  EXPECT_CAUGHT(table, "free index " + std::to_string(freed[0]) + " still has pending stream unpins");
}

TEST_F(HandleTableValidate, CatchesALeakedIndex) {
  // Acquired but neither made LIVE nor released: lost to every later allocation.
  std::uint32_t i = 0;
  ASSERT_TRUE(table.acquire(i));
  EXPECT_CAUGHT(table, "1 entries below the high water are neither LIVE, free nor cached (leaked indices)");
}

TEST_F(HandleTableValidate, CatchesEntryZeroInUse) {
  table.get(0)->state.store(state::make(1, state::kLive));
  EXPECT_CAUGHT(table, "entry 0 is in use");
}

TEST_F(HandleTableValidate, CatchesAHighWaterPastItsChunks) {
  HandleTableTestPeer::high_water(table) = std::uint32_t(HandleTable::kChunk + 5);
  EXPECT_CAUGHT(table, "chunk 1 is missing below the high water " + std::to_string(HandleTable::kChunk + 5));
}

TEST_F(HandleTableValidate, CatchesAChunkAboveTheHighWater) {
  // Fill chunk 0 so that the next index opens chunk 1, then pretend that index was never given.
  while (table.high_water() < HandleTable::kChunk) allocate(table);
  allocate(table);
  ASSERT_EQ(failure(table), "");
  HandleTableTestPeer::high_water(table) = std::uint32_t(HandleTable::kChunk);
  EXPECT_CAUGHT(table, "chunk 1 exists above the high water " + std::to_string(HandleTable::kChunk));
  HandleTableTestPeer::high_water(table) = ~0u;
  EXPECT_CAUGHT(table, "high water 4294967295 past the table's end");
}

// release()'s preconditions are assertions (expensive for the duplicate scan).
TEST_F(HandleTableValidate, BrokenReleasePreconditionsAbortWhereChecksAreOn) {
  if constexpr (!kAssertions) GTEST_SKIP() << "assertions are compiled out of this build (Release)";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(table.release(0), "invariant failed at .*handle_table.h");
  EXPECT_DEATH(table.release(live[1]), "invariant failed at .*handle_table.h");  // still LIVE
  if constexpr (kExpensiveChecks) {
    EXPECT_DEATH(table.release(freed[0]), "expensive assertion");
  }
}

}  // namespace
}  // namespace valet::detail

#undef EXPECT_CAUGHT  // the unity build puts the validate tests in one translation unit
