// The policy engine with a controlled clock, and the background compactor on a live heap.
#include <gtest/gtest.h>

#include <thread>

#include "heap_test_util.h"
#include "policy_engine.h"
#include "valet/compactor.h"

namespace valet::test {
namespace {

using policy::Observation;

constexpr std::uint64_t kSec = 1'000'000'000ull;

// A class of 64 KiB objects (32 per page) with the given used counts per page.
ClassOccupancy cls64k(std::vector<std::uint32_t> used) { return ClassOccupancy{65536, 32, std::move(used)}; }

Observation obs(std::uint64_t t, std::uint64_t allocs, std::uint64_t free_pages, std::vector<ClassOccupancy> c,
                std::uint64_t failed = 0) {
  return Observation{t, allocs, failed, free_pages, std::move(c), {}};
}

PolicySettings busy_settings() {
  PolicySettings s;
  s.idle_allocs_per_second = 10;  // anything above counts as busy
  return s;
}

TEST(PolicyEngine, QuietWhenNothingHolds) {
  auto s = busy_settings();
  policy::EngineState st;
  // Dense pages, plenty of free pages, a busy heap: no trigger.
  EXPECT_FALSE(policy::decide(s, obs(1 * kSec, 0, 100, {cls64k({32, 32, 31, 30})}), st));
  EXPECT_FALSE(policy::decide(s, obs(2 * kSec, 5000, 100, {cls64k({32, 32, 31, 30})}), st));
}

TEST(PolicyEngine, FragmentationTriggersAndPlansTheCheapestLevel) {
  auto s = busy_settings();
  policy::EngineState st;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  // Ten pages at 4/32: 87% fragmentation; the 0.25 level frees pages moving the least bytes.
  auto d = policy::decide(s, obs(2 * kSec, 5000, 100, {cls64k({4, 4, 4, 4, 4, 4, 4, 4, 4, 4})}), st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::fragmentation);
  EXPECT_DOUBLE_EQ(d->plan.max_occupancy, 0.25);
  EXPECT_EQ(d->plan.pages_freed, 8u);  // 40 objects fit in 2 pages
  EXPECT_EQ(d->plan.bytes_moved, 8u * 4 * 65536);
  EXPECT_LE(d->request.max_occupancy, 0.25);
}

// Empty slab pages, one per class (each class keeps one against ping-pong), are reclaimable
// without a move: the planner counts them, so a cycle gives them back.
TEST(PolicyEngine, LoneEmptyPagesOfManyClassesArePlannedForRelease) {
  auto s = busy_settings();
  policy::EngineState st;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  std::vector<ClassOccupancy> classes;
  for (std::uint32_t k = 0; k < 36; ++k) classes.push_back(ClassOccupancy{256u * (k + 1), (2u << 20) / (256u * (k + 1)), {0}});
  auto d = policy::decide(s, obs(2 * kSec, 5000, 100, classes), st);
  ASSERT_TRUE(d) << "36 empty pages held and no cycle planned";
  EXPECT_EQ(d->trigger, CompactionTrigger::fragmentation);
  EXPECT_EQ(d->plan.pages_freed, 36u);
  EXPECT_EQ(d->plan.bytes_moved, 0u);
}

// The policy sees the fragmentation the stats report (less the reserve): slab pages that are
// sparse only by a little, among large objects, still get a cycle when the heap as a whole is
// over the threshold.
TEST(PolicyEngine, FragmentationOfTheWholeHeapTriggersToo) {
  auto s = busy_settings();
  policy::EngineState st;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  // 100 slab pages at 30/32 and 4 at 6/32: 9.1% slab fragmentation, under the 10% threshold.
  std::vector<std::uint32_t> used(100, 30);
  for (int i = 0; i < 4; ++i) used.push_back(6);
  auto o = obs(2 * kSec, 5000, 100, {cls64k(used)});
  ASSERT_LT(policy::slab_fragmentation(o.classes), s.fragmentation_threshold);
  // The heap also holds 100 pages of large objects using 85% of them, and an 8-page reserve.
  const std::uint64_t page = 2u << 20;
  o.reserve_bytes = 8 * page;
  o.mapped_bytes = (104 + 100) * page + o.reserve_bytes;
  o.live_bytes = (100 * 30 + 4 * 6) * 65536ull + 85 * page;
  ASSERT_GT(policy::heap_fragmentation(o), s.fragmentation_threshold);
  auto d = policy::decide(s, o, st);
  ASSERT_TRUE(d) << "the heap is over the threshold and pages are reclaimable";
  EXPECT_EQ(d->trigger, CompactionTrigger::fragmentation);
  EXPECT_GE(d->plan.pages_freed, 2u);
  // Much of the heap's figure may be rounding no cycle reclaims: only the cheapest level is
  // planned, never pages near max_occupancy.
  EXPECT_DOUBLE_EQ(d->plan.max_occupancy, 0.25);
  o.now_ns = 3 * kSec;
  o.allocations = 10000;
  // 4 pages at 24/32 (emptying each copies 3/4 of a page), the rest at 30/32: nothing is cheap.
  std::vector<std::uint32_t> mostly_full(100, 30);
  mostly_full.insert(mostly_full.end(), 4, 24);
  o.classes = {cls64k(mostly_full)};
  o.live_bytes = (100 * 30 + 4 * 24) * 65536ull + 85 * page;
  ASSERT_LT(policy::slab_fragmentation(o.classes), s.fragmentation_threshold);
  ASSERT_GT(policy::heap_fragmentation(o), s.fragmentation_threshold);
  EXPECT_FALSE(policy::decide(s, o, st)) << "moved pages near max_occupancy for waste no cycle reclaims";
  // The reserve alone never triggers: it is the keeper's.
  auto dense = obs(3 * kSec, 10000, 100, {cls64k({32, 32, 32, 32})});
  dense.reserve_bytes = 16 * page;
  dense.mapped_bytes = 4 * page + dense.reserve_bytes;
  dense.live_bytes = 4 * page;
  EXPECT_DOUBLE_EQ(policy::heap_fragmentation(dense), 0.0);
  EXPECT_FALSE(policy::decide(s, dense, st));
}

TEST(PolicyEngine, FragmentationBelowThresholdDoesNotTrigger) {
  auto s = busy_settings();
  s.fragmentation_threshold = 0.5;
  policy::EngineState st;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  EXPECT_FALSE(policy::decide(s, obs(2 * kSec, 5000, 100, {cls64k({20, 20, 20})}), st));  // 37.5%
  EXPECT_TRUE(policy::decide(s, obs(3 * kSec, 10000, 100, {cls64k({10, 10, 10})}), st));  // 68.75%
}

TEST(PolicyEngine, LowFreePagesAndFailedAllocationsTrigger) {
  auto s = busy_settings();
  s.fragmentation_threshold = 0.99;  // keep fragmentation out of the way
  policy::EngineState st;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  auto d = policy::decide(s, obs(2 * kSec, 5000, 2, {cls64k({8, 8, 8, 8})}), st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::reserve_low);
  auto f = policy::decide(s, obs(3 * kSec, 10000, 100, {cls64k({8, 8, 8, 8})}, /*failed=*/1), st);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->trigger, CompactionTrigger::reserve_low);
  EXPECT_FALSE(policy::decide(s, obs(4 * kSec, 15000, 100, {cls64k({8, 8, 8, 8})}, 1), st))
      << "the failure was already answered";
}

TEST(PolicyEngine, IdleWindowTriggersOnlyWhenSomethingIsReclaimable) {
  PolicySettings s;
  s.fragmentation_threshold = 0.99;
  s.idle_allocs_per_second = 100;
  policy::EngineState st;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  auto d = policy::decide(s, obs(2 * kSec, 10, 100, {cls64k({8, 8, 8, 8})}), st);  // 10 allocs/s
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::idle);
  EXPECT_FALSE(policy::decide(s, obs(3 * kSec, 20, 100, {cls64k({32, 32})}), st)) << "nothing to reclaim";
}

