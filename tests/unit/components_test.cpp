// The heap core's small components on their own: move claims on one state word, the tail links,
// and the reserve keeper over a page pool.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "gated_backend.h"
#include "heap_test_util.h"
#include "move_claims.h"
#include "page_pool.h"
#include "reserve_keeper.h"
#include "slabs.h"
#include "tail_links.h"
#include "valet/backend_adaptor.h"
#include "valet/runtime.h"

namespace valet::detail {
namespace {

StateWord live_word(std::uint32_t gen = 7) { return StateWord{state::make(gen, state::kLive)}; }

TEST(MoveClaims, AClaimExcludesOtherMoversAndEndsCleanly) {
  StateWord w = live_word();
  ASSERT_TRUE(claims::try_claim(w, false));
  EXPECT_FALSE(claims::try_claim(w, false)) << "two movers own one object";
  claims::end(w);
  EXPECT_EQ(w.load(), state::make(7, state::kLive));
  StateWord freed{state::make(7, 0)};
  EXPECT_FALSE(claims::try_claim(freed, false)) << "claimed an object that is not live";
}

TEST(MoveClaims, APinnedObjectIsNotClaimed) {
  StateWord w = live_word();
  std::uint64_t before = 0, waited = 0;
  ASSERT_TRUE(claims::add_pin(w, 7, before, waited).ok());
  EXPECT_FALSE(claims::try_claim(w, true));
  claims::remove_pin(w);
  EXPECT_TRUE(claims::try_claim(w, true));
}

TEST(MoveClaims, APinCancelsACancelableMoveWithoutWaiting) {
  StateWord w = live_word();
  ASSERT_TRUE(claims::try_claim(w, /*cancelable=*/true));
  std::uint64_t before = 0, waited = 0;
  ASSERT_TRUE(claims::add_pin(w, 7, before, waited).ok());
  EXPECT_TRUE(before & state::kCancelable);
  EXPECT_FALSE(claims::commit(w)) << "the mover committed a move a pin cancelled";
  EXPECT_FALSE(w.load() & state::kMoving);
  EXPECT_EQ(state::pins(w.load()), 1u);
}

TEST(MoveClaims, ACommittedMoveMakesPinsWaitUntilItEnds) {
  StateWord w = live_word();
  ASSERT_TRUE(claims::try_claim(w, true));
  ASSERT_TRUE(claims::commit(w));
  std::atomic<bool> ended{false};
  std::thread mover([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ended = true;
    claims::end(w);
  });
  std::uint64_t before = 0, waited = 0;
  ASSERT_TRUE(claims::add_pin(w, 7, before, waited).ok());
  EXPECT_TRUE(ended) << "the pin overtook a committed move";
  mover.join();
  EXPECT_FALSE(before & state::kMoving);
}

TEST(MoveClaims, AnAliasedMoveHandsPinsTheAliasAtOnce) {
  StateWord w = live_word();
  std::atomic<DevicePtr> alias{0};
  ASSERT_TRUE(claims::try_claim(w, true));
  ASSERT_TRUE(claims::commit(w));
  claims::publish_alias(w, alias, 0x1234);
  std::uint64_t before = 0, waited = 0;
  ASSERT_TRUE(claims::add_pin(w, 7, before, waited).ok());
  EXPECT_TRUE(before & state::kAliased);
  EXPECT_EQ(alias.load(), 0x1234u);
  claims::remove_pin(w);
  claims::end(w);
  EXPECT_EQ(w.load(), state::make(7, state::kLive));
}

TEST(MoveClaims, DroppingAClaimAndFreeingAndShuttingDown) {
  StateWord w = live_word();
  ASSERT_TRUE(claims::try_claim(w, true));
  claims::drop(w);
  EXPECT_EQ(w.load(), state::make(7, state::kLive));
  EXPECT_FALSE(claims::try_free(w, state::make(7, state::kLive | 1), 7)) << "freed with a stale expectation";
  ASSERT_TRUE(claims::try_free(w, state::make(7, state::kLive), 7));
  EXPECT_FALSE(state::live(w.load()));
  EXPECT_EQ(claims::make_live(w), 8u) << "a reused entry takes the next generation";
  std::uint64_t before = 0, waited = 0;
  EXPECT_EQ(claims::add_pin(w, 7, before, waited).code(), Errc::stale_handle);
  ASSERT_TRUE(claims::claim_for_shutdown(w));
  claims::kill(w);
  EXPECT_EQ(w.load(), state::make(8, 0));
}

TEST(TailLinks, OpenSharedAndTheRoomiest) {
  TailLinks t;
  EXPECT_FALSE(t.roomiest());
  t.open(10, 1u << 20);
  t.open(20, 300u << 10);
  EXPECT_EQ(*t.roomiest(), 20u) << "the tail with the fewest bytes used has the most room";
  t.share(20, 3);
  EXPECT_FALSE(t.open_bytes(20)) << "a tail is open or shared, never both";
  EXPECT_EQ(*t.shared_page(20), 3u);
  EXPECT_EQ(*t.roomiest(), 10u);
  t.unshare(20);
  t.close(10);
  EXPECT_FALSE(t.any_open());
  EXPECT_EQ(t.shared_count(), 0u);
}

TEST(Slabs, TheTailsHostsAreListedByTheirFreeLowSpanAndLeaveWhenTheyCannotHost) {
  Slabs slabs;
  const std::uint32_t cls = class_of(65536);
  const std::uint64_t size = class_size(cls), cap = class_slots(cls);
  SlabPage* a = slabs.create(cls, 10);
  SlabPage* b = slabs.create(cls, 11);
  auto hosts = [&](std::uint64_t room) {
    std::vector<std::uint32_t> ids;
    slabs.for_each_host(room, [&](SlabPage& p) {
      ids.push_back(p.id);
      return true;
    });
    return ids;
  };
  // Empty pages host all of themselves; the tie goes by id.
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{a->id, b->id}));
  // An object at slot 5 leaves five slots of free low span: the tightest host first.
  slabs.take_slot_at(a, 5, 1);
  EXPECT_EQ(a->host_room, 5 * size);
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{a->id, b->id}));
  EXPECT_EQ(hosts(5 * size + 1), (std::vector<std::uint32_t>{b->id})) << "a host without the room is skipped";
  // Taken below, freed again: the span follows the lowest taken slot both ways.
  slabs.take_slot_at(a, 2, 2);
  EXPECT_EQ(a->host_room, 2 * size);
  slabs.free_slot(a, 2);
  EXPECT_EQ(a->host_room, 5 * size);
  // On a tail, meshed (an alias), evacuating or full: not a host; back once it can host again.
  slabs.block_tail(b, 40, 1);
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{a->id}));
  slabs.unblock_tail(b);
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{a->id, b->id}));
  a->aliases.push_back({12, 0});
  slabs.aliases_changed(a);
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{b->id}));
  a->aliases.clear();
  slabs.aliases_changed(a);
  slabs.detach(b);
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{a->id}));
  slabs.attach(b);
  for (std::uint32_t i = 0; i < cap; ++i) slabs.take_slot_at(b, i, 100 + i);
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{a->id})) << "a full page hosts nothing";
  EXPECT_TRUE(slabs.validate().ok()) << slabs.validate().error().to_string();
  slabs.free_slot(b, 0);
  EXPECT_EQ(b->host_room, size) << "slot 0 freed: one slot below the lowest taken";
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{b->id, a->id}));
  for (std::uint32_t i = 1; i < cap; ++i) slabs.free_slot(b, i);
  EXPECT_EQ(b->host_room, cap * size);
  slabs.free_slot(a, 5);
  slabs.destroy(a);
  EXPECT_EQ(hosts(1), (std::vector<std::uint32_t>{b->id})) << "a destroyed page is no host";
  EXPECT_TRUE(slabs.validate().ok()) << slabs.validate().error().to_string();
}

