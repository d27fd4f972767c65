// The reserve's budget and provisioning ahead of demand: the page pool's provision batch (its
// bookkeeping checked by validate() while the batch is in flight and after), the keeper's
// targets, and the heap's allocation path making no driver call once the keeper has provisioned.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "heap_core.h"
#include "heap_test_util.h"
#include "page_pool.h"
#include "reserve_keeper.h"
#include "valet/runtime.h"

namespace valet::detail {
namespace {

TEST(ProvisionBatch, ExtendsTheLongestRunWithIdleNewAndMovedPagesAndValidatesInFlight) {
  auto backend = test::open_host_backend(128u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 64);
  ASSERT_TRUE(pool.init(256).ok());
  // Reserve runs of 2, 1 and 3 pages with used slots between them; free slots after the last.
  auto b = pool.take_run(2, 3), gap1 = pool.take_run(1, 2), c = pool.take_run(1, 5), gap2 = pool.take_run(1, 4),
       a = pool.take_run(3, 1);
  ASSERT_TRUE(a.ok() && gap1.ok() && b.ok() && gap2.ok() && c.ok());
  pool.give_back(*a, 3);
  pool.give_back(*b, 2);
  pool.give_back(*c, 1);
  ASSERT_EQ(pool.longest_reserve_run(), 3u);
  const std::size_t created = pool.created_pages();
  // 10 pages: at most 4 new ones, the rest moved from the shorter runs.
  auto batch = pool.begin_provision(10, 4, 64);
  ASSERT_FALSE(batch.empty());
  EXPECT_TRUE(pool.batch_in_flight());
  EXPECT_TRUE(pool.validate().ok()) << pool.validate().error().to_string();
  EXPECT_EQ(pool.created_pages(), created + 4);
  pool.provision_calls(batch);
  const std::uint32_t length = batch.length, dest = batch.dest;
  EXPECT_EQ(batch.mapped, length);
  pool.finish_provision(batch);
  EXPECT_FALSE(pool.batch_in_flight());
  ASSERT_TRUE(pool.validate().ok()) << pool.validate().error().to_string();
  EXPECT_GE(pool.longest_reserve_run(), 3u + length);
  EXPECT_EQ(pool.created_pages(), created + 4);
  EXPECT_EQ(pool.used_pages(), 2u);  // the two gap pages
  // The provisioned run is mapped and accessible: a large object taking it holds its bytes.
  auto run = pool.take_run(3 + length, 9);
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(*run + 3, dest);
  EXPECT_TRUE(test::pattern_holds(*backend, pool, *run, 3 + length, 7));
  pool.give_back(*run, 3 + length);
  pool.give_back(*gap1, 1);
  pool.give_back(*gap2, 1);
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

TEST(ProvisionBatch, NothingWorthDoingGivesAnEmptyBatchAndChangesNothing) {
  auto backend = test::open_host_backend(64u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 32);
  ASSERT_TRUE(pool.init(128).ok());
  auto a = pool.take_run(5, 1);
  ASSERT_TRUE(a.ok());
  pool.give_back(*a, 5);
  // Already long enough; and nothing may be created while no other run exists.
  EXPECT_TRUE(pool.begin_provision(5, 10, 64).empty());
  EXPECT_TRUE(pool.begin_provision(8, 0, 64).empty());
  EXPECT_FALSE(pool.batch_in_flight());
  EXPECT_EQ(pool.reserve_pages(), 5u);
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

TEST(ReserveKeeper, KeepsFreedRunsWithinTheBudgetAndAFrontierWithinHalfOfIt) {
  auto backend = test::open_host_backend(512u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 256);
  ASSERT_TRUE(pool.init(2048).ok());
  HeapMutex mu;
  Config config;
  config.reserve_low_pages = 2;
  config.reserve_high_pages = 4;
  config.reserve_fraction = 0.3;
  config.reserve_peak_ratio = 2.0;
  std::int64_t live_bytes = 100 * kPageBytes;  // 30 reserve pages allowed by the live bytes
  Demand demand{std::uint64_t(60) * 1'000'000'000};
  ReserveKeeper keeper(mu, pool, config, live_bytes, demand, nullptr);
  auto read = [&](auto f) {
    std::lock_guard lock(mu);
    return f();
  };
  {
    std::lock_guard lock(mu);
    demand.live_peak.note(live_bytes, now_ns());  // at the peak: the ratio allows 100 pages more
    demand.large_pages.note(12, now_ns());
    const ReserveTargets t = keeper.targets();
    EXPECT_EQ(t.limit, 30u);
    EXPECT_EQ(t.frontier, 15u);  // half the limit, under twice the request
  }
  keeper.start();
  read([&] {
    keeper.want_refill();
    return 0;
  });
  for (int i = 0; i < 1000 && read([&] { return pool.longest_reserve_run(); }) < 15; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_GE(read([&] { return pool.longest_reserve_run(); }), 15u) << "the keeper did not provision the frontier";
  // 60 pages freed at once: kept up to the budget, the frontier kept, the rest given back.
  read([&] {
    auto run = pool.take_run(60, 1);
    EXPECT_TRUE(run.ok());
    if (run.ok()) pool.give_back(*run, 60);
    keeper.after_release();
    return 0;
  });
  for (int i = 0; i < 1000 && read([&] { return pool.reserve_pages(); }) > 30 + 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  keeper.stop();
  std::lock_guard lock(mu);
  EXPECT_LE(pool.reserve_pages(), 30u + 3u) << "the keeper did not trim to its limit";
  EXPECT_GE(pool.reserve_pages(), 15u) << "the keeper trimmed below its frontier";
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

// Waits (at most 5 s) until the keeper has met its targets: the frontier is ready and no batch
// is in flight.
void settle(Heap& h) {
  auto& c = HeapInternals::of(h);
  for (int i = 0; i < 5000; ++i) {
    {
      std::lock_guard lock(c.mu);
      if (!c.pool.batch_in_flight() && c.pool.longest_reserve_run() >= c.keeper.targets().frontier) return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

TEST(ReserveKeeper, SteadyStateLargeAllocationsMakeNoDriverCall) {
  Config config;
  config.capacity = 1u << 30;
  // Room for the longest request (10 pages) twice over: 25% of ~160 live pages, and a peak
  // ratio that allows it.
  config.reserve_fraction = 0.25;
  config.reserve_peak_ratio = 1.5;
  auto heap = test::make_heap(config);
  ASSERT_TRUE(heap);
  Heap& h = *heap;
  // A live set, then a churn of large objects of changing sizes; the keeper gets its time.
  std::vector<Handle> live;
  for (int i = 0; i < 40; ++i) live.push_back(*h.allocate((3 + i % 5) * kPageBytes));
  std::uint64_t alloc_calls = 0, free_maps = 0;
  for (int i = 0; i < 600; ++i) {
    const std::size_t k = std::size_t(i) % live.size();
    {
      ThreadDriverCalls scope(h.driver_calls());
      ASSERT_TRUE(h.free(live[k]).ok());
      // A free may give back what exceeds the budget; it never maps.
      if (i >= 300) free_maps += scope.made()[DriverOp::map] + scope.made()[DriverOp::create_page];
    }
    ThreadDriverCalls scope(h.driver_calls());
    auto fresh = h.allocate((2 + (i * 7) % 9) * kPageBytes - 4096);
    ASSERT_TRUE(fresh.ok()) << fresh.error().to_string();
    if (i >= 300) alloc_calls += scope.made().total();
    live[k] = *fresh;
    // The keeper's turn between requests (a service's pace), waited for so the test does not
    // depend on the machine's speed.
    settle(h);
  }
  EXPECT_EQ(alloc_calls, 0u) << "driver calls on the allocating thread in 300 steady-state allocations";
  EXPECT_EQ(free_maps, 0u);
  EXPECT_TRUE(h.validate().ok());
  const auto s = h.stats();
  // Mapped memory stays within the budget (live pages, their tails, the reserve's limit, and the
  // trim's hysteresis of an eighth of it).
  EXPECT_LE(double(s.mapped_bytes), (1 + 0.25 * 1.125) * double(s.live_bytes) + 48.0 * kPageBytes);
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

TEST(Demand, ARequestOfMoreThanAnEighthOfThePagesInUseIsNotOrdinary) {
  EXPECT_TRUE(Demand::ordinary(Demand::kOrdinaryPages, 0));  // the floor, whatever is in use
  EXPECT_FALSE(Demand::ordinary(Demand::kOrdinaryPages + 1, 0));
  EXPECT_TRUE(Demand::ordinary(400, 3200));
  EXPECT_FALSE(Demand::ordinary(401, 3200));
}

TEST(ReserveKeeper, ARequestOfMostOfTheHeapIsNotDemandItsPagesGoBackAtItsFree) {
  Config config;
  config.capacity = 1u << 30;  // 512 pages
  auto heap = test::make_heap(config);
  ASSERT_TRUE(heap);
  Heap& h = *heap;
  std::vector<Handle> live;
  for (int i = 0; i < 40; ++i) live.push_back(*h.allocate(4 * kPageBytes - 4096));
  // 200 pages at once (more than an eighth of the ~160 in use: not ordinary demand, as a
  // benchmark's probe), freed at once: the free gives its pages back on its own thread rather
  // than leave them to the keeper, and the recent peak of pages in use does not include them.
  auto probe = h.allocate(200 * kPageBytes);
  ASSERT_TRUE(probe.ok()) << probe.error().to_string();
  ASSERT_TRUE(h.free(*probe).ok());
  const auto s = h.stats();
  EXPECT_LE(s.reserve_bytes, 32 * kPageBytes) << "the probe's pages stayed mapped after its free";
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

// A free's surplus over the reserve's limit: up to the peak bound (the ceiling) it is the
// keeper's (the freeing thread makes no driver call); beyond the bound the freeing thread gives
// back what exceeds it at once, and the keeper the rest.
struct BudgetReading {
  std::size_t limit, ceiling, reserve;
  bool in_flight;
};

BudgetReading read_budget(HeapCore& c) {
  std::lock_guard lock(c.mu);
  const ReserveTargets t = c.keeper.targets();
  return BudgetReading{t.limit, t.ceiling, c.pool.reserve_pages(), c.pool.batch_in_flight()};
}

// Within the keeper's hysteresis over its limit (ReserveKeeper::keep's slack).
bool near_limit(const BudgetReading& r) { return r.reserve <= r.limit + std::max<std::size_t>(2, r.limit / 8); }

// Waits (at most 5 s) until the keeper has trimmed to its limit (and its hysteresis).
BudgetReading trimmed_budget(HeapCore& c) {
  for (int i = 0; i < 5000; ++i) {
    const BudgetReading r = read_budget(c);
    if (!r.in_flight && near_limit(r)) return r;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return read_budget(c);
}

// Once the keeper has settled and trimmed to its limit, frees `x`: whether the free succeeded,
// the driver calls it made on the freeing thread, and the budget right after it.
struct FreeOutcome {
  bool freed;
  DriverCallCounts calls;
  BudgetReading after;
};
FreeOutcome free_once_trimmed(Heap& h, Handle x) {
  auto& c = HeapInternals::of(h);
  settle(h);
  (void)trimmed_budget(c);
  ThreadDriverCalls scope(h.driver_calls());
  const bool freed = h.free(x).ok();
  return {freed, scope.made(), read_budget(c)};
}

Config budget_config(double peak_ratio) {
  Config config;
  config.capacity = 1u << 30;  // 512 pages
  config.reserve_fraction = 0.05;
  config.reserve_peak_ratio = peak_ratio;
  // The page reserve's rule: no chunks (a free of a chunked object gives the chunk back on its
  // own thread: tests/unit/chunk_test.cpp).
  config.chunk_min_pages = 0;
  return config;
}

// ~200 live pages in whole 4-page objects (no tails to unshare at a free): ordinary demand.
std::vector<Handle> allocate_live(Heap& h) {
  std::vector<Handle> live;
  for (int i = 0; i < 50; ++i) live.push_back(*h.allocate(4 * kPageBytes));
  return live;
}

TEST(ReserveKeeper, AFreeLeavesTheSurplusWithinThePeakBoundToTheKeeper) {
  auto heap = test::make_heap(budget_config(2.3));
  ASSERT_TRUE(heap);
  Heap& h = *heap;
  auto& c = HeapInternals::of(h);
  // Beside the live pages, a 30-page object and a 120-page one (neither ordinary demand: over
  // an eighth of the pages in use).
  const std::vector<Handle> live = allocate_live(h);
  auto mid = h.allocate(30 * kPageBytes);
  auto big = h.allocate(120 * kPageBytes);
  ASSERT_TRUE(mid.ok() && big.ok());
  settle(h);
  const BudgetReading before = trimmed_budget(c);
  ASSERT_GT(before.ceiling, before.limit + 30 + 8) << "the test's budget leaves no room for its case";
  for (const Handle x : {*mid, *big}) {
    ThreadDriverCalls scope(h.driver_calls());
    ASSERT_TRUE(h.free(x).ok());
    const BudgetReading after = read_budget(c);
    EXPECT_EQ(scope.made().total(), 0u) << "a free within the peak bound made driver calls";
    EXPECT_GT(after.reserve, after.limit) << "the free returned no surplus (the test's case is gone)";
    EXPECT_LE(after.reserve, after.ceiling);
  }
  const BudgetReading settled = trimmed_budget(c);
  EXPECT_TRUE(near_limit(settled)) << "the keeper did not trim it" << " (reserve " << settled.reserve << ", limit " << settled.limit << ")";
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

TEST(ReserveKeeper, AFreeTrimsWhatLiesBeyondThePeakBoundOnItsOwnThread) {
  // A peak ratio of 1: the bound is the recent peak of ordinary live bytes (~200 pages). The
  // 120-page object is no ordinary demand, so freeing it leaves the reserve far beyond the bound.
  auto heap = test::make_heap(budget_config(1.0));
  ASSERT_TRUE(heap);
  Heap& h = *heap;
  auto& c = HeapInternals::of(h);
  const std::vector<Handle> live = allocate_live(h);
  auto big = h.allocate(120 * kPageBytes);
  ASSERT_TRUE(big.ok());
  const FreeOutcome out = free_once_trimmed(h, *big);
  ASSERT_TRUE(out.freed);
  EXPECT_GT(out.calls[DriverOp::release_page], 0u) << "a free far beyond the peak bound left it all to the keeper";
  EXPECT_EQ(out.calls[DriverOp::map] + out.calls[DriverOp::create_page], 0u);
  EXPECT_LE(out.after.reserve, out.after.ceiling) << "the free left more than the peak bound mapped";
  const BudgetReading settled = trimmed_budget(c);
  EXPECT_TRUE(near_limit(settled)) << "the keeper did not trim the rest" << " (reserve " << settled.reserve << ", limit " << settled.limit << ")";
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

// With background misses a free leaves the keeper a surplus a little beyond the peak bound too
// (a slack of half a percent, at least 8 pages), so that the caller makes no call; beyond the
// slack the freeing thread trims as before. Without background misses the same free trims.
TEST(ReserveKeeper, WithBackgroundMissesAFreeLeavesASmallSurplusBeyondTheBoundToTheKeeper) {
  for (const bool background : {false, true}) {
    SCOPED_TRACE(background ? "background misses" : "synchronous misses");
    // The bound: 1.15 x the ~200 ordinary live pages, 30 pages over them.
    Config config = budget_config(1.15);
    config.background_misses = background;
    config.reserve_low_pages = 0;
    config.reserve_high_pages = 0;
    auto heap = test::make_heap(config);
    ASSERT_TRUE(heap);
    Heap& h = *heap;
    auto& c = HeapInternals::of(h);
    const std::vector<Handle> live = allocate_live(h);
    // 34 pages (no ordinary demand: more than 32 and than an eighth of the pages in use): its
    // free leaves the reserve 4-6 pages beyond the bound.
    auto near = h.allocate(34 * kPageBytes);
    ASSERT_TRUE(near.ok());
    const FreeOutcome within = free_once_trimmed(h, *near);
    ASSERT_TRUE(within.freed);
    if (background) {
      EXPECT_EQ(within.calls.total(), 0u) << "a free within the slack made driver calls";
      EXPECT_GT(within.after.reserve, within.after.ceiling) << "the free left nothing beyond the bound (the test's case is gone)";
      EXPECT_LE(within.after.reserve, within.after.ceiling + 8);
    } else {
      EXPECT_GT(within.calls[DriverOp::release_page], 0u) << "the free left the keeper a surplus beyond the bound";
      EXPECT_LE(within.after.reserve, within.after.ceiling);
    }
    EXPECT_TRUE(near_limit(trimmed_budget(c))) << "the keeper did not trim the surplus";
    // Far beyond the bound the freeing thread trims down to it, background misses or not.
    auto far = h.allocate(120 * kPageBytes);
    ASSERT_TRUE(far.ok());
    const FreeOutcome beyond = free_once_trimmed(h, *far);
    ASSERT_TRUE(beyond.freed);
    EXPECT_GT(beyond.calls[DriverOp::release_page], 0u) << "a free far beyond the bound left it all to the keeper";
    EXPECT_LE(beyond.after.reserve, beyond.after.ceiling);
    EXPECT_TRUE(h.validate().ok());
    for (auto x : live) EXPECT_TRUE(h.free(x).ok());
  }
}

}  // namespace
}  // namespace valet::detail
