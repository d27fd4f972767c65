// The place batch (heap/src/page_pool_place.cpp): a large run that no mapped run serves is
// mapped without the heap lock. The pool stays consistent while a batch is in flight, a failed
// call gives everything back, and through the heap other threads take the lock, allocate, free
// and validate while a placement's driver call is under way (a shared tail's alias's too); a
// shutdown waits for it.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <thread>
#include <vector>

#include "faulty_pool.h"
#include "gated_backend.h"
#include "heap_test_util.h"
#include "page_pool.h"
#include "valet/counting_backend.h"

namespace valet::detail {
namespace {

using test::GatedBackend;
using test::GatedHeap;
using test::kMiB;

// 64 pages over an arena of 256 slots, behind a fault injector and a counting door.
class PlacePool : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(pool.init(256).ok()); }
  test::FaultyPool c{64};
  FaultInjectingBackend*& faults = c.faults;
  CountingBackend& door = c.door;
  PagePool& pool = c.pool;
};

std::uint64_t total(const std::vector<RangeSet::Range>& ranges) {
  std::uint64_t n = 0;
  for (const auto& r : ranges) n += r.length;
  return n;
}

std::uint64_t total_moved(const std::vector<PagePool::ReleaseRun>& sources) {
  std::uint64_t n = 0;
  for (const auto& r : sources) n += r.length;
  return n;
}

// Pages promised to an object not placed yet (background misses the mapper places) are created
// by nothing else: runs, batches and slab pages meanwhile find the capacity short of them, and
// the promise's own placement finds them all.
TEST_F(PlacePool, PromisedPagesAreLeftForThePromiseAlone) {
  ASSERT_TRUE(pool.promise(60));
  EXPECT_FALSE(pool.promise(5)) << "more than the capacity promised";
  EXPECT_EQ(pool.creatable_pages(), 4u);
  EXPECT_EQ(pool.available_pages(), 4u);
  auto a = pool.take_run(4, 1);
  ASSERT_TRUE(a.ok()) << a.error().to_string();
  EXPECT_EQ(pool.take_run(1, 2).code(), Errc::out_of_memory);
  EXPECT_EQ(pool.take_page(SlotKind::slab, 3).code(), Errc::out_of_memory);
  EXPECT_EQ(pool.begin_miss(2).code(), Errc::out_of_memory);
  ASSERT_VALID(pool);
  pool.unpromise(60);
  auto b = pool.begin_miss(60);
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  pool.place_calls(*b);
  auto run = pool.finish_place(*b, 4);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_EQ(pool.created_pages(), 64u);
  EXPECT_EQ(pool.promised_pages(), 0u);
  ASSERT_VALID(pool);
}