TEST(PolicyEngine, ByteBudgetIsChargedAndRefilled) {
  auto s = busy_settings();
  s.max_bytes_per_second = 4 << 20;  // 4 MiB/s
  policy::EngineState st;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  auto frag = std::vector<ClassOccupancy>{cls64k({4, 4, 4, 4, 4, 4, 4, 4, 4, 4})};
  auto d = policy::decide(s, obs(1 * kSec + 1, 0, 100, frag), st);
  ASSERT_TRUE(d);
  EXPECT_LE(d->request.max_bytes, 4u << 20);
  CompactionRecord r;
  r.bytes_moved = 4 << 20;
  policy::account(st, r);
  EXPECT_FALSE(policy::decide(s, obs(1 * kSec + 2, 0, 100, frag), st)) << "budget spent";
  auto later = policy::decide(s, obs(2 * kSec, 0, 100, frag), st);
  ASSERT_TRUE(later) << "a second later the budget is back";
}

TEST(PolicyEngine, PauseBudgetBoundsOneCycle) {
  auto s = busy_settings();
  s.max_pause_us = 100;
  policy::EngineState st;
  st.copy_bytes_per_ns = 0.01;  // 10 MB/s measured: 100 us would move 1 KB; the floor is a page
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  auto d = policy::decide(s, obs(2 * kSec, 5000, 100, {cls64k({4, 4, 4, 4, 4, 4, 4, 4, 4, 4})}), st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->request.max_bytes, 2u << 20);
  st.copy_bytes_per_ns = 1000;  // 1 TB/s: 100 us moves 100 MB, more than the plan needs
  d = policy::decide(s, obs(3 * kSec, 10000, 100, {cls64k({4, 4, 4, 4, 4, 4, 4, 4, 4, 4})}), st);
  ASSERT_TRUE(d);
  EXPECT_LE(d->request.max_bytes, 100'000'000u);
  EXPECT_GE(d->request.max_bytes, 99'000'000u);
}

