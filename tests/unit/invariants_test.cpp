// The tiers of heap/src/invariants.h: VALET_CHECK always aborts on a broken rule; VALET_ASSERT
// and VALET_EXPENSIVE_ASSERT abort exactly in the builds their tier names and, where off, do not
// even evaluate their condition.
#include <gtest/gtest.h>

#include <string>

#include "invariants.h"

namespace valet::detail {
namespace {

class Invariants : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(Invariants, CheckPassesSilentlyAndBuildsNoMessage) {
  int messages = 0;
  auto message = [&] {
    ++messages;
    return std::string("never built");
  };
  VALET_CHECK(1 + 1 == 2, message());
  EXPECT_EQ(messages, 0) << "the message is built only on failure";
}

TEST_F(Invariants, CheckAbortsNamingFileLineConditionAndMessage) {
  EXPECT_DEATH(VALET_CHECK(1 + 1 == 3, "arithmetic"),
               "valet: invariant failed at .*invariants_test.cpp:[0-9]+: 1 \\+ 1 == 3 \\(arithmetic\\)");
  const std::string why = "slot 7 of page 3";
  EXPECT_DEATH(VALET_CHECK(why.empty(), "bad " + why), "why.empty\\(\\) \\(bad slot 7 of page 3\\)");
}

TEST_F(Invariants, AssertFollowsItsTier) {
  int evaluated = 0;
  VALET_ASSERT(++evaluated > 0);
  EXPECT_EQ(evaluated, kAssertions ? 1 : 0);
  if constexpr (kAssertions) {
    EXPECT_DEATH(VALET_ASSERT(evaluated == 42), "invariant failed at .*: evaluated == 42 \\(assertion\\)");
  } else {
    VALET_ASSERT(evaluated == 42);  // compiled out: no abort
  }
}

TEST_F(Invariants, ExpensiveAssertFollowsItsTier) {
  int evaluated = 0;
  VALET_EXPENSIVE_ASSERT(++evaluated > 0);
  EXPECT_EQ(evaluated, kExpensiveChecks ? 1 : 0);
  if constexpr (kExpensiveChecks) {
    EXPECT_DEATH(VALET_EXPENSIVE_ASSERT(evaluated == 42), "evaluated == 42 \\(expensive assertion\\)");
  } else {
    VALET_EXPENSIVE_ASSERT(evaluated == 42);
  }
}

TEST_F(Invariants, TiersNestAndFollowTheBuild) {
  // Expensive checks on implies assertions on; Debug builds (no NDEBUG) have both.
  EXPECT_TRUE(!kExpensiveChecks || kAssertions);
#ifndef NDEBUG
  EXPECT_TRUE(kAssertions && kExpensiveChecks);
#endif
#if defined(VALET_EXPENSIVE_CHECKS) && VALET_EXPENSIVE_CHECKS
  EXPECT_TRUE(kExpensiveChecks);
#elif defined(NDEBUG)
  EXPECT_FALSE(kAssertions || kExpensiveChecks) << "a release build without VALET_EXPENSIVE_CHECKS checks nothing extra";
#endif
}

}  // namespace
}  // namespace valet::detail
