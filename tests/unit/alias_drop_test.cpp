// Deferred alias drops: while the reserve keeper's thread runs, an alias slot that nobody
// addresses any more (a shared tail's last slot, a meshed page's alias, a slab page built on a
// tail) is not unmapped by the thread that let go of it but queued for the keeper, which unmaps it
// without the heap lock. These tests check the pool's bookkeeping at every step (validate()), that
// a page an alias still maps is never released, and that a free makes no unmap of its own.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "faulty_pool.h"
#include "heap_core.h"
#include "heap_test_util.h"
#include "page_pool.h"
#include "valet/counting_backend.h"
#include "valet/fault_injection.h"
#include "valet/runtime.h"

namespace valet::detail {
namespace {

TEST(DeferredAliasDrops, AnAliasWaitsMappedAndItsPageIsNotReleasedMeanwhile) {
  auto backend = test::open_host_backend(64u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 32);
  ASSERT_TRUE(pool.init(128).ok());
  pool.set_deferred_drops(true);
  // A one-page large object and an alias of its page (as a slab page built on its tail).
  auto own = pool.take_run(1, 7);
  ASSERT_TRUE(own.ok());
  ASSERT_TRUE(backend->fill_pattern(std::vector<PatternRange>{{pool.address(*own), kPageBytes, 11}}, Stream{}).ok());
  auto alias = pool.share_page(*own, SlotKind::slab, 3);
  ASSERT_TRUE(alias.ok());
  EXPECT_EQ(pool.mappings_of(*own), 2u);
  // Dropped: no driver call, the slot is out of every use, the page still mapped there.
  ASSERT_TRUE(pool.drop_alias(*alias).ok());
  EXPECT_EQ(pool.slot(*alias).kind, SlotKind::dropping);
  EXPECT_EQ(pool.queued_drops(), 1u);
  EXPECT_EQ(pool.live_mappings_of(*own), 1u);
  EXPECT_VALID(pool);
  auto still = backend->verify_pattern(std::vector<PatternRange>{{pool.address(*alias), kPageBytes, 11}}, Stream{});
  ASSERT_TRUE(still.ok());
  EXPECT_EQ(*still, 0u) << "the alias must stay mapped until its drop";
  // The object goes: its page joins the reserve, but a trim leaves it while the alias maps it.
  pool.give_back(*own, 1);
  const std::size_t created = pool.created_pages();
  auto trim = pool.begin_release(0, 64, true);
  EXPECT_TRUE(trim.empty()) << "a page a dropping alias still maps was taken for release";
  pool.release_calls(trim);
  EXPECT_TRUE(pool.finish_release(trim).ok());
  EXPECT_EQ(pool.created_pages(), created);
  EXPECT_VALID(pool);
  // Queued work holds the alias: the drop batch leaves it queued.
  const std::uint32_t a = *alias;
  pool.hold(std::span(&a, 1));
  auto held = pool.begin_drops();
  pool.drop_calls(held);
  pool.finish_drops(held);
  EXPECT_EQ(pool.queued_drops(), 1u);
  EXPECT_EQ(pool.slot(a).kind, SlotKind::dropping);
  EXPECT_VALID(pool);
  pool.unhold(std::span(&a, 1));
  // The next batch unmaps it; then the trim may release the page.
  auto drops = pool.begin_drops();
  EXPECT_VALID(pool);  // in flight
  pool.drop_calls(drops);
  pool.finish_drops(drops);
  EXPECT_EQ(pool.queued_drops(), 0u);
  EXPECT_EQ(pool.slot(a).kind, SlotKind::unmapped);
  EXPECT_EQ(pool.mappings_of(*own), 1u);
  EXPECT_VALID(pool);
  auto trim2 = pool.begin_release(0, 64, true);
  EXPECT_FALSE(trim2.empty());
  pool.release_calls(trim2);
  EXPECT_TRUE(pool.finish_release(trim2).ok());
  EXPECT_EQ(pool.created_pages(), created - 1);
  EXPECT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST(DeferredAliasDrops, APageOnlyADroppingAliasMapsBecomesIdleWhenItGoes) {
  auto backend = test::open_host_backend(64u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 32);
  ASSERT_TRUE(pool.init(128).ok());
  pool.set_deferred_drops(true);
  auto own = pool.take_page(SlotKind::slab, 1), other = pool.take_page(SlotKind::slab, 2);
  ASSERT_TRUE(own.ok() && other.ok());
  auto alias = pool.share_page(*own, SlotKind::slab, 1);
  ASSERT_TRUE(alias.ok());
  ASSERT_TRUE(pool.drop_alias(*alias).ok());
  // Meshing remaps the own slot onto the other page: only the dropping alias maps the page now.
  auto plan = pool.plan_remap(*own, *other);
  ASSERT_TRUE(pool.remap_calls(plan).ok());
  pool.commit_remap(plan);
  EXPECT_EQ(pool.pages_only_dropping(), 1u);
  EXPECT_EQ(pool.idle_pages(), 0u);
  EXPECT_VALID(pool);
  auto drops = pool.begin_drops();
  pool.drop_calls(drops);
  pool.finish_drops(drops);
  EXPECT_EQ(pool.pages_only_dropping(), 0u);
  EXPECT_EQ(pool.idle_pages(), 1u);
  EXPECT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

// A large object of two pages and a shared last slot (on slab page `onto`'s page), freed as the
// heap frees it: body to the reserve, the last slot's alias dropped (deferred). Its start.
std::uint32_t freed_tail_run(PagePool& pool, std::uint32_t onto) {
  auto run = pool.take_run_onto(3, 9, onto);
  EXPECT_TRUE(run.ok());
  pool.give_back(*run, 2);
  EXPECT_TRUE(pool.drop_alias(*run + 2).ok());
  EXPECT_EQ(pool.queued_drops(), 1u);
  return *run;
}

// A pool of 32 pages over 128 slots whose alias drops wait for a keeper (as while its thread
// runs), behind a fault injector and a counting door, with two slab pages `s` and `t` whose
// physical pages a freed run's last slot maps in turn.
class DropsBetweenTwoSlabPages : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pool.init(128).ok());
    pool.set_deferred_drops(true);
    auto a = pool.take_page(SlotKind::slab, 1), b = pool.take_page(SlotKind::slab, 2);
    ASSERT_TRUE(a.ok() && b.ok());
    s = *a;
    t = *b;
  }
  test::FaultyPool c{32};
  FaultInjectingBackend& faults = *c.faults;
  CountingBackend& door = c.door;
  PagePool& pool = c.pool;
  std::uint32_t s = 0, t = 0;
};

TEST_F(DropsBetweenTwoSlabPages, AFreedTailsRunIsReusedWhereItLies) {
  ASSERT_TRUE(
      door.fill_pattern(std::vector<PatternRange>{{pool.address(s), kPageBytes, 21}, {pool.address(t), kPageBytes, 22}},
                        Stream{})
          .ok());
  const std::uint32_t at = freed_tail_run(pool, s);
  // The same slab page: the run as it lies, its alias kept, no driver call.
  {
    ThreadDriverCalls scope(door);
    auto again = pool.take_run_onto(3, 10, s);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, at);
    EXPECT_EQ(scope.made().total(), 0u);
  }
  EXPECT_EQ(pool.queued_drops(), 0u);
  EXPECT_EQ(pool.slot(at + 2).kind, SlotKind::large);
  EXPECT_EQ(pool.live_mappings_of(s), 2u);
  EXPECT_VALID(pool);
  pool.give_back(at, 2);
  ASSERT_TRUE(pool.drop_alias(at + 2).ok());
  // Another slab page: the same run, its last slot remapped (unmap, map, access).
  {
    ThreadDriverCalls scope(door);
    auto other = pool.take_run_onto(3, 11, t);
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(*other, at);
    EXPECT_EQ(scope.made()[DriverOp::unmap], 1u);
    EXPECT_EQ(scope.made()[DriverOp::map], 1u);
    EXPECT_EQ(scope.made()[DriverOp::set_access], 1u);
  }
  EXPECT_EQ(pool.mappings_of(s), 1u);
  EXPECT_EQ(pool.mappings_of(t), 2u);
  EXPECT_VALID(pool);
  // The last slot shows the other page's bytes.
  auto differ = door.verify_pattern(std::vector<PatternRange>{{pool.address(at + 2), kPageBytes, 22}}, Stream{});
  ASSERT_TRUE(differ.ok());
  EXPECT_EQ(*differ, 0u);
  EXPECT_TRUE(pool.destroy().ok());
}