TEST(PolicyEngine, FirstCycleKeepsToThePauseBudgetBeforeTheSpeedIsKnown) {
  auto s = busy_settings();
  auto frag = std::vector<ClassOccupancy>{cls64k({4, 4, 4, 4, 4, 4, 4, 4, 4, 4})};
  policy::EngineState st;  // no cycle yet: copy speed unknown, 1 GB/s assumed
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  auto d = policy::decide(s, obs(2 * kSec, 5000, 100, frag), st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->request.max_bytes, 2u << 20) << "1000 us at 1 GB/s is 1 MB: the one-page floor holds";
  s.max_pause_us = 10'000;
  policy::EngineState st2;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st2);
  d = policy::decide(s, obs(2 * kSec, 5000, 100, frag), st2);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->request.max_bytes, 10'000'000u);
}

TEST(PolicyEngine, OffMeansOnlySafepointsDecide) {
  auto s = busy_settings();
  s.background = false;
  policy::EngineState st;
  (void)policy::decide(s, obs(1 * kSec, 0, 100, {}), st);
  auto frag = std::vector<ClassOccupancy>{cls64k({4, 4, 4, 4, 4, 4})};
  EXPECT_FALSE(policy::decide(s, obs(2 * kSec, 5000, 100, frag), st));
  auto d = policy::decide(s, obs(3 * kSec, 10000, 100, frag), st, /*safepoint=*/true);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::safepoint);
}

TEST(PolicyEngine, TailsTriggerOnlyWhenSlabPagesFitOpenTails) {
  auto s = busy_settings();
  s.tails_min_pages = s.min_reclaim_pages;  // the matching, without the hysteresis
  policy::EngineState st;
  // Dense pages (no fragmentation trigger), plenty of free pages, a busy heap: pages of 64 KiB
  // objects holding 12, 16 and 30 objects.
  auto classes = [] { return std::vector<ClassOccupancy>{cls64k({30, 12, 16})}; };
  Observation o = obs(1 * kSec, 0, 100, classes());
  EXPECT_FALSE(policy::decide(s, o, st)) << "no open tail";
  // Tails using 1 MiB (16 slots left) and 300 KiB (27 slots left): the fuller takes the page of
  // 12 objects, the other the page of 16 (the page of 30 fits neither).
  o = obs(2 * kSec, 5000, 100, classes());
  o.open_tails = {300u << 10, 1u << 20};
  const auto plan = policy::plan_tails(o.classes, o.open_tails);
  EXPECT_EQ(plan.pages_freed, 2u);
  EXPECT_EQ(plan.bytes_moved, (12u + 16u) * 65536);
  auto d = policy::decide(s, o, st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::tails);
  EXPECT_TRUE(d->request.mesh);
  EXPECT_TRUE(d->request.evacuate);
  // Tails using 1.9 MiB (1 slot left) and 1 MiB: one match is below min_reclaim_pages (2).
  o = obs(3 * kSec, 10000, 100, classes());
  o.open_tails = {1945u << 10, 1u << 20};
  EXPECT_EQ(policy::plan_tails(o.classes, o.open_tails).pages_freed, 1u);
  EXPECT_FALSE(policy::decide(s, o, st));
  // Evacuation off: no tails trigger.
  s.evacuate = false;
  o = obs(4 * kSec, 15000, 100, classes());
  o.open_tails = {300u << 10, 900u << 10};
  EXPECT_FALSE(policy::decide(s, o, st));
}