// With background misses the heap sets a floor of reserve pages that a miss's batch leaves for
// new slab pages (PagePool::set_miss_reserve_floor): it creates pages rather than move the
// floor's, so that a slab page still finds a mapped page with no driver call, and near the
// capacity it moves only as many of them as it needs to fit.
TEST_F(PlacePool, AMissLeavesTheReserveFloorToSlabPagesAndTakesOnlyWhatItNeedsOfIt) {
  pool.set_miss_reserve_floor(4);
  auto first = pool.take_run(6, 1);
  ASSERT_TRUE(first.ok());
  pool.give_back(*first, 6);
  // A run taking reserve pages where they lie makes no call: the floor does not stop it.
  const auto two = pool.take_mapped_run(2, 2);
  ASSERT_TRUE(two);
  ASSERT_EQ(pool.reserve_pages(), 4u);
  // A miss's batch (no window around the reserve: its pages could only be moved) creates.
  PagePool::PlaceOptions miss;
  miss.window = false;
  miss.reserve_floor = 4;
  auto b = pool.begin_place(5, miss);
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  EXPECT_TRUE(b->sources.empty()) << "the batch moved reserve pages below the floor";
  EXPECT_EQ(b->fresh, 5u);
  pool.place_calls(*b);
  auto run = pool.finish_place(*b, 3);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_EQ(pool.reserve_pages(), 4u);
  ThreadDriverCalls slab_calls(door);
  auto slab = pool.take_page(SlotKind::slab, 5);
  ASSERT_TRUE(slab.ok()) << slab.error().to_string();
  EXPECT_EQ(slab_calls.made().total(), 0u) << "a new slab page made a driver call";
  ASSERT_VALID(pool);
  // All but two pages of the capacity go to another run; the next miss of four pages moves two
  // of the floor's three and creates the last two.
  const std::uint32_t rest_n = std::uint32_t(pool.creatable_pages() - 2);
  auto rest = pool.begin_place(rest_n, miss);
  ASSERT_TRUE(rest.ok()) << rest.error().to_string();
  EXPECT_TRUE(rest->sources.empty());
  pool.place_calls(*rest);
  auto rest_run = pool.finish_place(*rest, 6);
  ASSERT_TRUE(rest_run.ok()) << rest_run.error().to_string();
  ASSERT_EQ(pool.creatable_pages(), 2u);
  ASSERT_EQ(pool.reserve_pages(), 3u);
  auto last = pool.begin_place(4, miss);
  ASSERT_TRUE(last.ok()) << "the floor kept a miss from the capacity's last pages: " << last.error().to_string();
  EXPECT_EQ(total_moved(last->sources), 2u) << "it moved more of the floor than it needed";
  EXPECT_EQ(last->fresh, 2u);
  pool.place_calls(*last);
  auto last_run = pool.finish_place(*last, 7);
  ASSERT_TRUE(last_run.ok()) << last_run.error().to_string();
  EXPECT_EQ(pool.reserve_pages(), 1u);
  EXPECT_TRUE(test::pattern_holds(door, pool, *last_run, 4, 17));
  ASSERT_VALID(pool);
  pool.give_back(*two, 2);
  pool.give_back(*run, 5);
  pool.give_back(*slab, 1);
  pool.give_back(*rest_run, rest_n);
  pool.give_back(*last_run, 4);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(PlacePool, ABatchInFlightHoldsItsSlotsAndPagesApartAndTheRunKeepsItsReservePages) {
  auto first = pool.take_run(6, 1);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(test::pattern_holds(door, pool, *first, 6, 11));
  pool.give_back(*first, 6);  // six mapped reserve pages, one run
  auto b = pool.begin_place(10, PagePool::PlaceOptions{});
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  EXPECT_EQ(total(b->claimed), 6u) << "the window holds the reserve run";
  EXPECT_EQ(total(b->fills), 4u);
  // In flight: consistent, nothing to hand out, and another placement does not touch it.
  ASSERT_VALID(pool);
  EXPECT_TRUE(pool.batch_in_flight());
  EXPECT_EQ(pool.placements_in_flight(), 1u);
  EXPECT_EQ(pool.reserve_pages(), 0u);
  auto other = pool.take_run(3, 2);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(*other + 3 <= b->start || *other >= b->start + 10) << "two runs share slots";
  ThreadDriverCalls scope(door);
  pool.place_calls(*b);
  EXPECT_EQ(scope.made()[DriverOp::map], 4u) << "only the slots without a page were mapped";
  auto run = pool.finish_place(*b, 3);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_EQ(pool.placements_in_flight(), 0u);
  for (std::uint32_t s = *run; s < *run + 10; ++s) {
    EXPECT_EQ(pool.slot(s).kind, SlotKind::large);
    EXPECT_EQ(pool.slot(s).owner, 3u);
  }
  EXPECT_TRUE(test::pattern_holds(door, pool, *run, 10, 12));
  ASSERT_VALID(pool);
  pool.give_back(*run, 10);
  pool.give_back(*other, 3);
  EXPECT_TRUE(pool.destroy().ok());
}

// A background miss freed before the mapper made its calls (HeapCore::abandon_miss): the batch
// is given up without a call, and the pool is as it was, pages and slots alike.
TEST_F(PlacePool, ABatchGivenUpBeforeItsCallsLeavesThePoolAsItWas) {
  auto first = pool.take_run(6, 1);
  ASSERT_TRUE(first.ok());
  pool.give_back(*first, 6);
  const std::size_t reserve = pool.reserve_pages(), created = pool.created_pages();
  for (bool tail : {false, true}) {
    auto b = pool.begin_miss(10, tail);
    ASSERT_TRUE(b.ok()) << b.error().to_string();
    EXPECT_EQ(pool.reserve_pages(), 0u);
    ThreadDriverCalls scope(door);
    pool.abandon_place(*b);
    EXPECT_EQ(scope.made().total(), 0u) << "giving up a batch made a call";
    EXPECT_EQ(pool.placements_in_flight(), 0u);
    EXPECT_FALSE(pool.batch_in_flight());
    EXPECT_EQ(pool.reserve_pages(), reserve);
    EXPECT_EQ(pool.created_pages(), created);
    ASSERT_VALID(pool);
  }
  // The same run can be begun again where it lay (a retry at the same start).
  auto again = pool.begin_miss(10);
  ASSERT_TRUE(again.ok());
  const std::uint32_t start = again->start;
  pool.abandon_place(*again);
  PagePool::PlaceOptions at;
  at.at = start;
  auto b = pool.begin_place(10, at);
  ASSERT_TRUE(b.ok() && !b->empty());
  EXPECT_EQ(b->start, start);
  pool.place_calls(*b);
  auto run = pool.finish_place(*b, 4);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_TRUE(test::pattern_holds(door, pool, *run, 10, 13));
  ASSERT_VALID(pool);
  pool.give_back(*run, 10);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(PlacePool, AFailedCallGivesEverythingBack) {
  auto first = pool.take_run(6, 1);
  ASSERT_TRUE(first.ok());
  pool.give_back(*first, 6);
  const std::size_t created = pool.created_pages();
  for (const DriverOp op : {DriverOp::create_page, DriverOp::map, DriverOp::set_access}) {
    faults->fail_nth(op, 1);
    auto b = pool.begin_place(10, PagePool::PlaceOptions{});
    ASSERT_TRUE(b.ok());
    pool.place_calls(*b);
    auto run = pool.finish_place(*b, 3);
    ASSERT_FALSE(run.ok()) << "a failed " << driver_op_name(op) << " placed the run";
    EXPECT_EQ(run.error().code, Errc::driver_error);
    ASSERT_VALID(pool);
    EXPECT_EQ(pool.placements_in_flight(), 0u);
    EXPECT_FALSE(pool.batch_in_flight());
    EXPECT_EQ(pool.slots_of_kind(SlotKind::large), 0u) << "after a failed " << driver_op_name(op);
    EXPECT_EQ(pool.reserve_pages(), pool.created_pages()) << "every page made is free again";
    EXPECT_GE(pool.reserve_pages(), created);
  }
  auto run = pool.take_run(10, 3);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_TRUE(test::pattern_holds(door, pool, *run, 10, 13));
  ASSERT_VALID(pool);
  pool.give_back(*run, 10);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(PlacePool, ARunThatCannotBeBackedChangesNothing) {
  auto a = pool.take_run(60, 1);
  ASSERT_TRUE(a.ok());
  ThreadDriverCalls scope(door);
  auto b = pool.begin_place(10, PagePool::PlaceOptions{});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().code, Errc::out_of_memory);
  EXPECT_EQ(scope.made().total(), 0u);
  EXPECT_FALSE(pool.batch_in_flight());
  ASSERT_VALID(pool);
  pool.give_back(*a, 60);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(PlacePool, ATailBatchHoldsItsLastSlotUntilTheAliasIsMappedOrGivenUp) {
  // A slab-like page whose physical page the run's last slot will share.
  auto host = pool.take_page(SlotKind::slab, 1);
  ASSERT_TRUE(host.ok());
  ASSERT_TRUE(test::pattern_holds(door, pool, *host, 1, 21));
  PagePool::PlaceOptions how;
  how.tail = true;
  auto b = pool.begin_place(5, how);
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  EXPECT_EQ(total(b->fills) + total(b->claimed), 4u) << "the body is the run less its last slot";
  EXPECT_TRUE(b->tail);
  const std::uint32_t last = b->tail_slot();
  ASSERT_VALID(pool);
  pool.place_calls(*b);
  auto body = pool.finish_place(*b, 0);
  ASSERT_TRUE(body.ok()) << body.error().to_string();
  EXPECT_EQ(pool.slot(last).kind, SlotKind::unmapped);
  EXPECT_TRUE(pool.batch_in_flight()) << "the last slot is no longer held";
  ThreadDriverCalls scope(door);
  auto run = pool.attach_tail(*body, 5, 2, *host);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_EQ(scope.made().total(), 2u) << "the alias: one map, one access grant";
  EXPECT_EQ(pool.slot(last).phys, pool.slot(*host).phys);
  for (std::uint32_t s = *run; s < *run + 5; ++s) EXPECT_EQ(pool.slot(s).owner, 2u);
  // The same bytes through the host's slot and the run's last slot.
  const PatternRange r{pool.address(*host), kPageBytes, 22};
  ASSERT_TRUE(door.fill_pattern({&r, 1}, Stream{}).ok());
  const PatternRange through_tail{pool.address(last), kPageBytes, 22};
  auto differ = door.verify_pattern({&through_tail, 1}, Stream{});
  ASSERT_TRUE(differ.ok());
  EXPECT_EQ(*differ, 0u);
  EXPECT_FALSE(pool.batch_in_flight());
  ASSERT_VALID(pool);
  // Given up instead (the slab page went meanwhile): the body joins the reserve, the slot is free.
  auto c = pool.begin_place(5, how);
  ASSERT_TRUE(c.ok());
  pool.place_calls(*c);
  auto body2 = pool.finish_place(*c, 0);
  ASSERT_TRUE(body2.ok());
  const std::size_t reserve = pool.reserve_pages();
  pool.abandon_tail(*body2, 5);
  EXPECT_EQ(pool.reserve_pages(), reserve + 4);
  EXPECT_EQ(pool.slot(*body2 + 4).kind, SlotKind::unmapped);
  EXPECT_FALSE(pool.batch_in_flight());
  ASSERT_VALID(pool);
  EXPECT_TRUE(pool.drop_alias(last).ok());
  pool.give_back(*run, 4);
  pool.give_back(*host, 1);
  EXPECT_TRUE(pool.destroy().ok());
}


TEST(PlaceBatch, OtherThreadsUseTheHeapWhileAPlacementMapsItsRun) {
  Config c = test::host_config();
  c.background_reserve = true;  // the keeper runs too; only the placing thread's maps stop
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  Result<Handle> big = make_error(Errc::internal, "not run");
  std::thread placing([&] {
    g.gate->arm_for(std::this_thread::get_id());
    big = heap.allocate(60 * kMiB);  // 30 pages: more than the reserve holds
  });
  ASSERT_TRUE(g.gate->wait_entered()) << "the placement made no map";
  // The map is under way on the placing thread: the heap lock is free.
  auto small = heap.allocate(100'000);
  ASSERT_TRUE(small.ok()) << small.error().to_string();
  test::fill(heap, *small, 7);
  auto mid = heap.allocate(6 * kMiB);
  ASSERT_TRUE(mid.ok()) << mid.error().to_string();
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*mid).ok());
  g.gate->open();
  placing.join();
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  test::fill(heap, *big, 8);
  EXPECT_EQ(test::mismatches(heap, *big, 8), 0u);
  EXPECT_EQ(test::mismatches(heap, *small, 7), 0u);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*big).ok());
  EXPECT_TRUE(heap.free(*small).ok());
  EXPECT_VALID(heap);
}