// The retarget in three steps (begin_retarget, attach_calls, finish_attach; the heap lets its
// lock go around the calls): the pool is consistent at every step, the run's last slot is out
// of every queue meanwhile, and a failed unmap queues the drop again and gives the body back.
TEST_F(DropsBetweenTwoSlabPages, ARetargetIsConsistentAtEveryStepAndAFailedUnmapUndoesIt) {
  ASSERT_TRUE(faults.fill_pattern(std::vector<PatternRange>{{pool.address(t), kPageBytes, 41}}, Stream{}).ok());
  const std::uint32_t at = freed_tail_run(pool, s);
  const std::size_t reserve = pool.reserve_pages();
  // A failed unmap: as it was.
  faults.fail_nth(DriverOp::unmap, 1);
  auto failing = pool.begin_retarget(3, t);
  ASSERT_TRUE(failing.has_value());
  EXPECT_EQ(pool.queued_drops(), 0u);
  EXPECT_EQ(pool.reserve_pages(), reserve - 2);
  EXPECT_VALID(pool);
  pool.attach_calls(*failing);
  EXPECT_FALSE(pool.finish_attach(*failing, 11).ok());
  EXPECT_EQ(pool.queued_drops(), 1u);
  EXPECT_EQ(pool.reserve_pages(), reserve);
  EXPECT_EQ(pool.slot(at + 2).kind, SlotKind::dropping);
  EXPECT_FALSE(pool.batch_in_flight());
  EXPECT_VALID(pool);
  // Then through: the run where it lies, its last slot on the other page.
  auto plan = pool.begin_retarget(3, t);
  ASSERT_TRUE(plan.has_value());
  EXPECT_TRUE(pool.batch_in_flight()) << "a shutdown would not wait for it";
  EXPECT_VALID(pool);
  pool.attach_calls(*plan);
  EXPECT_VALID(pool);
  auto run = pool.finish_attach(*plan, 11);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_EQ(*run, at);
  EXPECT_EQ(pool.slot(at + 2).owner, 11u);
  EXPECT_EQ(pool.mappings_of(s), 1u);
  EXPECT_EQ(pool.mappings_of(t), 2u);
  EXPECT_FALSE(pool.batch_in_flight());
  EXPECT_VALID(pool);
  auto differ = faults.verify_pattern(std::vector<PatternRange>{{pool.address(at + 2), kPageBytes, 41}}, Stream{});
  ASSERT_TRUE(differ.ok());
  EXPECT_EQ(*differ, 0u);
  EXPECT_TRUE(pool.destroy().ok());
}

