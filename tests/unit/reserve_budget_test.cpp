// The reserve's budget and provisioning ahead of demand: the page pool's provision batch (its
// bookkeeping checked by validate() while the batch is in flight and after), the keeper's
// targets, and the heap's allocation path making no driver call once the keeper has provisioned.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "faulty_pool.h"
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

// While pages are promised to queued misses, the keeper keeps as many whole free chunk pages as
// are promised (the misses may take them where they lie) and releases the rest, the largest
// first; with no promise, every free chunk.
TEST(ReserveKeeper, FreeChunksBeyondThePromisedPagesGoAndTheRestWaitForTheMisses) {
  auto backend = test::open_host_backend(512u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 256);
  ASSERT_TRUE(pool.init(2048).ok());
  pool.set_chunk_min_pages(4);
  HeapMutex mu;
  Config config;
  std::int64_t live_bytes = 0;
  Demand demand{std::uint64_t(60) * 1'000'000'000};
  ReserveKeeper keeper(mu, pool, config, live_bytes, demand, nullptr);
  std::lock_guard lock(mu);
  const test::TwoFreeChunks f = test::two_free_chunks(pool);
  ASSERT_EQ(pool.whole_free_chunk_pages(), 14u);
  EXPECT_EQ(keeper.free_chunk_pages_due(), PagePool::kAllFreeChunks) << "no miss queued: every free chunk";
  ASSERT_TRUE(pool.promise(20));
  EXPECT_EQ(keeper.free_chunk_pages_due(), 0u) << "the promised pages cover the free chunks";
  pool.unpromise(20);
  ASSERT_TRUE(pool.promise(6));
  EXPECT_EQ(keeper.free_chunk_pages_due(), 8u);
  auto batch = pool.begin_release(pool.reserve_pages(), 0, false, keeper.free_chunk_pages_due());
  pool.release_calls(batch);
  ASSERT_TRUE(pool.finish_release(batch).ok());
  EXPECT_EQ(pool.whole_free_chunk_pages(), 5u) << "not the nine-page chunk (the one holding the 8 due) went";
  pool.unpromise(6);
  ASSERT_VALID(pool);
  pool.give_back(f.nine + 9, 1);
  pool.give_back(f.five + 5, 1);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST(ReserveKeeper, KeepsFreedRunsWithinTheBudgetAndAFrontierWithinHalfOfIt) {
  auto backend = test::open_host_backend(512u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 256);
  ASSERT_TRUE(pool.init(2048).ok());
  HeapMutex mu;
  Config config;
  config.background_misses = false;  // the keeper creates the frontier's pages (with the mapper it does not)
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

// Waits (at most 5 s) until the keeper has met its targets: the frontier is ready, no batch is
// in flight and no miss is pending.
void settle(Heap& h) {
  auto& c = HeapInternals::of(h);
  for (int i = 0; i < 5000; ++i) {
    {
      std::lock_guard lock(c.mu);
      // No miss pending either: a queued one placed later would take what a free returns.
      if (!c.pool.batch_in_flight() && c.misses.pending() == 0 && c.pool.longest_reserve_run() >= c.keeper.targets().frontier)
        return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

TEST(ReserveKeeper, SteadyStateLargeAllocationsMakeNoDriverCall) {
  Config config;
  // The keeper alone keeps the calls off the allocating thread here: it creates the frontier's
  // pages ahead and a miss maps on its caller (with the mapper, a miss is pending instead:
  // BackgroundMisses).
  config.background_misses = false;
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

TEST(Demand, AWindowKeepsItsExtremeForOneToTwoHalvesAndThenForgetsIt) {
  WindowMax most(1000);  // halves of 500 ns
  WindowMin least(1000);
  EXPECT_EQ(most.get(0), 0u);
  EXPECT_EQ(least.get(0), ~std::uint64_t{0});
  most.note(7, 100);
  least.note(7, 100);
  most.note(3, 200);
  least.note(3, 200);
  EXPECT_EQ(most.get(300), 7u);
  EXPECT_EQ(least.get(300), 3u);
  EXPECT_EQ(most.get(900), 7u) << "forgotten within the next half";
  EXPECT_EQ(least.get(900), 3u) << "forgotten within the next half";
  most.note(5, 950);
  least.note(5, 950);
  EXPECT_EQ(most.get(1100), 5u) << "kept after two halves";
  EXPECT_EQ(least.get(1100), 5u) << "kept after two halves";
  EXPECT_EQ(most.get(5000), 0u);
  EXPECT_EQ(least.get(5000), ~std::uint64_t{0});
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
  // benchmark's probe), freed at once: the recent peak of pages in use does not include them,
  // so the keeper does not keep them.
  auto probe = h.allocate(200 * kPageBytes);
  ASSERT_TRUE(probe.ok()) << probe.error().to_string();
  ASSERT_TRUE(h.free(*probe).ok());
  // The keeper gives them back (the free leaves them to it).
  for (int i = 0; i < 5000 && h.stats().reserve_bytes > 32 * kPageBytes; ++i)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  EXPECT_LE(h.stats().reserve_bytes, 32 * kPageBytes) << "the probe's pages stayed mapped after its free";
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

// With background misses a free of ordinary demand leaves its surplus over the reserve's limit,
// and a chunk it empties, to the keeper: the freeing thread makes no driver call, however far
// beyond the peak bound the surplus reaches. With synchronous misses, and for a free of no
// ordinary demand (a probe), the freeing thread gives back what lies beyond the bound.
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
  // The keeper is paused until the reading: its trim, woken by the free, would otherwise race
  // the reading of what the free itself left.
  {
    std::lock_guard lock(c.mu);
    c.keeper.pause();
  }
  ThreadDriverCalls scope(h.driver_calls());
  const bool freed = h.free(x).ok();
  FreeOutcome out{freed, scope.made(), read_budget(c)};
  std::lock_guard lock(c.mu);
  c.keeper.resume();
  return out;
}

Config budget_config(double peak_ratio) {
  Config config;
  config.capacity = 1u << 30;  // 512 pages
  config.reserve_fraction = 0.05;
  config.reserve_peak_ratio = peak_ratio;
  config.chunk_min_pages = 0;  // the page reserve's rule (chunks: their own tests below)
  config.background_misses = false;  // a free's trim on its own thread (the mapper's tests set it)
  return config;
}

// `objects` x 4 live pages in whole 4-page objects (no tails to unshare at a free): ordinary
// demand.
std::vector<Handle> allocate_live(Heap& h, int objects = 50) {
  std::vector<Handle> live;
  for (int i = 0; i < objects; ++i) live.push_back(*h.allocate(4 * kPageBytes));
  return live;
}

// Waits (at most 5 s) until no chunk is left; the chunks then.
std::size_t chunks_once_released(Heap& h) {
  for (int i = 0; i < 5000 && h.stats().pages.chunks > 0; ++i) std::this_thread::sleep_for(std::chrono::microseconds(200));
  return h.stats().pages.chunks;
}

TEST(ReserveKeeper, AnOrdinaryFreeLeavesItsSurplusToTheKeeperWithinAndBeyondThePeakBound) {
  // Peak ratios 2.3 (the bound far above the ~400 live pages) and 1.0 (the bound at them), with
  // background misses (no call) and synchronous ones (no call within the bound).
  for (const double ratio : {2.3, 1.0})
    for (const bool background : {false, true}) {
      SCOPED_TRACE(std::string(ratio > 2 ? "within" : "beyond") + " the bound, " + (background ? "background" : "synchronous") + " misses");
      Config config = budget_config(ratio);
      config.background_misses = background;
      // The keeper of sessions 29-31: it tops the reserve up to its limit before each free and
      // trims a free's surplus before the next (the hold and no creates ahead: tests below).
      config.reserve_hold_allocs = 0;
      config.keeper_creates_ahead = true;
      auto heap = test::make_heap(config);
      ASSERT_TRUE(heap);
      Heap& h = *heap;
      auto& c = HeapInternals::of(h);
      const std::vector<Handle> live = allocate_live(h, 100);
      // Two 48-page objects (ordinary demand: no more than an eighth of the pages in use).
      auto one = h.allocate(48 * kPageBytes);
      auto two = h.allocate(48 * kPageBytes);
      ASSERT_TRUE(one.ok() && two.ok());
      for (const Handle x : {*one, *two}) {
        const FreeOutcome out = free_once_trimmed(h, x);
        ASSERT_TRUE(out.freed);
        // The first free, at a ratio of 1, returns pages beyond the bound (the second is within
        // it: the bound counts both objects, the reserve one). With synchronous misses the
        // freeing thread trims those down to the bound itself.
        const bool beyond = ratio < 2 && x == *one;
        if (beyond && !background) {
          EXPECT_GT(out.calls[DriverOp::release_page], 0u) << "with synchronous misses the free left its surplus beyond the bound to the keeper";
          EXPECT_LE(out.after.reserve, out.after.ceiling);
          continue;
        }
        EXPECT_EQ(out.calls.total(), 0u) << "the free made driver calls";
        EXPECT_GT(out.after.reserve, out.after.limit + 30) << "the free returned no surplus (the test's case is gone)";
        if (beyond) {
          EXPECT_GT(out.after.reserve, out.after.ceiling) << "the free left nothing beyond the bound (the test's case is gone)";
        }
      }
      const BudgetReading settled = trimmed_budget(c);
      EXPECT_TRUE(near_limit(settled)) << "the keeper did not trim it (reserve " << settled.reserve << ", limit " << settled.limit << ")";
      EXPECT_TRUE(h.validate().ok());
      for (auto x : live) EXPECT_TRUE(h.free(x).ok());
    }
}

TEST(ReserveKeeper, AFreeOfNoOrdinaryDemandTrimsBeyondThePeakBoundOnItsOwnThread) {
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
  EXPECT_GT(out.calls[DriverOp::release_page], 0u) << "a free of no ordinary demand left it all to the keeper";
  EXPECT_EQ(out.calls[DriverOp::map] + out.calls[DriverOp::create_page], 0u);
  EXPECT_LE(out.after.reserve, out.after.ceiling) << "the free left more than the peak bound mapped";
  const BudgetReading settled = trimmed_budget(c);
  EXPECT_TRUE(near_limit(settled)) << "the keeper did not trim the rest" << " (reserve " << settled.reserve << ", limit " << settled.limit << ")";
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

// With background misses the same free makes no call: its trim is the mapper's, on its thread,
// before any miss queued after it (so no miss creates pages beside the pages it releases). The
// keeper is paused throughout: what goes back beyond the peak bound is the mapper's doing.
TEST(ReserveKeeper, WithBackgroundMissesAFreeOfNoOrdinaryDemandIsTrimmedByTheMapper) {
  Config config = budget_config(1.0);
  config.background_misses = true;
  auto heap = test::make_heap(config);
  ASSERT_TRUE(heap);
  Heap& h = *heap;
  auto& c = HeapInternals::of(h);
  const std::vector<Handle> live = allocate_live(h);
  for (const Handle x : live) ASSERT_TRUE(h.pin(x).ok());  // none pending
  auto big = h.allocate(120 * kPageBytes);
  ASSERT_TRUE(big.ok());
  ASSERT_TRUE(h.pin(*big).ok());
  settle(h);
  (void)trimmed_budget(c);
  {
    std::lock_guard lock(c.mu);
    c.keeper.pause();
  }
  {
    ThreadDriverCalls scope(h.driver_calls());
    ASSERT_TRUE(h.free(*big).ok());
    EXPECT_EQ(scope.made().total(), 0u) << "the free of no ordinary demand made driver calls";
  }
  BudgetReading r = read_budget(c);
  for (int i = 0; i < 5000 && (r.in_flight || r.reserve > r.ceiling); ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    r = read_budget(c);
  }
  EXPECT_LE(r.reserve, r.ceiling) << "nothing trimmed the return beyond the peak bound with the keeper paused";
  {
    std::lock_guard lock(c.mu);
    c.keeper.resume();
  }
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
  EXPECT_TRUE(h.validate().ok());
}

// The hold's tests: a heap with background misses within a wide peak bound (ratio 2.3), 100 x 4
// live pages and a mapped 48-page object (ordinary demand), the keeper settled: its free leaves a
// surplus of ~48 pages over the limit.
struct HoldCase {
  std::unique_ptr<Heap> heap;
  std::vector<Handle> live;
  Handle one{};
  std::chrono::steady_clock::time_point allocated_at;  // the last live peak noted
};
HoldCase hold_case(Config config) {
  config.background_misses = true;
  HoldCase k{test::make_heap(config), {}, {}, {}};
  if (!k.heap) return k;
  k.live = allocate_live(*k.heap, 100);
  k.allocated_at = std::chrono::steady_clock::now();
  auto one = k.heap->allocate(48 * kPageBytes);
  EXPECT_TRUE(one.ok());
  if (!one.ok()) return k;
  k.one = *one;
  EXPECT_TRUE(k.heap->pin(k.one).ok());  // mapped (a pending object's mapping waits here)
  settle(*k.heap);
  return k;
}

TEST(ReserveKeeper, WithAHoldAFreesSurplusIsKeptBeforeItGoesAndWithoutCreatingAheadNoPageIsCreated) {
  // Within the peak bound (ratio 2.3), a free's surplus over the limit is released only once no
  // allocation took it for the hold: a keeper turn comes every 20 ms, so 150 ms is several turns
  // in which the keeper without the hold would have trimmed it.
  Config config = budget_config(2.3);
  config.reserve_hold_ms = 600;
  config.reserve_hold_allocs = 0;  // the time's hold alone
  config.keeper_creates_ahead = false;
  HoldCase k = hold_case(config);
  ASSERT_TRUE(k.heap && !k.one.is_null());
  Heap& h = *k.heap;
  auto& c = HeapInternals::of(h);
  const std::vector<Handle>& live = k.live;
  const std::uint64_t created_before = h.driver_calls().totals()[DriverOp::create_page];
  const auto freed_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(h.free(k.one).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  const BudgetReading held = read_budget(c);
  if (std::chrono::steady_clock::now() - freed_at < std::chrono::milliseconds(500)) {
    EXPECT_GT(held.reserve, held.limit + 20) << "the keeper released the surplus within the hold";
  }
  EXPECT_LE(held.reserve, held.ceiling);
  const BudgetReading settled = trimmed_budget(c);
  EXPECT_TRUE(near_limit(settled)) << "the keeper did not release the surplus after the hold (reserve " << settled.reserve
                                   << ", limit " << settled.limit << ")";
  // No allocation came meanwhile: the keeper created nothing (with background misses the misses
  // create their own pages).
  EXPECT_EQ(h.driver_calls().totals()[DriverOp::create_page], created_before) << "the keeper created pages ahead of demand";
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

TEST(ReserveKeeper, AHoldCountedInAllocationsKeepsAFreesSurplusUntilThatManyAllocationsPassedItBy) {
  // Config::reserve_hold_allocs alone: no time ends the hold (150 ms is several keeper turns), the
  // allocations that take pages without touching the surplus do.
  Config config = budget_config(2.3);
  config.reserve_hold_allocs = 8;
  config.keeper_creates_ahead = false;
  HoldCase k = hold_case(config);
  ASSERT_TRUE(k.heap && !k.one.is_null());
  Heap& h = *k.heap;
  auto& c = HeapInternals::of(h);
  std::vector<Handle> live = k.live;
  ASSERT_TRUE(h.free(k.one).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  const BudgetReading held = read_budget(c);
  EXPECT_GT(held.reserve, held.limit + 20) << "the keeper released the surplus before any allocation came";
  EXPECT_LE(held.reserve, held.ceiling);
  // Twelve one-page objects, each from the reserve: the freed pages beyond them sat untouched
  // through more than the hold's eight allocations.
  for (int i = 0; i < 12; ++i) {
    auto x = h.allocate(kPageBytes);
    ASSERT_TRUE(x.ok());
    live.push_back(*x);
  }
  const BudgetReading settled = trimmed_budget(c);
  EXPECT_TRUE(near_limit(settled)) << "the keeper did not release the surplus after the hold (reserve " << settled.reserve
                                   << ", limit " << settled.limit << ")";
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

TEST(ReserveKeeper, AnIdleHeapGivesAHeldSurplusBackOnceTheRecentPeakIsForgotten) {
  // The hold in allocations never ends while none come; the peak bound the surplus stays within
  // falls once the window of the recent peak (here 4 s: a note is forgotten 2-4 s after it) has
  // none, and the keeper's periodic turn trims to it.
  Config config = budget_config(2.3);
  config.reserve_hold_allocs = 8;
  config.reserve_window_ms = 4000;
  HoldCase k = hold_case(config);
  ASSERT_TRUE(k.heap && !k.one.is_null());
  Heap& h = *k.heap;
  auto& c = HeapInternals::of(h);
  const std::vector<Handle>& live = k.live;
  const auto allocated_at = k.allocated_at;
  ASSERT_TRUE(h.free(k.one).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const BudgetReading held = read_budget(c);
  if (std::chrono::steady_clock::now() - allocated_at < std::chrono::milliseconds(1500)) {
    EXPECT_GT(held.reserve, held.limit + 20) << "the keeper released the surplus within the hold";
  }
  // Up to two windows for the peak to be forgotten, then the keeper's turn.
  BudgetReading idle = read_budget(c);
  for (int i = 0; i < 600 && !(near_limit(idle) && idle.reserve < 48); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    idle = read_budget(c);
  }
  EXPECT_LT(idle.reserve, 48u) << "an idle heap kept the freed pages (reserve " << idle.reserve << ", limit " << idle.limit
                               << ", ceiling " << idle.ceiling << ")";
  EXPECT_TRUE(h.validate().ok());
  for (auto x : live) EXPECT_TRUE(h.free(x).ok());
}

TEST(ReserveKeeper, WithBackgroundMissesAnOrdinaryFreeLeavesAnEmptiedChunkToTheKeeper) {
  for (const double ratio : {2.3, 1.0}) {
    SCOPED_TRACE(ratio > 2 ? "within the bound" : "beyond the bound");
    Config config = budget_config(ratio);
    config.chunk_min_pages = 16;
    config.background_misses = true;
    auto heap = test::make_heap(config);
    ASSERT_TRUE(heap);
    Heap& h = *heap;
    const std::vector<Handle> live = allocate_live(h, 100);  // 4-page objects: no chunks
    auto big = h.allocate(48 * kPageBytes);                   // most of its pages new: one chunk
    ASSERT_TRUE(big.ok());
    ASSERT_TRUE(h.pin(*big).ok());  // mapped (a pending object's mapping waits here)
    ASSERT_EQ(h.stats().pages.chunks, 1u) << "the object got no chunk (the test's case is gone)";
    const FreeOutcome out = free_once_trimmed(h, *big);
    ASSERT_TRUE(out.freed);
    EXPECT_EQ(out.calls.total(), 0u) << "the free released its chunk itself";
    EXPECT_EQ(chunks_once_released(h), 0u) << "the keeper never released the chunk";
    EXPECT_TRUE(h.validate().ok());
    for (auto x : live) EXPECT_TRUE(h.free(x).ok());
  }
}

// What a free leaves to the keeper does not raise the peak of mapped memory, however late the
// keeper comes (here: paused): the next allocation of the freed size takes the freed pages, and
// one of another shape that must create pages releases an emptied chunk first.
TEST(ReserveKeeper, WhatAFreeLeavesToTheKeeperDoesNotRaiseThePeak) {
  for (const bool background : {false, true}) {
    SCOPED_TRACE(background ? "background misses" : "synchronous misses");
    Config config = budget_config(1.0);
    config.chunk_min_pages = 16;
    config.background_misses = background;
    auto heap = test::make_heap(config);
    ASSERT_TRUE(heap);
    Heap& h = *heap;
    auto& c = HeapInternals::of(h);
    const std::vector<Handle> live = allocate_live(h, 100);
    auto first = h.allocate(48 * kPageBytes);  // a chunk for most of it
    ASSERT_TRUE(first.ok());
    ASSERT_TRUE(h.pin(*first).ok());  // mapped (a pending object's mapping waits here)
    ASSERT_EQ(h.stats().pages.chunks, 1u) << "the object got no chunk (the test's case is gone)";
    settle(h);
    const std::uint64_t peak = h.stats().peak_mapped_bytes;
    {
      std::lock_guard lock(c.mu);
      c.keeper.pause();
    }
    ASSERT_TRUE(h.free(*first).ok());
    // 54 pages (the emptied chunk serves no run): new pages, created after the chunk's release.
    auto second = h.allocate(54 * kPageBytes);
    ASSERT_TRUE(second.ok()) << second.error().to_string();
    auto pin = h.pin(*second);  // a pending object's mapping waits here
    ASSERT_TRUE(pin.ok());
    EXPECT_TRUE(test::pattern_holds(h.backend(), pin->address(), pin->size(), 21));
    pin->reset();
    EXPECT_LE(h.stats().peak_mapped_bytes, peak + 6 * kPageBytes) << "the emptied chunk was held beside the new pages";
    ASSERT_TRUE(h.free(*second).ok());
    auto third = h.allocate(54 * kPageBytes);  // the freed pages again
    ASSERT_TRUE(third.ok());
    EXPECT_LE(h.stats().peak_mapped_bytes, peak + 6 * kPageBytes) << "the freed pages were held beside new ones";
    {
      std::lock_guard lock(c.mu);
      c.keeper.resume();
    }
    EXPECT_TRUE(h.validate().ok());
    EXPECT_TRUE(h.free(*third).ok());
    for (auto x : live) EXPECT_TRUE(h.free(x).ok());
  }
}

}  // namespace
}  // namespace valet::detail