// `pages` pages of 64 KiB objects holding 12 objects each, among 40 full pages of 4 KiB objects
// (so the slab pages' fragmentation stays under the threshold), and `tails` open tails using 1 MiB:
// each tail takes one of the 64 KiB pages (16 slots left), so the tails free min(pages, tails).
Observation tails_obs(std::uint64_t t, std::uint64_t allocs, std::size_t pages, std::size_t tails) {
  Observation o = obs(t, allocs, 100,
                      {cls64k(std::vector<std::uint32_t>(pages, 12)),
                       ClassOccupancy{4096, 512, std::vector<std::uint32_t>(40, 512)}});
  o.open_tails.assign(tails, 1u << 20);
  return o;
}

TEST(PolicyEngine, TailsWaitUntilTheyFreeTailsMinPages) {
  auto s = busy_settings();
  s.tails_min_pages = 4;
  policy::EngineState st;
  (void)policy::decide(s, tails_obs(1 * kSec, 0, 0, 0), st);
  // Three pages could go (above min_reclaim_pages, under tails_min_pages): no cycle.
  auto o = tails_obs(2 * kSec, 5000, 3, 3);
  ASSERT_EQ(policy::plan_tails(o.classes, o.open_tails).pages_freed, 3u);
  EXPECT_FALSE(policy::decide(s, o, st));
  // Four: a tails cycle.
  auto d = policy::decide(s, tails_obs(3 * kSec, 10000, 4, 4), st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::tails);
  EXPECT_EQ(d->plan.pages_freed, 4u);
  // Draining: the cycle left two (its budget, or new tails); they go now, at min_reclaim_pages.
  d = policy::decide(s, tails_obs(3 * kSec + 1000, 10001, 2, 2), st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::tails);
  // One left: below min_reclaim_pages, draining ends; three again wait for the fourth.
  EXPECT_FALSE(policy::decide(s, tails_obs(4 * kSec, 15000, 1, 1), st));
  EXPECT_FALSE(policy::decide(s, tails_obs(5 * kSec, 20000, 3, 3), st));
  EXPECT_TRUE(policy::decide(s, tails_obs(6 * kSec, 25000, 5, 5), st));
}

// Fragmentation over the threshold that no plan can lower (no page can be emptied into the
// others) used to let the tails run at min_reclaim_pages on every observation: it keeps to the
// hysteresis too. A low reserve takes them at once.
TEST(PolicyEngine, TailsKeepTheirHysteresisUnderFragmentationNoPlanHelps) {
  auto s = busy_settings();
  s.tails_min_pages = 4;
  policy::EngineState st;
  (void)policy::decide(s, tails_obs(1 * kSec, 0, 0, 0), st);
  // Three pages of 12/32 and nothing else of the class: 62% fragmentation of the 64 KiB pages,
  // but the sparsest page's 12 objects find 40 free slots in the other two, the second's none.
  auto frag = [](std::uint64_t t, std::uint64_t allocs, std::uint64_t free_pages) {
    Observation o = obs(t, allocs, free_pages, {cls64k({12, 12, 12})});
    o.open_tails.assign(3, 1u << 20);
    return o;
  };
  auto o = frag(2 * kSec, 5000, 100);
  ASSERT_GT(policy::slab_fragmentation(o.classes), s.fragmentation_threshold);
  ASSERT_LT(policy::plan_levels(o.classes, {s.max_occupancy})[0].pages_freed, s.min_reclaim_pages);
  ASSERT_EQ(policy::plan_tails(o.classes, o.open_tails).pages_freed, 3u);
  EXPECT_FALSE(policy::decide(s, o, st));
  // The reserve runs low: the tails go at min_reclaim_pages.
  auto d = policy::decide(s, frag(3 * kSec, 10000, 2), st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::tails);
}