TEST(Slabs, BlockingATailLeavesThePageAsTakingItsLowSlotsOneByOneWould) {
  Slabs slabs;
  const std::uint32_t cls = class_of(4096);  // 512 slots: eight bitmap words
  // Pages 0 and 2 fill ascending, 1 and 3 descending (by id); 2 and 3 are taken slot by slot.
  SlabPage* pages[4];
  for (std::uint32_t k = 0; k < 4; ++k) pages[k] = slabs.create(cls, 10 + k);
  for (SlabPage* p : pages) {  // owners differ by page: one object, one slot
    slabs.take_slot_at(p, 300, 100 * p->id + 7);
    slabs.take_slot_at(p, 90, 100 * p->id + 8);
    slabs.take_slot(p, 100 * p->id + 9);  // ascending: slot 0, descending: slot 511 (its fill hint moves)
  }
  constexpr std::uint32_t n = 70;  // past the first word, under the object at slot 90
  auto same = [&](const SlabPage& a, const SlabPage& b, const char* when) {
    EXPECT_EQ(a.bitmap, b.bitmap) << when;
    EXPECT_EQ(a.used, b.used) << when;
    EXPECT_EQ(a.lowest, b.lowest) << when;
    EXPECT_EQ(a.hint, b.hint) << when;
    EXPECT_EQ(a.bucket, b.bucket) << when;
    for (std::uint32_t i = 0; i < n; ++i) EXPECT_EQ(a.owners[i], kNoOwner) << when << ", slot " << i;
  };
  for (std::uint32_t k = 0; k < 2; ++k) {
    SlabPage* p = pages[k];
    SlabPage* ref = pages[k + 2];
    if (!p->descending) {  // the ascending pages' take above was slot 0
      slabs.free_slot(p, 0);
      slabs.free_slot(ref, 0);
    }
    slabs.block_tail(p, 40 + k, n);
    for (std::uint32_t i = 0; i < n; ++i) slabs.take_slot_at(ref, i, kNoOwner);
    same(*p, *ref, "blocked");
    EXPECT_TRUE(Slabs::validate_page(*p).ok()) << Slabs::validate_page(*p).error().to_string();
    // Objects placed while the tail blocks the low slots: an ascending page's fill hint moves past
    // them, and must come back when they are free again.
    for (std::uint32_t j = 0; j < 3; ++j) {
      const std::uint32_t at = slabs.take_slot(p, 100 * p->id + 20 + j);
      EXPECT_EQ(slabs.take_slot(ref, 100 * ref->id + 20 + j), at);
    }
    if (!p->descending) {
      EXPECT_GT(p->hint, 0u);
    }
    slabs.unblock_tail(p);
    for (std::uint32_t i = 0; i < n; ++i) slabs.free_slot(ref, i);
    same(*p, *ref, "unblocked");
    EXPECT_EQ(p->lowest, p->descending ? 90u : n) << "the objects placed while blocked are the lowest";
    if (!p->descending) {
      EXPECT_EQ(p->hint, 0u) << "no free slot may lie behind the fill hint";
    }
  }
  EXPECT_TRUE(slabs.validate().ok()) << slabs.validate().error().to_string();
}