TEST(PlaceBatch, AShutdownWaitsForAPlacementInFlightWhichThenFails) {
  Config c = test::host_config();
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  Result<Handle> big = make_error(Errc::internal, "not run");
  g.gate->arm();
  std::thread placing([&] { big = heap.allocate(60 * kMiB); });
  ASSERT_TRUE(g.gate->wait_entered());
  Status shut = make_error(Errc::internal, "not run");
  std::thread stopping([&] { shut = heap.shutdown(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  g.gate->open();
  placing.join();
  stopping.join();
  EXPECT_TRUE(shut.ok()) << shut.error().to_string();
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().code, Errc::shut_down);
}

TEST(PlaceBatch, ACallerMissMakesNoDriverCallUnderTheHeapLock) {
  Config c = test::host_config();
  c.reserve_low_pages = 0;  // no inline refill or trim: only the placement calls
  c.reserve_high_pages = 0;
  c.share_tails = false;
  auto heap = test::make_heap(c);
  const auto under_lock = [&] { return heap->stats().driver_calls.under_heap_lock; };
  const std::uint64_t before = under_lock();
  ThreadDriverCalls scope(heap->driver_calls());
  auto big = heap->allocate(40 * kMiB + 1000);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  EXPECT_GT(scope.made().total(), 0u) << "the allocation was no miss";
  EXPECT_EQ(under_lock(), before);
  // The counter counts: growing a run in place still maps under the lock.
  ASSERT_TRUE(heap->resize(*big, 80 * kMiB).ok());
  EXPECT_GT(under_lock(), before);
  EXPECT_VALID(*heap);
}

// A shared tail at allocation (tails.cpp, place_on_slab_page): 40 objects of 64 KiB fill one slab
// page (31 or 32 fit) and put the rest on the top of a second (which fills from its highest slot
// down), whose free low span then takes the last 512 KiB of a large object placed by a miss.
constexpr std::size_t kSmall = 64 * 1024, kTailed = 10 * kMiB + 512 * 1024;
constexpr std::size_t kFirstPage = 24;  // these stay on the first page
std::vector<Handle> small_objects(Heap& heap) {
  std::vector<Handle> small;
  for (int i = 0; i < 40; ++i) {
    auto h = heap.allocate(kSmall);
    EXPECT_TRUE(h.ok());
    test::fill(heap, *h, test::seed_of(*h));
    small.push_back(*h);
  }
  return small;
}
Config tail_config() {
  Config c = test::uncached();
  c.reserve_low_pages = 0;  // no inline refill or trim: only the placement's calls
  c.reserve_high_pages = 0;
  return c;
}

TEST(PlaceBatch, ASharedTailsAliasIsMappedWithoutTheHeapLock) {
  auto heap = test::make_heap(tail_config());
  const auto small = small_objects(*heap);
  const auto under_lock = [&] { return heap->stats().driver_calls.under_heap_lock; };
  const std::uint64_t before = under_lock();
  std::uint64_t maps;
  Result<Handle> big = make_error(Errc::internal, "not run");
  {
    ThreadDriverCalls scope(heap->driver_calls());
    big = heap->allocate(kTailed);
    maps = scope.made()[DriverOp::map];
  }
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u) << "the large object's last page is no slab page's";
  EXPECT_GE(maps, 2u) << "the body and the alias";
  EXPECT_EQ(under_lock(), before);
  test::fill(*heap, *big, 5);
  EXPECT_EQ(test::mismatches(*heap, *big, 5), 0u);
  for (Handle h : small) EXPECT_EQ(test::mismatches(*heap, h, test::seed_of(h)), 0u);
  EXPECT_VALID(*heap);
}

TEST(PlaceBatch, OtherThreadsUseTheHeapAndEmptyTheSlabPageWhileATailsAliasIsMapped) {
  // How many access grants the allocation makes on the same heap, ungated: the alias's is the
  // last.
  int grants = 0;
  {
    GatedHeap dry(tail_config(), DriverOp::set_access);
    ASSERT_TRUE(dry.heap);
    (void)small_objects(*dry.heap);
    ThreadDriverCalls scope(dry.heap->driver_calls());
    ASSERT_TRUE(dry.heap->allocate(kTailed).ok());
    grants = int(scope.made()[DriverOp::set_access]);
    ASSERT_EQ(dry.heap->stats().pages.shared_tails, 1u);
  }
  ASSERT_GE(grants, 2);
  GatedHeap g(tail_config(), DriverOp::set_access);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  const auto small = small_objects(heap);
  Result<Handle> big = make_error(Errc::internal, "not run");
  std::thread placing([&] {
    g.gate->arm_for(std::this_thread::get_id(), grants - 1);
    big = heap.allocate(kTailed);
  });
  ASSERT_TRUE(g.gate->wait_entered()) << "the alias's access grant never came";
  // The alias is mapped, its access not yet granted: the heap lock is free. The objects on the
  // slab page that hosts the tail go away meanwhile (all but those of the first page), and
  // another comes (on a new page).
  Result<Handle> other = make_error(Errc::internal, "not run");
  auto meanwhile = std::async(std::launch::async, [&] {
    for (std::size_t i = kFirstPage; i < small.size(); ++i) EXPECT_TRUE(heap.free(small[i]).ok());
    other = heap.allocate(kSmall);
    if (other.ok()) test::fill(heap, *other, 9);
    EXPECT_VALID(heap);
  });
  if (meanwhile.wait_for(std::chrono::seconds(10)) != std::future_status::ready)
    ADD_FAILURE() << "the heap lock is held while the alias is mapped";
  g.gate->open();
  meanwhile.get();
  placing.join();
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  ASSERT_TRUE(other.ok()) << other.error().to_string();
  EXPECT_VALID(heap);
  EXPECT_EQ(heap.stats().pages.shared_tails, 0u) << "the slab page emptied meanwhile was not retired";
  test::fill(heap, *big, 8);
  EXPECT_EQ(test::mismatches(heap, *big, 8), 0u);
  EXPECT_EQ(test::mismatches(heap, *other, 9), 0u);
  for (std::size_t i = 0; i < kFirstPage; ++i) EXPECT_EQ(test::mismatches(heap, small[i], test::seed_of(small[i])), 0u);
  EXPECT_TRUE(heap.free(*big).ok());
  EXPECT_VALID(heap);
  for (std::size_t i = 0; i < kFirstPage; ++i) EXPECT_TRUE(heap.free(small[i]).ok());
  EXPECT_TRUE(heap.free(*other).ok());
  EXPECT_VALID(heap);
}

// A pool over a door whose maps can be held at a gate, for the keeper's deference to callers.
struct GatedPool {
  GatedBackend* gate = nullptr;
  CountingBackend door;
  PagePool pool;
  explicit GatedPool(std::size_t pages) : door(wrap(pages, gate)), pool(door, pages) {}
  static std::unique_ptr<Backend> wrap(std::size_t pages, GatedBackend*& out) {
    auto g = std::make_unique<GatedBackend>(test::open_host_backend(pages * kPageBytes));
    out = g.get();
    return g;
  }
};

// A caller's place batch held inside its map; a keeper's provision batch begun beside it. Runs
// the keeper's calls on a deferring thread and returns once they are done or `give_up` passed.
struct DeferenceScene {
  GatedPool g{64};
  Result<PagePool::PlaceBatch> place = make_error(Errc::internal, "not begun");
  PagePool::ProvisionBatch provision;
  std::thread caller, keeper;
  std::atomic<bool> keeper_done{false};
  std::uint64_t keeper_calls = 0;
  bool begin() {
    if (!g.pool.init(256).ok()) return false;
    place = g.pool.begin_place(6, PagePool::PlaceOptions{});  // new pages: creates, maps
    provision = g.pool.begin_provision(8, 8, 64);
    if (!place.ok() || provision.empty()) return false;
    caller = std::thread([&] {
      g.gate->arm_for(std::this_thread::get_id());
      g.pool.place_calls(*place);
    });
    if (!g.gate->wait_entered()) return false;
    keeper = std::thread([&] {
      PagePool::set_defers_to_callers(true);
      ThreadDriverCalls scope(g.door);
      g.pool.provision_calls(provision);
      keeper_calls = scope.made().total();
      keeper_done = true;
    });
    return true;
  }
  void end() {
    g.gate->open();
    caller.join();
    keeper.join();
    auto run = g.pool.finish_place(*place, 1);
    EXPECT_TRUE(run.ok());
    g.pool.finish_provision(provision);
    EXPECT_VALID(g.pool);
    EXPECT_GE(g.pool.reserve_pages(), 8u);
    if (run.ok()) g.pool.give_back(*run, 6);
    EXPECT_TRUE(g.pool.destroy().ok());
  }
};

TEST(KeeperDeference, TheKeepersCallsWaitWhileACallersBatchMakesItsOwn) {
  DeferenceScene s;
  s.g.pool.set_defer_limit(std::chrono::seconds(60));  // the test decides when the caller ends
  ASSERT_TRUE(s.begin());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(s.keeper_done) << "the keeper's batch called the driver while the caller's was under way";
  s.end();
  EXPECT_TRUE(s.keeper_done);
  EXPECT_GT(s.keeper_calls, 8u) << "creates, maps and access grants";
}

TEST(KeeperDeference, AKeeperDefersAtMostTheLimitEachCallSoThatCallersCannotStarveIt) {
  DeferenceScene s;
  s.g.pool.set_defer_limit(std::chrono::microseconds(200));
  ASSERT_TRUE(s.begin());
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!s.keeper_done && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(s.keeper_done) << "the keeper's batch waited for the caller's beyond the limit";
  s.end();
}

// A release batch while another caller's calls are under way: a freeing thread's trim (a
// caller's own) makes its calls at once; the keeper's, on a deferring thread, waits for them.
TEST(KeeperDeference, AFreeingThreadsTrimCallsAtOnceAndADeferringThreadsWaits) {
  GatedPool g(64);
  g.pool.set_defer_limit(std::chrono::seconds(60));
  ASSERT_TRUE(g.pool.init(256).ok());
  auto first = g.pool.take_run(8, 1);
  ASSERT_TRUE(first.ok());
  g.pool.give_back(*first, 8);
  std::optional<PagePool::CallerCalls> other_caller(std::in_place, g.pool);
  auto own = g.pool.begin_release(4, 64);  // four of the eight pages
  ASSERT_FALSE(own.empty());
  const auto start = std::chrono::steady_clock::now();
  g.pool.release_calls(own);  // this thread does not defer
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30)) << "a caller's trim waited";
  ASSERT_TRUE(g.pool.finish_release(own).ok());
  auto keepers = g.pool.begin_release(0, 64);
  ASSERT_FALSE(keepers.empty());
  std::atomic<bool> done{false};
  std::thread keeper([&] {
    PagePool::set_defers_to_callers(true);
    g.pool.release_calls(keepers);
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(done) << "a deferring trim called the driver while a caller's calls were under way";
  other_caller.reset();  // the last caller's calls end: the keeper goes on
  keeper.join();
  EXPECT_TRUE(done);
  ASSERT_TRUE(g.pool.finish_release(keepers).ok());
  EXPECT_EQ(g.pool.reserve_pages(), 0u);
  EXPECT_VALID(g.pool);
  EXPECT_TRUE(g.pool.destroy().ok());
}

}  // namespace
}  // namespace valet::detail