TEST(PolicyEngine, TailsMinFractionScalesWithTheHeldPages) {
  auto s = busy_settings();
  s.tails_min_fraction = 0.01;
  s.tails_min_pages = s.min_reclaim_pages;  // the fraction alone
  policy::EngineState st;
  (void)policy::decide(s, tails_obs(1 * kSec, 0, 0, 0), st);
  // 500 pages held (plus a reserve of 100, not counted): 1% is 5 pages.
  auto o = tails_obs(2 * kSec, 5000, 4, 4);
  o.mapped_bytes = 600 * kPageBytes;
  o.reserve_bytes = 100 * kPageBytes;
  o.live_bytes = 590 * kPageBytes;  // under the fragmentation threshold
  EXPECT_EQ(policy::tails_start_pages(s, o), 5u);
  EXPECT_FALSE(policy::decide(s, o, st));
  o = tails_obs(3 * kSec, 10000, 5, 5);
  o.mapped_bytes = 600 * kPageBytes;
  o.reserve_bytes = 100 * kPageBytes;
  o.live_bytes = 590 * kPageBytes;
  auto d = policy::decide(s, o, st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::tails);
  // min_reclaim_pages stays the floor on a small heap.
  o.mapped_bytes = 10 * kPageBytes;
  o.reserve_bytes = 0;
  EXPECT_EQ(policy::tails_start_pages(s, o), s.min_reclaim_pages);
}

TEST(PolicyEngine, TailsCyclesStartNoSoonerThanTailsInterval) {
  auto s = busy_settings();
  s.tails_interval_ms = 100;
  s.tails_min_pages = 3;
  policy::EngineState st;
  constexpr std::uint64_t kMs = 1'000'000;
  (void)policy::decide(s, tails_obs(1 * kSec, 0, 0, 0), st);
  ASSERT_TRUE(policy::decide(s, tails_obs(2 * kSec, 5000, 3, 3), st));
  // The tails drained (one left), then three more 50 ms after the start: too soon.
  EXPECT_FALSE(policy::decide(s, tails_obs(2 * kSec + 10 * kMs, 5050, 1, 1), st));
  EXPECT_FALSE(policy::decide(s, tails_obs(2 * kSec + 50 * kMs, 5200, 3, 3), st));
  EXPECT_FALSE(policy::decide(s, tails_obs(2 * kSec + 99 * kMs, 5400, 3, 3), st));
  // 100 ms after the last start: a new one.
  auto d = policy::decide(s, tails_obs(2 * kSec + 100 * kMs, 5600, 3, 3), st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::tails);
  // Draining within the interval goes on: two left right after.
  EXPECT_TRUE(policy::decide(s, tails_obs(2 * kSec + 101 * kMs, 5610, 2, 2), st));
}

TEST(PolicyEngine, TailsCyclesDrainWhileTheyGiveBackPages) {
  auto s = busy_settings();
  s.tails_min_pages = 4;
  policy::EngineState st;
  (void)policy::decide(s, tails_obs(1 * kSec, 0, 0, 0), st);
  ASSERT_TRUE(policy::decide(s, tails_obs(2 * kSec, 5000, 4, 4), st));
  // The cycle gave a page back: the three left go on.
  CompactionRecord r;
  r.trigger = CompactionTrigger::tails;
  r.pages_freed = 1;
  policy::account(st, r);
  ASSERT_TRUE(policy::decide(s, tails_obs(2 * kSec + 1000, 5001, 3, 3), st));
  // That one gave none (meshing took its tails, say): the same three wait for a fourth.
  r.pages_freed = 0;
  policy::account(st, r);
  EXPECT_FALSE(policy::decide(s, tails_obs(2 * kSec + 2000, 5002, 3, 3), st));
}