TEST(TailLinks, ValidateRefusesATailThatIsNoLargePage) {
  auto backend = test::open_host_backend(32u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 16);
  ASSERT_TRUE(pool.init(64).ok());
  Slabs slabs;
  HandleTable handles;
  TailLinks t;
  EXPECT_TRUE(t.validate(pool, slabs, handles).ok());
  t.open(5, 4096);  // slot 5 is unmapped
  EXPECT_FALSE(t.validate(pool, slabs, handles).ok());
  t.close(5);
  t.share(6, 0);  // no slab page 0
  EXPECT_FALSE(t.validate(pool, slabs, handles).ok());
  t.unshare(6);
  EXPECT_TRUE(t.validate(pool, slabs, handles).ok());
  EXPECT_TRUE(pool.destroy().ok());
}

TEST(ReserveKeeper, TheThreadRefillsToTheLowWatermarkAndTrimsBelowTheHigh) {
  auto backend = test::open_host_backend(64u << 20);
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 32);
  ASSERT_TRUE(pool.init(128).ok());
  HeapMutex mu;
  Config config;
  config.reserve_low_pages = 4;
  config.reserve_high_pages = 8;
  int wakes = 0;
  const std::int64_t live_bytes = 0;
  Demand demand{1'000'000'000};
  ReserveKeeper keeper(mu, pool, config, live_bytes, demand, [&] { ++wakes; });
  ASSERT_TRUE(keeper.validate().ok());
  keeper.start();
  {
    std::lock_guard lock(mu);
    keeper.want_refill();
  }
  auto reserve = [&] {
    std::lock_guard lock(mu);
    return pool.reserve_pages();
  };
  for (int i = 0; i < 500 && reserve() < 4; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_GE(reserve(), 4u) << "the keeper did not refill";
  // Twenty pages handed back at once (nothing live: the budget is the high watermark): the keeper
  // trims them to it.
  {
    std::lock_guard lock(mu);
    auto run = pool.take_run(20, 1);
    ASSERT_TRUE(run.ok());
    pool.give_back(*run, 20);
    keeper.after_release();
  }
  for (int i = 0; i < 1000 && reserve() > 8; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_LE(reserve(), 8u) << "the keeper did not trim";
  keeper.stop();
  EXPECT_GT(wakes, 0);
  std::lock_guard lock(mu);
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

using test::GatedBackend;

TEST(ReserveKeeper, CountsItsWaitForTheHeapLockAfterABatch) {
  GatedBackend door(test::open_host_backend(64u << 20));
  PagePool pool(door, 32);
  ASSERT_TRUE(pool.init(128).ok());
  HeapMutex mu;
  Config config;
  config.reserve_low_pages = 4;
  config.reserve_high_pages = 8;
  const std::int64_t live_bytes = 0;
  Demand demand{1'000'000'000};
  ReserveKeeper keeper(mu, pool, config, live_bytes, demand, nullptr);
  keeper.start();
  door.arm();
  {
    std::lock_guard lock(mu);
    keeper.want_refill();
  }
  // The keeper is mapping its batch without the lock; this thread takes the lock and holds it
  // for 60 ms after letting the map through: the keeper's booking waits that long, less the time
  // the keeper takes to finish its call and reach the lock (up to 35 ms on a loaded 2-core host
  // under a sanitizer: 30 ms held once measured a 22 ms wait there).
  ASSERT_TRUE(door.wait_entered()) << "the keeper made no map";
  {
    std::lock_guard lock(mu);
    door.open();
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
  }
  auto reserve = [&] {
    std::lock_guard lock(mu);
    return pool.reserve_pages();
  };
  for (int i = 0; i < 500 && reserve() < 4; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  keeper.stop();
  std::lock_guard lock(mu);
  const KeeperLockWaits w = keeper.lock_waits();
  EXPECT_GE(w.batches, 1u);
  EXPECT_GE(w.longest_ns, 25'000'000u) << "the wait behind the lock holder was not counted";
  EXPECT_GE(w.over_1ms, 1u);
  EXPECT_GE(w.wait_ns, w.longest_ns);
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

TEST(ReserveKeeper, CountsItsWaitForTheHeapLockAfterAYield) {
  auto door = test::open_host_backend(64u << 20);
  PagePool pool(*door, 32);
  ASSERT_TRUE(pool.init(128).ok());
  HeapMutex mu;
  Config config;
  const std::int64_t live_bytes = 0;
  Demand demand{1'000'000'000};
  ReserveKeeper keeper(mu, pool, config, live_bytes, demand, nullptr);
  // At a turn's end the keeper holds the lock until a helper thread waits for it; its next step
  // yields the lock, and whoever takes it holds it 60 ms: the keeper's wait to take it back is a
  // yield's, counted beside the batches' (up to 35 ms of it may pass before the keeper reaches
  // the lock on a loaded 2-core host under a sanitizer: see the test above). The yield lets the
  // lock go for ~20 us at most, which a waiter asleep in the lock may not wake up in (under TSan
  // it did not, 20 rounds out of 20): so this thread also spins on try_lock to take it at once,
  // and a round that still misses the window is tried again.
  std::atomic<bool> armed{false}, go{false};
  keeper.set_after_turn([&](std::unique_lock<HeapMutex>&) {
    if (!armed.exchange(false)) return;
    go.store(true);
    while (!mu.contended()) std::this_thread::yield();
  });
  keeper.start();
  for (int round = 0; round < 20; ++round) {
    go.store(false);
    armed.store(true);
    while (!go.load()) std::this_thread::yield();
    std::thread waiter([&] {
      std::lock_guard lock(mu);
      std::this_thread::sleep_for(std::chrono::milliseconds(60));
    });
    while (!mu.try_lock()) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    mu.unlock();
    waiter.join();
    std::lock_guard lock(mu);
    if (keeper.lock_waits().longest_ns >= 25'000'000u) break;
  }
  keeper.stop();
  std::lock_guard lock(mu);
  const KeeperLockWaits w = keeper.lock_waits();
  EXPECT_GE(w.yields, 1u);
  EXPECT_GE(w.longest_ns, 25'000'000u) << "the wait after the yield was not counted";
  EXPECT_GE(w.wait_ns, w.longest_ns);
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

}  // namespace
}  // namespace valet::detail
