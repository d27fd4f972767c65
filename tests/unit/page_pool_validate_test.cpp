// PagePool::validate (heap/src/page_pool_validate.cpp): a pool driven through its API passes, and
// each kind of corruption it claims to catch is caught with a message naming it. Slot records
// are corrupted through slot(), the range sets and page records through PagePoolTestPeer.
#include <gtest/gtest.h>

#include <string>

#include "page_pool.h"
#include "valet/runtime.h"

namespace valet::detail {

struct PagePoolTestPeer {
  static RangeSet& unmapped(PagePool& p) { return p.unmapped_; }
  static RangeSet& reserve(PagePool& p) { return p.reserve_; }
  static RangeSet& releasing(PagePool& p) { return p.releasing_; }
  static std::vector<PhysRecord>& phys(PagePool& p) { return p.phys_; }
  static std::vector<std::uint32_t>& idle(PagePool& p) { return p.idle_; }
  static std::vector<std::uint32_t>& free_phys(PagePool& p) { return p.free_phys_; }
  static std::size_t& created(PagePool& p) { return p.created_; }
  static std::size_t& capacity(PagePool& p) { return p.capacity_pages_; }
  static std::size_t& kind_count(PagePool& p, SlotKind k) { return p.kind_counts_[std::size_t(k)]; }
  // A created page that nothing maps and no list knows of.
  static std::uint32_t create_page(PagePool& p) { return p.create_page().value(); }
};

namespace {

using Peer = PagePoolTestPeer;

std::string failure(const PagePool& p) {
  auto st = p.validate();
  return st.ok() ? std::string() : st.error().message;
}

#define EXPECT_CAUGHT(pool, text)                                                       \
  do {                                                                                  \
    const std::string msg_ = failure(pool);                                             \
    EXPECT_NE(msg_.find(text), std::string::npos) << "expected \"" << (text) << "\", got \"" << msg_ << "\""; \
  } while (0)

std::string n(std::uint64_t v) { return std::to_string(v); }

// A pool of 16 pages over 64 slots on the host backend, holding a slab page with an alias, a
// large run of 3 and a reserve of 4 (no corruption survives into destroy(): the backend gives
// everything back when it goes).
class PagePoolValidate : public ::testing::Test {
 protected:
  void SetUp() override {
    BackendOptions options;
    options.choice = BackendChoice::host;
    options.host_capacity = 64u << 20;
    auto opened = open_backend(options);
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    backend = std::move(opened).value();
    pool = std::make_unique<PagePool>(*backend, 16);
    ASSERT_TRUE(pool->init(64).ok());
    ASSERT_TRUE(pool->balance(4, 8).ok());
    slab = pool->take_page(SlotKind::slab, 1).value();
    alias = pool->share_page(slab, SlotKind::slab, 1).value();
    large = pool->take_run(3, 7).value();
    ASSERT_TRUE(pool->balance(4, 8).ok());
    for (std::uint32_t s = 0; s < pool->slot_count(); ++s) {
      if (pool->slot(s).kind == SlotKind::reserve && reserve_slot == kNone) reserve_slot = s;
      if (pool->slot(s).kind == SlotKind::unmapped) unmapped_slot = s;
    }
    ASSERT_NE(reserve_slot, kNone);
    ASSERT_NE(unmapped_slot, kNone);
    ASSERT_EQ(failure(*pool), "");
  }