TEST(PolicyEngine, TailsRunOnTheBackgroundThreadWithTheirWholePlan) {
  auto s = busy_settings();
  s.max_pause_us = 100;  // 100 KB at the assumed 1 GB/s: below one page, so one page's worth
  s.tails_min_pages = 6;
  policy::EngineState st;
  (void)policy::decide(s, tails_obs(1 * kSec, 0, 0, 0), st);
  const auto o = tails_obs(2 * kSec, 5000, 6, 6);
  const auto plan = policy::plan_tails(o.classes, o.open_tails);
  ASSERT_EQ(plan.bytes_moved, 6u * 12 * 65536);
  // A safepoint with the background thread on leaves them to it.
  policy::EngineState at_safepoint = st;
  EXPECT_FALSE(policy::decide(s, o, at_safepoint, /*safepoint=*/true));
  // The background thread: the pause budget (one page's worth) plus the plan's bytes.
  auto d = policy::decide(s, o, st);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::tails);
  EXPECT_EQ(d->request.max_bytes, kPageBytes + plan.bytes_moved);
  // With the background thread off, a safepoint takes them, within the pause budget.
  s.background = false;
  d = policy::decide(s, tails_obs(3 * kSec, 10000, 6, 6), at_safepoint, /*safepoint=*/true);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trigger, CompactionTrigger::tails);
  EXPECT_EQ(d->request.max_bytes, kPageBytes);
}

TEST(PolicySettings, TailsKeysValidateTheirValues) {
  PolicySettings s;
  EXPECT_TRUE(set_policy_value(s, "tails_min_pages", "6").ok());
  EXPECT_EQ(s.tails_min_pages, 6u);
  EXPECT_EQ(set_policy_value(s, "tails_min_pages", "0").code(), Errc::invalid_argument);
  EXPECT_TRUE(set_policy_value(s, "tails_min_fraction", "0.002").ok());
  EXPECT_DOUBLE_EQ(s.tails_min_fraction, 0.002);
  EXPECT_EQ(set_policy_value(s, "tails_min_fraction", "2").code(), Errc::invalid_argument);
  EXPECT_TRUE(set_policy_value(s, "tails_interval_ms", "0").ok());
  EXPECT_EQ(s.tails_interval_ms, 0u);
  EXPECT_EQ(set_policy_value(s, "tails_interval_ms", "70000").code(), Errc::invalid_argument);
  EXPECT_EQ(policy_values(s).at("tails_min_fraction"), "0.002");
}

TEST(PolicySettings, KeysValidateTheirValues) {
  PolicySettings s;
  EXPECT_TRUE(set_policy_value(s, "fragmentation_threshold", "0.3").ok());
  EXPECT_DOUBLE_EQ(s.fragmentation_threshold, 0.3);
  EXPECT_EQ(set_policy_value(s, "fragmentation_threshold", "1.5").code(), Errc::invalid_argument);
  EXPECT_EQ(set_policy_value(s, "interval_ms", "-4").code(), Errc::invalid_argument);
  EXPECT_EQ(set_policy_value(s, "interval_ms", "ten").code(), Errc::invalid_argument);
  EXPECT_TRUE(set_policy_value(s, "background", "off").ok());
  EXPECT_FALSE(s.background);
  auto unknown = set_policy_value(s, "no_such_key", "1");
  ASSERT_EQ(unknown.code(), Errc::invalid_argument);
  EXPECT_NE(unknown.error().message.find("max_bytes_per_second"), std::string::npos) << "lists the valid keys";
  EXPECT_EQ(policy_values(s).size(), policy_keys().size());
}

TEST(Compactor, BackgroundCyclesDefragmentALiveHeap) {
  auto heap = make_heap();
  PolicySettings s;
  s.interval_ms = 5;
  s.idle_allocs_per_second = 0;  // only the fragmentation trigger
  auto compactor = Compactor::start(*heap, s);
  ASSERT_TRUE(compactor.ok());
  std::vector<Handle> all, keep;
  std::vector<std::uint64_t> seeds;
  for (int i = 0; i < 32 * 30; ++i) all.push_back(*heap->allocate(64 * 1024));
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % 6 == 0) {
      keep.push_back(all[i]);
      seeds.push_back(std::uint64_t(i) * 7 + 1);
      fill(*heap, all[i], seeds.back());
    } else {
      ASSERT_TRUE(heap->free(all[i]).ok());
    }
  }
  for (int i = 0; i < 400 && heap->stats().pages.slab > 10; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_GT((*compactor)->counters().fragmentation, 0u);
  // Cycles mesh first, within the same byte budget: with the first cycles held to the pause
  // budget (one page's worth), meshing alone may get the pages down, without moving an object.
  const auto totals = heap->stats().compaction;
  EXPECT_GT(totals.objects_moved + totals.pages_meshed, 0u);
  EXPECT_LE(heap->stats().pages.slab, 10u);
  (*compactor)->stop();
  EXPECT_VALID(*heap);
  for (std::size_t k = 0; k < keep.size(); ++k) EXPECT_EQ(mismatches(*heap, keep[k], seeds[k]), 0u);
}

