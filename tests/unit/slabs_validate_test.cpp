// Slabs::validate (heap/src/slabs_validate.cpp): an untouched set of slab pages passes through
// every kind of operation, and each kind of corruption it claims to catch is caught, with a
// message naming it. Pages are corrupted through their public fields, the bucket lists and the
// page table through SlabsTestPeer.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "invariants.h"
#include "slabs.h"

namespace valet::detail {

struct SlabsTestPeer {
  static Slabs::PageList& bucket(Slabs& s, std::uint32_t cls, std::size_t b) { return s.buckets_[cls][b]; }
  static void unlink(Slabs& s, SlabPage* p) { bucket(s, p->cls, p->bucket).erase(bucket(s, p->cls, p->bucket).iterator_to(*p)); }
  static std::vector<std::uint32_t>& free_ids(Slabs& s) { return s.free_ids_; }
  static std::size_t& live_pages(Slabs& s) { return s.live_pages_; }
};

namespace {

// A class whose page has more than one bitmap word and a partial last word (padding bits).
std::uint32_t padded_class() {
  for (std::uint32_t c = 0; c < kClassCount; ++c)
    if (class_slots(c) % 64 != 0 && class_slots(c) > 128) return c;
  return kClassCount;
}

// The first broken rule validate() reports, or "" when it passes.
std::string failure(const Slabs& s) {
  auto st = s.validate();
  return st.ok() ? std::string() : st.error().message;
}

#define EXPECT_CAUGHT(slabs, text)                                                     \
  do {                                                                                 \
    const std::string msg_ = failure(slabs);                                           \
    EXPECT_NE(msg_.find(text), std::string::npos) << "expected \"" << (text) << "\", got \"" << msg_ << "\""; \
  } while (0)

class SlabsValidate : public ::testing::Test {
 protected:
  void SetUp() override {
    cls = padded_class();
    ASSERT_LT(cls, kClassCount) << "no size class with a partial bitmap word";
    up = slabs.create(cls, 10);    // id 0: ascending
    down = slabs.create(cls, 11);  // id 1: descending
    for (std::uint32_t k = 0; k < 70; ++k) slabs.take_slot(up, 100 + k);
    for (std::uint32_t k = 0; k < 5; ++k) slabs.take_slot(down, 200 + k);
    ASSERT_EQ(failure(slabs), "");
  }