// A retarget given up before its calls (a background miss freed while queued,
// HeapCore::abandon_miss): the drop is queued again and the body back in the reserve, no call.
TEST_F(DropsBetweenTwoSlabPages, ARetargetGivenUpBeforeItsCallsIsUndoneWithoutACall) {
  const std::uint32_t at = freed_tail_run(pool, s);
  const std::size_t reserve = pool.reserve_pages();
  auto plan = pool.begin_retarget(3, t);
  ASSERT_TRUE(plan.has_value());
  ThreadDriverCalls scope(door);
  plan->status = make_error(Errc::invalid_state, "given up");
  EXPECT_FALSE(pool.finish_attach(*plan, 0).ok());
  EXPECT_EQ(scope.made().total(), 0u);
  EXPECT_EQ(pool.queued_drops(), 1u);
  EXPECT_EQ(pool.reserve_pages(), reserve);
  EXPECT_EQ(pool.slot(at + 2).kind, SlotKind::dropping);
  EXPECT_FALSE(pool.batch_in_flight());
  EXPECT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

// A placement whose run holds a queued drop claims it as a free slot: its batch's calls unmap
// the old alias first (no call under the lock in begin_place), the pool is consistent while the
// batch is in flight, and a failed unmap queues the drop again.
TEST(DeferredAliasDrops, APlacementUnmapsTheDropsItClaimsInItsCalls) {
  test::FaultyPool c(32);
  FaultInjectingBackend& faults = *c.faults;
  CountingBackend& counting = c.door;
  PagePool& pool = c.pool;
  ASSERT_TRUE(pool.init(128).ok());
  pool.set_deferred_drops(true);
  auto s = pool.take_page(SlotKind::slab, 1);
  ASSERT_TRUE(s.ok());
  const std::uint32_t at = freed_tail_run(pool, *s);
  ASSERT_EQ(pool.mappings_of(*s), 2u);
  PagePool::PlaceOptions how;
  how.at = at;
  for (const bool fail : {true, false}) {
    if (fail) faults.fail_nth(DriverOp::unmap, 1);
    std::uint64_t calls;
    Result<PagePool::PlaceBatch> b = make_error(Errc::internal, "not run");
    {
      ThreadDriverCalls scope(counting);
      b = pool.begin_place(3, how);
      calls = scope.made().total();
    }
    ASSERT_TRUE(b.ok()) << b.error().to_string();
    ASSERT_FALSE(b->empty());
    EXPECT_EQ(calls, 0u) << "begin_place made a call (under the heap lock, in a heap)";
    EXPECT_EQ(pool.queued_drops(), 0u);
    EXPECT_VALID(pool);
    pool.place_calls(*b);
    EXPECT_VALID(pool);
    auto run = pool.finish_place(*b, 7);
    if (fail) {
      EXPECT_FALSE(run.ok());
      EXPECT_EQ(pool.queued_drops(), 1u);
      EXPECT_EQ(pool.slot(at + 2).kind, SlotKind::dropping);
      EXPECT_EQ(pool.mappings_of(*s), 2u);
      EXPECT_VALID(pool);
      continue;
    }
    ASSERT_TRUE(run.ok()) << run.error().to_string();
    EXPECT_EQ(*run, at);
    EXPECT_EQ(pool.slot(at + 2).owner, 7u);
    EXPECT_EQ(pool.mappings_of(*s), 1u) << "the old alias is gone";
    EXPECT_NE(pool.slot(at + 2).phys, pool.slot(*s).phys);
    EXPECT_VALID(pool);
  }
  EXPECT_TRUE(pool.destroy().ok());
}

// A shared page's alias whose access grant fails, and whose unmap then fails too, is not lost:
// the slot stays mapped, queued as a drop, and the pool consistent; the next drop batch unmaps it.
TEST(DeferredAliasDrops, AnAliasWhoseGrantAndUnmapFailIsQueuedAsADrop) {
  FaultInjectingBackend faults(test::open_host_backend(64u << 20));
  PagePool pool(faults, 32);
  ASSERT_TRUE(pool.init(128).ok());
  auto own = pool.take_page(SlotKind::slab, 1);
  ASSERT_TRUE(own.ok());
  faults.fail_nth(DriverOp::set_access, 1);
  faults.fail_nth(DriverOp::unmap, 1);
  auto alias = pool.share_page(*own, SlotKind::slab, 1);
  ASSERT_FALSE(alias.ok());
  EXPECT_EQ(pool.queued_drops(), 1u);
  EXPECT_EQ(pool.mappings_of(*own), 2u);
  EXPECT_VALID(pool);
  auto drops = pool.begin_drops();
  pool.drop_calls(drops);
  pool.finish_drops(drops);
  EXPECT_EQ(pool.queued_drops(), 0u);
  EXPECT_EQ(pool.mappings_of(*own), 1u);
  EXPECT_VALID(pool);
  pool.give_back(*own, 1);
  EXPECT_TRUE(pool.destroy().ok());
}

TEST_F(DropsBetweenTwoSlabPages, AFailedUnmapLeavesTheAliasQueuedAndMapped) {
  ASSERT_TRUE(faults.fill_pattern(std::vector<PatternRange>{{pool.address(s), kPageBytes, 31}}, Stream{}).ok());
  const std::uint32_t at = freed_tail_run(pool, s);
  // The keeper's unmap fails: the slot stays queued, mapped, and the page's bytes there.
  faults.fail_nth(DriverOp::unmap, 1);
  auto drops = pool.begin_drops();
  pool.drop_calls(drops);
  pool.finish_drops(drops);
  EXPECT_EQ(pool.queued_drops(), 1u);
  EXPECT_EQ(pool.slot(at + 2).kind, SlotKind::dropping);
  EXPECT_VALID(pool);
  auto same = faults.verify_pattern(std::vector<PatternRange>{{pool.address(at + 2), kPageBytes, 31}}, Stream{});
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, 0u);
  // A run for another page's tail: the remap's unmap fails too; placement then takes the run
  // around the reserve with the dropped slot as a free one (unmapped on demand, the keeper's
  // call), and maps the new page's alias there.
  faults.fail_nth(DriverOp::unmap, 1);
  auto other = pool.take_run_onto(3, 12, t);
  ASSERT_TRUE(other.ok()) << other.error().to_string();
  EXPECT_EQ(*other, at);
  EXPECT_EQ(faults.faults(DriverOp::unmap), 2u);
  EXPECT_EQ(pool.queued_drops(), 0u);
  EXPECT_EQ(pool.mappings_of(t), 2u);
  EXPECT_EQ(pool.mappings_of(s), 1u);
  EXPECT_VALID(pool);
  EXPECT_TRUE(pool.destroy().ok());
}