  static constexpr std::uint32_t kNone = ~0u;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<PagePool> pool;
  std::uint32_t slab = 0, alias = 0, large = 0, reserve_slot = kNone, unmapped_slot = kNone;
};

TEST_F(PagePoolValidate, UntouchedPoolPassesThroughItsOperations) {
  auto grown = pool->extend_run(large + 3, 1, 7);
  ASSERT_TRUE(grown.ok());
  ASSERT_EQ(failure(*pool), "");
  auto moved = pool->relocate_run(large, *grown ? 4 : 3, 6, 7);
  ASSERT_TRUE(moved.ok());
  ASSERT_EQ(failure(*pool), "");
  auto plan = pool->plan_remap(*moved, slab);
  ASSERT_TRUE(pool->remap_calls(plan).ok());
  pool->commit_remap(plan);
  ASSERT_EQ(failure(*pool), "");
  auto batch = pool->begin_release(0, 2);
  ASSERT_EQ(failure(*pool), "") << "slots being released without the lock";
  pool->release_calls(batch);
  ASSERT_TRUE(pool->finish_release(batch).ok());
  ASSERT_EQ(failure(*pool), "");
  ASSERT_TRUE(pool->release_idle(pool->idle_pages()).ok());
  // The remapped slot is now an alias of the slab page: unmapped like one.
  ASSERT_TRUE(pool->drop_alias(*moved).ok());
  ASSERT_TRUE(pool->drop_alias(alias).ok());
  pool->give_back(*moved + 1, 5);
  pool->give_back(slab, 1);
  ASSERT_EQ(failure(*pool), "");
  EXPECT_TRUE(pool->destroy().ok());
}

TEST_F(PagePoolValidate, CatchesAnUnmappedSlotWithAPage) {
  pool->slot(unmapped_slot).phys = pool->slot(slab).phys;
  EXPECT_CAUGHT(*pool, "unmapped slot " + n(unmapped_slot) + " has a page");
}

TEST_F(PagePoolValidate, CatchesAnUnmappedSlotMissingFromTheFreeSet) {
  ASSERT_TRUE(Peer::unmapped(*pool).take_exact(unmapped_slot, 1));
  EXPECT_CAUGHT(*pool, "unmapped slot " + n(unmapped_slot) + " missing from the free set");
}

TEST_F(PagePoolValidate, CatchesAnUnmappedSlotListedInTheReserve) {
  Peer::reserve(*pool).insert(unmapped_slot, 1);
  EXPECT_CAUGHT(*pool, "unmapped slot " + n(unmapped_slot) + " listed in the reserve");
}

TEST_F(PagePoolValidate, CatchesAUsedSlotWithoutALivePage) {
  pool->slot(large + 1).phys = kNoPhys;
  EXPECT_CAUGHT(*pool, "slot " + n(large + 1) + " in use without a live page");
}

TEST_F(PagePoolValidate, CatchesAReserveSlotMissingFromTheReserveSet) {
  ASSERT_TRUE(Peer::reserve(*pool).take_exact(reserve_slot, 1));
  EXPECT_CAUGHT(*pool, "reserve slot " + n(reserve_slot) + " missing from the reserve set");
}

TEST_F(PagePoolValidate, CatchesAReserveSlotBothReservedAndBeingReleased) {
  Peer::releasing(*pool).insert(reserve_slot, 1);
  EXPECT_CAUGHT(*pool, "reserve slot " + n(reserve_slot) + " both in the reserve and being released");
}

TEST_F(PagePoolValidate, CatchesAUsedSlotListedAsFree) {
  Peer::unmapped(*pool).insert(slab, 1);
  EXPECT_CAUGHT(*pool, "used slot " + n(slab) + " listed as free");
}

TEST_F(PagePoolValidate, CatchesRangeSetsListingSlotsPastTheArena) {
  const std::uint32_t past = pool->slot_count() + 2;
  Peer::reserve(*pool).insert(past, 1);
  EXPECT_CAUGHT(*pool, "reserve set and slot table disagree");
  ASSERT_TRUE(Peer::reserve(*pool).take_exact(past, 1));
  Peer::unmapped(*pool).insert(past, 1);
  EXPECT_CAUGHT(*pool, "unmapped set and slot table disagree");
  ASSERT_TRUE(Peer::unmapped(*pool).take_exact(past, 1));
  Peer::releasing(*pool).insert(past, 1);
  EXPECT_CAUGHT(*pool, "releasing set and slot table disagree");
}

TEST_F(PagePoolValidate, CatchesWrongKindCounts) {
  ++Peer::kind_count(*pool, SlotKind::large);
  EXPECT_CAUGHT(*pool, "slot kind 3 counted 4 times, the slot table has 3");
}

TEST_F(PagePoolValidate, CatchesAWrongMappingCount) {
  const std::uint32_t p = pool->slot(slab).phys;
  --Peer::phys(*pool)[p].mappings;  // the slab slot and its alias map it: 2
  EXPECT_CAUGHT(*pool, "page " + n(p) + " mapping count is wrong (1, slots map it 2 times)");
}

TEST_F(PagePoolValidate, CatchesAMappedPageListedIdle) {
  Peer::idle(*pool).push_back(pool->slot(large).phys);
  EXPECT_CAUGHT(*pool, "idle page is mapped or dead");
}

TEST_F(PagePoolValidate, CatchesAnIdlePageListedTwice) {
  const std::uint32_t p = Peer::create_page(*pool);
  Peer::idle(*pool).push_back(p);
  ASSERT_EQ(failure(*pool), "");
  Peer::idle(*pool).push_back(p);
  EXPECT_CAUGHT(*pool, "idle page " + n(p) + " listed twice");
}

TEST_F(PagePoolValidate, CatchesALeakedPage) {
  Peer::create_page(*pool);  // created, mapped nowhere, not idle
  EXPECT_CAUGHT(*pool, "a created page is mapped nowhere and not idle (leak)");
}

TEST_F(PagePoolValidate, CatchesAnUnusedPageRecordInUse) {
  const std::uint32_t p = pool->slot(large).phys;
  Peer::free_phys(*pool).push_back(p);
  EXPECT_CAUGHT(*pool, "unused page record " + n(p) + " is in use");
}

TEST_F(PagePoolValidate, CatchesAWrongCreatedCount) {
  ++Peer::created(*pool);
  EXPECT_CAUGHT(*pool, "created page count is wrong");
}

TEST_F(PagePoolValidate, CatchesMorePagesThanTheCapacity) {
  Peer::capacity(*pool) = pool->created_pages() - 1;
  EXPECT_CAUGHT(*pool, "more pages than the capacity");
}

TEST_F(PagePoolValidate, CatchesAHeldSlotThatMapsNoPageInUse) {
  const std::uint32_t slots[] = {reserve_slot};
  pool->hold(slots);
  EXPECT_CAUGHT(*pool, "slot " + n(reserve_slot) + " is held by queued work but maps no page in use");
  pool->unhold(slots);
  EXPECT_EQ(failure(*pool), "");
}

}  // namespace
}  // namespace valet::detail

#undef EXPECT_CAUGHT  // the unity build puts the validate tests in one translation unit