TEST(Compactor, ExplicitRequestsWaitForTheirRecordAndPolicyChangesTakeEffect) {
  auto heap = make_heap();
  PolicySettings s;
  s.background = false;
  auto compactor = std::move(Compactor::start(*heap, s)).value();
  std::vector<Handle> all;
  for (int i = 0; i < 32 * 8; ++i) all.push_back(*heap->allocate(64 * 1024));
  for (std::size_t i = 0; i < all.size(); ++i)
    if (i % 4) {
      ASSERT_TRUE(heap->free(all[i]).ok());
    }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(heap->stats().compaction.cycles, 0u) << "background off: nothing runs on its own";
  auto rec = compactor->request(CompactRequest{}, /*wait=*/true);
  ASSERT_TRUE(rec.ok());
  EXPECT_GT(rec->objects_moved, 0u);
  EXPECT_EQ(compactor->counters().explicit_requests, 1u);
  ASSERT_TRUE(compactor->set("background", "true").ok());
  EXPECT_TRUE(compactor->settings().background);
  EXPECT_EQ(compactor->set("max_occupancy", "2").code(), Errc::invalid_argument);
  compactor->stop();
  EXPECT_EQ(compactor->request(CompactRequest{}, true).code(), Errc::shut_down);
  EXPECT_VALID(*heap);
}

// safepoint(): a cycle in the caller's thread when a trigger holds, none otherwise, bounded by
// the pause budget.
TEST(Compactor, SafepointRunsACycleOnlyWhenATriggerHolds) {
  auto heap = make_heap();
  PolicySettings s;
  s.background = false;          // only safepoints decide
  s.idle_allocs_per_second = 0;  // no idle trigger: fragmentation (or failures) only
  auto compactor = std::move(Compactor::start(*heap, s)).value();
  std::vector<Handle> all;
  for (int i = 0; i < 32 * 8; ++i) all.push_back(*heap->allocate(64 * 1024));  // 8 full pages

  // Dense pages, plenty of free memory: no trigger, no cycle.
  auto quiet = compactor->safepoint();
  ASSERT_TRUE(quiet.ok()) << quiet.error().to_string();
  EXPECT_FALSE(*quiet);
  EXPECT_EQ(heap->stats().compaction.cycles, 0u);

  // Three objects of four freed: 75% of the slab pages is free, over the 10% threshold.
  std::vector<Handle> keep;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % 4 == 0) {
      keep.push_back(all[i]);
      fill(*heap, all[i], seed_of(all[i]));
    } else {
      ASSERT_TRUE(heap->free(all[i]).ok());
    }
  }
  auto ran = compactor->safepoint();
  ASSERT_TRUE(ran.ok()) << ran.error().to_string();
  ASSERT_TRUE(*ran) << "fragmentation over the threshold: the safepoint runs a cycle";
  EXPECT_EQ((*ran)->trigger, CompactionTrigger::safepoint);
  EXPECT_GT((*ran)->objects_moved + (*ran)->pages_meshed, 0u);
  EXPECT_GT((*ran)->pages_freed + (*ran)->pages_meshed, 0u) << "moved " << (*ran)->objects_moved << " objects, " << (*ran)->bytes_moved << " B; meshed " << (*ran)->pages_meshed << " pages, " << (*ran)->bytes_meshed << " B; freed " << (*ran)->pages_freed << " pages";
  // No cycle has measured the copy speed yet: 1000 us at an assumed 1 GB/s, floored at a page.
  EXPECT_LE((*ran)->bytes_moved + (*ran)->bytes_meshed, 2 * kMiB) << "bounded by the pause budget";
  EXPECT_EQ(heap->stats().compaction.cycles, 1u) << "synchronous: done when safepoint() returns";

  // Safepoints go on until the pages are dense again, then run nothing.
  std::uint64_t quiet_calls = 1;
  for (int i = 0; i < 16; ++i) {
    auto more = compactor->safepoint();
    ASSERT_TRUE(more.ok());
    if (!*more) {
      ++quiet_calls;
      break;
    }
  }
  const auto cycles = heap->stats().compaction.cycles;
  auto after = compactor->safepoint();
  ASSERT_TRUE(after.ok());
  ++quiet_calls;
  EXPECT_FALSE(*after) << "dense again: nothing worth a cycle";
  EXPECT_EQ(heap->stats().compaction.cycles, cycles);
  EXPECT_LE(heap->stats().pages.slab, 3u) << "64 objects of 64 KiB fill 2 pages";

  const auto c = compactor->counters();
  EXPECT_EQ(c.safepoint_calls, c.safepoint_cycles + quiet_calls) << "every other call ran a cycle";
  EXPECT_EQ(c.safepoints, c.safepoint_cycles);
  EXPECT_EQ(c.cycles, c.safepoint_cycles);
  compactor->stop();
  EXPECT_EQ(compactor->safepoint().code(), Errc::shut_down);
  EXPECT_VALID(*heap);
  for (Handle h : keep) EXPECT_EQ(mismatches(*heap, h, seed_of(h)), 0u);
}