// Waits (at most 5 s) until the keeper has unmapped every queued alias.
bool drops_done(Heap& h) {
  auto& c = HeapInternals::of(h);
  for (int i = 0; i < 5000; ++i) {
    {
      std::lock_guard lock(c.mu);
      if (c.pool.slots_of_kind(SlotKind::dropping) == 0) return true;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return false;
}

// The unmaps a free of a large object makes on the freeing thread, whose tail a slab page shares
// (20 small objects on it), with or without the keeper's thread; the small objects' bytes after.
std::uint64_t unmaps_of_a_shared_tails_free(bool keeper) {
  Config config = test::uncached();
  config.background_reserve = keeper;
  auto heap = test::make_heap(config);
  auto large = heap->allocate(2 * kPageBytes + 512 * 1024);
  EXPECT_TRUE(large.ok());
  std::vector<Handle> small;
  for (int i = 0; i < 20; ++i) {
    auto h = heap->allocate(64 * 1024);
    EXPECT_TRUE(h.ok());
    test::fill(*heap, *h, test::seed_of(*h));
    small.push_back(*h);
  }
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u);
  std::uint64_t unmaps;
  {
    ThreadDriverCalls scope(heap->driver_calls());
    EXPECT_TRUE(heap->free(*large).ok());
    unmaps = scope.made()[DriverOp::unmap];
  }
  EXPECT_VALID(*heap);
  EXPECT_TRUE(drops_done(*heap)) << "the keeper did not drop the alias";
  EXPECT_VALID(*heap);
  EXPECT_EQ(heap->stats().pages.shared_tails, 0u);
  for (Handle h : small) EXPECT_EQ(test::mismatches(*heap, h, test::seed_of(h)), 0u);
  for (Handle h : small) EXPECT_TRUE(heap->free(h).ok());
  EXPECT_VALID(*heap);
  return unmaps;
}

TEST(DeferredAliasDrops, AFreeLeavesItsSharedTailsUnmapToTheKeeper) {
  EXPECT_EQ(unmaps_of_a_shared_tails_free(false), 1u) << "without a keeper the free unmaps its alias itself";
  EXPECT_EQ(unmaps_of_a_shared_tails_free(true), 0u) << "with a keeper the free makes no unmap";
}

}  // namespace
}  // namespace valet::detail