  Slabs slabs;
  std::uint32_t cls = 0;
  SlabPage* up = nullptr;
  SlabPage* down = nullptr;
};

TEST_F(SlabsValidate, UntouchedPagesPassThroughEveryOperation) {
  // Random takes, frees, detach/attach, tails, folds and destroys, validated after each step.
  std::mt19937 rng(7);
  std::vector<SlabPage*> pages{up, down};
  std::uint32_t next_owner = 1000, next_slot = 20;
  for (int step = 0; step < 3000; ++step) {
    SlabPage* p = pages[rng() % pages.size()];
    switch (rng() % 8) {
      case 0:
      case 1:
        if (p->used < p->capacity) slabs.take_slot(p, next_owner++);
        break;
      case 2:
      case 3: {
        const std::uint32_t i = std::uint32_t(rng() % p->capacity);
        if (p->test(i) && p->owners[i] != kNoOwner) slabs.free_slot(p, i);
        break;
      }
      case 4:
        if (p->evacuating) slabs.attach(p); else slabs.detach(p);
        break;
      case 5:
        if (!p->on_tail() && p->used == 0) slabs.block_tail(p, 900 + next_slot, 3);
        else if (p->on_tail()) slabs.unblock_tail(p);
        break;
      case 6:
        if (pages.size() < 6) pages.push_back(slabs.create(cls, next_slot++));
        break;
      case 7: {
        SlabPage* q = pages[rng() % pages.size()];
        if (q != p && pages.size() > 2 && !p->on_tail() && !q->on_tail() && disjoint(*p, *q)) {
          slabs.detach(p);
          slabs.detach(q);
          slabs.fold(p, q);
          std::erase(pages, q);
        }
        break;
      }
    }
    ASSERT_EQ(failure(slabs), "") << "step " << step;
  }
}

TEST_F(SlabsValidate, CatchesAFlippedBitmapBit) {
  down->bitmap[0] |= 1ull << 40;  // taken in the bitmap, not counted
  EXPECT_CAUGHT(slabs, "page 1 (slot 11): used count 5 disagrees with its bitmap (6 taken)");
}

TEST_F(SlabsValidate, CatchesAClearedPaddingBit) {
  const std::uint32_t first_pad = up->capacity % 64;
  up->bitmap.back() &= ~(1ull << first_pad);
  EXPECT_CAUGHT(slabs, "page 0 (slot 10): bitmap padding bits past the capacity were cleared");
}

TEST_F(SlabsValidate, CatchesAFreeSlotWithAnOwner) {
  up->owners[up->capacity - 1] = 77;
  EXPECT_CAUGHT(slabs, "free slot " + std::to_string(up->capacity - 1) + " has owner 77");
}

TEST_F(SlabsValidate, CatchesBlockedSlotsWithoutATail) {
  up->blocked = 2;
  EXPECT_CAUGHT(slabs, "page 0 (slot 10): blocks 2 slots without a tail");
}

TEST_F(SlabsValidate, CatchesABlockedSlotThatIsOwnedOrFree) {
  SlabPage* p = slabs.create(cls, 12);
  slabs.block_tail(p, 40, 3);
  ASSERT_EQ(failure(slabs), "");
  p->owners[1] = 5;
  EXPECT_CAUGHT(slabs, "blocked slot 1 is free or owned");
  p->owners[1] = kNoOwner;
  slabs.free_slot(p, 2);
  EXPECT_CAUGHT(slabs, "blocked slot 2 is free or owned");
}

TEST_F(SlabsValidate, CatchesAFreeSlotBehindTheFillHint) {
  ASSERT_EQ(up->hint, 1u) << "70 slots taken from the bottom: the search starts at word 1";
  // Free slot 3 behind the scan's back (consistently: bit, owner, count, bucket), hint kept.
  up->bitmap[0] &= ~(1ull << 3);
  up->owners[3] = kNoOwner;
  --up->used;
  EXPECT_CAUGHT(slabs, "a free slot in word 0 lies behind the fill hint 1 (ascending)");
}

TEST_F(SlabsValidate, CatchesTooManySharersAndBadAliases) {
  for (std::uint32_t k = 0; k < kMaxSharers; ++k) up->aliases.push_back({100 + k, 0});
  EXPECT_CAUGHT(slabs, "has " + std::to_string(kMaxSharers + 1) + " sharers, at most " + std::to_string(kMaxSharers));
  up->aliases = {{50, 0}, {50, 0}};
  EXPECT_CAUGHT(slabs, "alias slot 50 listed twice");
  up->aliases = {{up->slot, 0}};
  EXPECT_CAUGHT(slabs, "its own slot is listed as an alias");
}

TEST_F(SlabsValidate, CatchesAPageInTheWrongBucketForItsOccupancy) {
  SlabPage* p = slabs.create(cls, 12);  // empty: bucket 0
  // Take a slot behind the slabs' back (bit, owner, count and lowest slot agree) without
  // rebucketing.
  p->bitmap[0] |= 1;
  p->owners[0] = 300;
  p->used = 1;
  p->lowest = 0;
  EXPECT_CAUGHT(slabs, "page 2 (slot 12): sits in bucket 0, but its occupancy 1/" + std::to_string(p->capacity) +
                           " belongs in bucket 1");
}

TEST_F(SlabsValidate, CatchesALowestTakenSlotThatDisagreesWithTheBitmap) {
  // The search for a tail's host reads `lowest`, not the bitmap: a stale one would offer a span
  // that objects occupy.
  const std::uint32_t i = slabs.take_slot(up, 301);
  ASSERT_EQ(up->lowest, std::min(up->lowest, i));
  up->lowest = up->capacity;
  EXPECT_CAUGHT(slabs, "lowest taken slot " + std::to_string(up->capacity) + " disagrees with its bitmap");
}

TEST_F(SlabsValidate, CatchesAPageListedInAnotherBucket) {
  const std::size_t b = up->bucket;
  SlabsTestPeer::unlink(slabs, up);
  SlabsTestPeer::bucket(slabs, cls, b + 1).push_back(*up);
  EXPECT_CAUGHT(slabs, "bucket " + std::to_string(b + 1) + " of class " + std::to_string(cls) + " lists page 0 of class " +
                           std::to_string(cls) + ", bucket " + std::to_string(b));
}

TEST_F(SlabsValidate, CatchesAPageListedUnderAnotherClass) {
  SlabsTestPeer::unlink(slabs, down);
  SlabsTestPeer::bucket(slabs, cls + 1, down->bucket).push_back(*down);
  EXPECT_CAUGHT(slabs, "of class " + std::to_string(cls + 1) + " lists page 1 of class " + std::to_string(cls));
}

TEST_F(SlabsValidate, CatchesAPageInNoBucket) {
  SlabsTestPeer::unlink(slabs, down);
  EXPECT_CAUGHT(slabs, "page 1 (slot 11): is in no bucket and not being evacuated");
}

TEST_F(SlabsValidate, CatchesAnEvacuatingPageStillInABucket) {
  down->evacuating = true;  // without detach()
  EXPECT_CAUGHT(slabs, "page 1 (slot 11): is being evacuated but sits in a bucket");
}

TEST_F(SlabsValidate, CatchesAnObjectOwningTwoSlots) {
  slabs.take_slot_at(down, 100, 104);  // 104 owns slot 4 of page 0 already
  EXPECT_CAUGHT(slabs, "object 104 owns slot 4 of page 0 and slot 100 of page 1");
}

TEST_F(SlabsValidate, CatchesAWrongShape) {
  up->capacity += 1;
  EXPECT_CAUGHT(slabs, "page 0 (slot 10): capacity " + std::to_string(up->capacity) + ", but class");
  up->capacity -= 1;
  up->cls = kClassCount;
  EXPECT_CAUGHT(slabs, "class " + std::to_string(kClassCount) + " out of range");
}

TEST_F(SlabsValidate, CatchesAPageTableOutOfStep) {
  ++SlabsTestPeer::live_pages(slabs);
  EXPECT_CAUGHT(slabs, "live page count 3, but 2 pages are live");
  --SlabsTestPeer::live_pages(slabs);
  up->id = 5;
  EXPECT_CAUGHT(slabs, "page table entry 0 holds page 5");
}

TEST_F(SlabsValidate, CatchesABrokenFreeIdList) {
  SlabPage* p = slabs.create(cls, 12);
  slabs.destroy(p);
  ASSERT_EQ(failure(slabs), "");
  auto& ids = SlabsTestPeer::free_ids(slabs);
  ids.push_back(2);
  EXPECT_CAUGHT(slabs, "free id 2 is listed twice");
  ids.back() = 0;
  EXPECT_CAUGHT(slabs, "free id 0 names a live page");
  ids.back() = 9;
  EXPECT_CAUGHT(slabs, "free id 9 is past the page table (3)");
  ids.clear();
  EXPECT_CAUGHT(slabs, "dead page 2 is not among the free ids");
}

// The slabs' preconditions are assertions (invariants.h): on where the build's tier says.
TEST_F(SlabsValidate, BrokenPreconditionsAbortWhereAssertionsAreOn) {
  if constexpr (!kAssertions) GTEST_SKIP() << "assertions are compiled out of this build (Release)";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(slabs.take_slot_at(up, 0, 1), "invariant failed at .*slabs.cpp");
  EXPECT_DEATH(slabs.free_slot(down, 0), "invariant failed at .*slabs.cpp");
}

}  // namespace
}  // namespace valet::detail

#undef EXPECT_CAUGHT  // the unity build puts the validate tests in one translation unit
