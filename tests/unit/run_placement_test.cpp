// Placing a large run around the reserve (page_pool_window.cpp): when no reserve run is long
// enough, the run grows one in place where free slots follow it, so the reserve pages stay
// mapped where they are and only the missing slots get pages; a shared tail's body does the
// same with its last slot unmapped for the slab page. Counted at the backend door.
#include <gtest/gtest.h>

#include <vector>

#include "heap_test_util.h"
#include "page_pool.h"
#include "valet/counting_backend.h"

namespace valet::detail {
namespace {

struct CountedPool {
  CountingBackend door;
  PagePool pool;
  explicit CountedPool(std::size_t pages)
      : door(test::open_host_backend(pages * kPageBytes)), pool(door, pages) {}
};

std::vector<std::uint32_t> pages_at(const PagePool& pool, std::uint32_t start, std::uint32_t n) {
  std::vector<std::uint32_t> out;
  for (std::uint32_t s = start; s < start + n; ++s) out.push_back(pool.slot(s).phys);
  return out;
}

TEST(RunPlacement, ALongerRequestGrowsAReserveRunInPlaceAndMapsOnlyTheMissingPages) {
  CountedPool c(64);
  PagePool& pool = c.pool;
  ASSERT_TRUE(pool.init(256).ok());
  auto a = pool.take_run(4, 1);
  ASSERT_TRUE(a.ok());
  pool.give_back(*a, 4);  // a reserve run of 4 with free slots after it
  const auto before = pages_at(pool, *a, 4);
  ThreadDriverCalls scope(c.door);
  auto run = pool.take_run(6, 2);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  const DriverCallCounts made = scope.made();
  EXPECT_EQ(*run, *a) << "the run did not grow the reserve run where it is";
  EXPECT_EQ(pages_at(pool, *a, 4), before) << "the reserve pages moved";
  EXPECT_EQ(made[DriverOp::map], 2u);
  EXPECT_EQ(made[DriverOp::create_page], 2u);
  EXPECT_EQ(made[DriverOp::unmap], 0u);
  EXPECT_EQ(made[DriverOp::set_access], 1u);
  ASSERT_TRUE(pool.validate().ok()) << pool.validate().error().to_string();
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *run, 6, 3));
  pool.give_back(*run, 6);
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

TEST(RunPlacement, AWindowNeverCoversASlotInUse) {
  CountedPool c(64);
  PagePool& pool = c.pool;
  ASSERT_TRUE(pool.init(256).ok());
  auto a = pool.take_run(4, 1);
  auto slab = pool.take_page(SlotKind::slab, 7);
  ASSERT_TRUE(a.ok() && slab.ok());
  ASSERT_EQ(*slab, *a + 4);  // in use right after the run
  pool.give_back(*a, 4);
  const std::uint32_t slab_page = pool.slot(*slab).phys;
  auto run = pool.take_run(6, 2);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  EXPECT_TRUE(*run + 6 <= *slab || *run > *slab) << "the run covers the slab page's slot";
  EXPECT_EQ(pool.slot(*slab).kind, SlotKind::slab);
  EXPECT_EQ(pool.slot(*slab).phys, slab_page);
  ASSERT_TRUE(pool.validate().ok()) << pool.validate().error().to_string();
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *run, 6, 5));
  pool.give_back(*run, 6);
  pool.give_back(*slab, 1);
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

TEST(RunPlacement, ASharedTailsBodyTakesAReserveRunAndMapsOnlyTheSharedPage) {
  CountedPool c(64);
  PagePool& pool = c.pool;
  ASSERT_TRUE(pool.init(256).ok());
  auto slab = pool.take_page(SlotKind::slab, 7);
  auto a = pool.take_run(4, 1);
  ASSERT_TRUE(a.ok() && slab.ok());
  pool.give_back(*a, 4);
  const auto body = pages_at(pool, *a, 4);
  ThreadDriverCalls scope(c.door);
  auto run = pool.take_run_onto(5, 2, *slab);
  ASSERT_TRUE(run.ok()) << run.error().to_string();
  const DriverCallCounts made = scope.made();
  EXPECT_EQ(*run, *a);
  EXPECT_EQ(pages_at(pool, *a, 4), body);
  EXPECT_EQ(pool.slot(*run + 4).phys, pool.slot(*slab).phys) << "the last slot does not map the slab page's page";
  EXPECT_EQ(pool.mappings_of(*slab), 2u);
  EXPECT_EQ(made[DriverOp::map], 1u);
  EXPECT_EQ(made[DriverOp::set_access], 1u);
  EXPECT_EQ(made[DriverOp::create_page] + made[DriverOp::unmap], 0u);
  ASSERT_TRUE(pool.validate().ok()) << pool.validate().error().to_string();
  // The body's bytes are the object's; the last page's are shared with the slab page's slot.
  EXPECT_TRUE(test::pattern_holds(c.door, pool, *run, 4, 9));
  const PatternRange tail{pool.address(*run + 4), kPageBytes, 11};
  ASSERT_TRUE(c.door.fill_pattern({&tail, 1}, Stream{}).ok());
  const PatternRange seen{pool.address(*slab), kPageBytes, 11};
  auto differ = c.door.verify_pattern({&seen, 1}, Stream{});
  ASSERT_TRUE(differ.ok());
  EXPECT_EQ(*differ, 0u) << "the slab page's slot does not see the tail's bytes";
  EXPECT_TRUE(pool.validate().ok());
}

}  // namespace
}  // namespace valet::detail