// A safepoint never waits for a cycle that is already running elsewhere.
TEST(Compactor, SafepointDoesNotWaitForARunningCycle) {
  auto heap = make_heap();
  auto& host = static_cast<BackendModel<HostBackend>&>(heap->backend()).impl();
  PolicySettings s;
  s.background = false;
  s.idle_allocs_per_second = 0;
  s.fragmentation_threshold = 0.99;  // the safepoints themselves find nothing to do
  auto compactor = std::move(Compactor::start(*heap, s)).value();
  std::vector<Handle> all;
  for (int i = 0; i < 32 * 8; ++i) all.push_back(*heap->allocate(64 * 1024));
  for (std::size_t i = 0; i < all.size(); ++i)
    if (i % 4) {
      ASSERT_TRUE(heap->free(all[i]).ok());
    }
  const auto delay = std::chrono::milliseconds(300);
  host.set_task_delay(delay);  // the requested cycle's copy takes that long
  ASSERT_TRUE(compactor->request(CompactRequest{}, /*wait=*/false).ok());
  bool saw_busy = false;
  for (int i = 0; i < 2000 && !saw_busy; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = compactor->safepoint();
    const auto took = std::chrono::steady_clock::now() - t0;
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(*r);
    saw_busy = compactor->counters().safepoint_busy > 0;
    if (saw_busy) {
      EXPECT_LT(took, delay / 2) << "a busy safepoint returns at once";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(saw_busy) << "the requested cycle was never seen running";
  host.set_task_delay(std::chrono::microseconds(0));
  compactor->stop();
  EXPECT_GE(compactor->counters().explicit_requests, 1u);
  EXPECT_EQ(compactor->counters().safepoint_cycles, 0u);
  EXPECT_VALID(*heap);
}

TEST(Compactor, StopsCleanlyMidCycleUnderLoad) {
  auto heap = make_heap(host_config(512 * kMiB));
  auto& host = static_cast<BackendModel<HostBackend>&>(heap->backend()).impl();
  host.set_task_delay(std::chrono::milliseconds(20));  // cycles last a while
  PolicySettings s;
  s.interval_ms = 1;
  s.idle_allocs_per_second = 1e9;  // always idle: cycle whenever something is reclaimable
  s.min_reclaim_pages = 1;
  std::vector<Handle> all;
  for (int i = 0; i < 32 * 20; ++i) all.push_back(*heap->allocate(64 * 1024));
  for (std::size_t i = 0; i < all.size(); ++i)
    if (i % 3) {
      ASSERT_TRUE(heap->free(all[i]).ok());
    }
  auto compactor = std::move(Compactor::start(*heap, s)).value();
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  compactor.reset();  // stops mid-cycle: the running cycle finishes its moves
  host.set_task_delay(std::chrono::microseconds(0));
  EXPECT_VALID(*heap);
  for (std::size_t i = 0; i < all.size(); i += 3) EXPECT_TRUE(heap->pin(all[i]).ok());
  ASSERT_TRUE(heap->shutdown().ok());
  EXPECT_EQ(host.pages_in_use(), 0u);
}

}  // namespace
}  // namespace valet::test
