// The heap's internal structures on their own: size classes and the free-range sets.
#include <gtest/gtest.h>

#include <algorithm>

#include <random>
#include <set>
#include <thread>

#include "heap_test_util.h"
#include "page_pool.h"
#include "valet/counting_backend.h"
#include "range_set.h"
#include "size_classes.h"
#include "thread_scratch.h"
#include "valet/runtime.h"

namespace valet::detail {
namespace {

TEST(SizeClasses, EveryRequestFitsItsClassWithBoundedWaste) {
  for (std::size_t bytes = 1; bytes <= kMaxSlabObject; bytes += 1 + bytes / 97) {
    const std::uint32_t c = class_of(bytes);
    ASSERT_LT(c, kClassCount);
    ASSERT_GE(class_size(c), bytes);
    if (c > 0) {
      ASSERT_LT(class_size(c - 1), bytes) << "not the smallest class for " << bytes;
    }
    ASSERT_EQ(class_size(c) % 256, 0u);
    if (bytes > 1024) {
      ASSERT_LT(double(class_size(c) - bytes) / double(class_size(c)), 0.25) << bytes;
    } else {
      ASSERT_LT(class_size(c) - bytes, 256u);
    }
  }
  EXPECT_EQ(class_of(kMaxSlabObject), kClassCount - 1);
  EXPECT_GE(class_slots(kClassCount - 1), 2u);
}

TEST(RangeSet, CoalescesAndFindsBestFit) {
  RangeSet s;
  s.insert(10, 5);
  s.insert(20, 3);
  s.insert(15, 5);  // joins both neighbours: [10, 23)
  EXPECT_EQ(s.range_count(), 1u);
  EXPECT_EQ(s.total(), 13u);
  s.insert(100, 2);
  EXPECT_EQ(*s.take_best_fit(2), 100u) << "best fit takes the smallest range that fits";
  EXPECT_EQ(*s.take_best_fit(4), 10u);
  EXPECT_FALSE(s.take_best_fit(10).has_value());
  EXPECT_TRUE(s.take_exact(16, 2));  // splits [14, 23) into [14,16) and [18,23)
  EXPECT_EQ(s.range_count(), 2u);
  EXPECT_FALSE(s.take_exact(15, 2));
  EXPECT_EQ(s.find(19)->start, 18u);
  EXPECT_FALSE(s.find(16).has_value());
  EXPECT_EQ(s.largest(), 5u);
}

TEST(RangeSet, MatchesAModelUnderRandomOperations) {
  RangeSet s;
  std::set<std::uint32_t> model;
  std::mt19937 rng(1);
  for (std::uint32_t i = 0; i < 1000; ++i) model.insert(i);
  s.insert(0, 1000);
  for (int op = 0; op < 5000; ++op) {
    const std::uint32_t len = 1 + rng() % 8;
    if (rng() % 2) {
      auto start = s.take_best_fit(len);
      if (!start) continue;
      for (std::uint32_t k = *start; k < *start + len; ++k) ASSERT_EQ(model.erase(k), 1u);
    } else {
      const std::uint32_t at = rng() % 1000;
      bool free = at + len <= 1000;
      for (std::uint32_t k = at; free && k < at + len; ++k) free = !model.count(k);
      if (!free) continue;
      s.insert(at, len);
      for (std::uint32_t k = at; k < at + len; ++k) model.insert(k);
    }
    ASSERT_EQ(s.total(), model.size());
  }
  std::uint64_t covered = 0;
  std::uint32_t prev_end = 0;
  bool first = true;
  s.for_each([&](RangeSet::Range r) {
    if (!first) {
      EXPECT_GT(r.start, prev_end) << "adjacent ranges were not merged";
    }
    first = false;
    prev_end = r.start + r.length;
    for (std::uint32_t k = r.start; k < r.start + r.length; ++k) EXPECT_TRUE(model.count(k));
    covered += r.length;
  });
  EXPECT_EQ(covered, model.size());
}

// Long ranges across the bitmap's words, taken exactly and found from any of their slots, agree
// with a model: the range holding a slot runs from the first member after a non-member to the last.
TEST(RangeSet, FindsAndTakesRangesAcrossWordsLikeAModel) {
  RangeSet s;
  std::vector<bool> model(5000, false);
  std::mt19937 rng(7);
  auto model_range = [&](std::uint32_t slot) -> std::optional<RangeSet::Range> {
    if (!model[slot]) return std::nullopt;
    std::uint32_t a = slot, b = slot;
    while (a > 0 && model[a - 1]) --a;
    while (b + 1 < model.size() && model[b + 1]) ++b;
    return RangeSet::Range{a, b - a + 1};
  };
  for (int op = 0; op < 4000; ++op) {
    const std::uint32_t at = rng() % 4800, len = 1 + rng() % 190;
    bool all_in = true, none_in = true;
    for (std::uint32_t k = at; k < at + len; ++k) (model[k] ? none_in : all_in) = false;
    if (rng() % 2) {
      ASSERT_EQ(s.take_exact(at, len), all_in) << at << "+" << len;
      if (all_in)
        for (std::uint32_t k = at; k < at + len; ++k) model[k] = false;
    } else if (none_in) {
      s.insert(at, len);
      for (std::uint32_t k = at; k < at + len; ++k) model[k] = true;
    }
    const std::uint32_t probe = rng() % 5000;
    const auto want = model_range(probe);
    const auto got = s.find(probe);
    ASSERT_EQ(got.has_value(), want.has_value()) << probe;
    if (want) {
      ASSERT_EQ(got->start, want->start) << probe;
      ASSERT_EQ(got->length, want->length) << probe;
      // The same range, clipped to a window around the probe, from the bitmap alone.
      const std::uint32_t lo = probe - std::min<std::uint32_t>(probe, rng() % 300);
      const std::uint32_t hi = std::min<std::uint32_t>(5000, probe + 1 + rng() % 300);
      const RangeSet::Range piece = s.piece_within(probe, lo, hi);
      ASSERT_EQ(piece.start, std::max(want->start, lo)) << probe << " in [" << lo << ", " << hi << ")";
      ASSERT_EQ(piece.start + piece.length, std::min(want->start + want->length, hi)) << probe;
      ASSERT_EQ(s.count_within(lo, hi), std::uint32_t(std::count(model.begin() + lo, model.begin() + hi, true)));
    }
    ASSERT_EQ(s.contains(probe), want.has_value()) << probe;
  }
  std::uint64_t covered = 0;
  s.for_each([&](RangeSet::Range r) {
    const auto want = model_range(r.start);
    ASSERT_TRUE(want.has_value());
    EXPECT_EQ(want->start, r.start);
    EXPECT_EQ(want->length, r.length);
    covered += r.length;
  });
  EXPECT_EQ(covered, std::uint64_t(std::count(model.begin(), model.end(), true)));
  EXPECT_EQ(s.total(), covered);
}

// A thread's scratch object is its own while it lives; once the thread's thread_locals are being
// destroyed (a heap call from a user's thread_local destructor at thread exit), the heap gets null
// and uses an object of its own, never a destroyed one.
TEST(ThreadScratch, IsTheThreadsOwnAndNullOnceDestroyed) {
  struct ScratchTag;
  struct CallsAtExit {
    bool* saw_null;
    ~CallsAtExit() {
      *saw_null = thread_scratch<std::vector<int>, ScratchTag>() == nullptr;
      ScratchOrOwn<std::vector<int>, ScratchTag> scratch;  // then the call's own vector
      scratch.get().push_back(1);
      *saw_null = *saw_null && scratch.get().size() == 1;
    }
  };
  bool saw_null = false;
  std::vector<int>* mine = nullptr;
  std::vector<int>* other = nullptr;
  std::thread([&] {
    thread_local CallsAtExit at_exit{&saw_null};  // constructed first, so destroyed last
    (void)at_exit;
    mine = thread_scratch<std::vector<int>, ScratchTag>();
    mine->push_back(7);
    std::vector<int>* again = thread_scratch<std::vector<int>, ScratchTag>();
    EXPECT_EQ(again, mine);
  }).join();
  std::thread([&] {
    other = thread_scratch<std::vector<int>, ScratchTag>();
    EXPECT_TRUE(other != nullptr && other->empty());  // a new thread's own, not the last one's
  }).join();
  EXPECT_TRUE(saw_null);
  EXPECT_NE(mine, nullptr);
  EXPECT_NE(other, nullptr);
}

// Ranges far apart (a sparse set, as the chunk reserve is) are walked in address order through
// the summary of words with members; a set ordered by slot only answers by slot all the same.
TEST(RangeSet, WalksASparseSetAndOneOrderedBySlotOnly) {
  for (const auto order : {RangeSet::Order::by_length, RangeSet::Order::by_slot_only}) {
    RangeSet s(order);
    s.insert(300000, 2);
    s.insert(3, 1);
    s.insert(64 * 64 * 5 + 63, 2);  // across a word's end, past the first summary word
    std::vector<std::pair<std::uint32_t, std::uint32_t>> seen;
    s.for_each([&](RangeSet::Range r) { seen.push_back({r.start, r.length}); });
    const std::vector<std::pair<std::uint32_t, std::uint32_t>> want = {{3, 1}, {64 * 64 * 5 + 63, 2}, {300000, 2}};
    EXPECT_EQ(seen, want);
    EXPECT_EQ(s.range_count(), 3u);
    EXPECT_EQ(s.find(300001)->start, 300000u);
    ASSERT_TRUE(s.take_exact(300000, 2));
    ASSERT_TRUE(s.take_exact(3, 1));
    seen.clear();
    s.for_each([&](RangeSet::Range r) { seen.push_back({r.start, r.length}); });
    EXPECT_EQ(seen.size(), 1u);
    EXPECT_FALSE(s.empty());
    ASSERT_TRUE(s.take_exact(64 * 64 * 5 + 63, 2));
    EXPECT_TRUE(s.empty());
    EXPECT_EQ(s.total(), 0u);
  }
}

// A range of thousands of slots (as the unmapped slots' is) is found from its far end, through
// the summary of full words, and split where a slot is taken.
TEST(RangeSet, FindsTheStartOfAVeryLongRange) {
  RangeSet s;
  s.insert(5, 100000);
  EXPECT_EQ(s.find(100004)->start, 5u);
  EXPECT_EQ(s.find(100004)->length, 100000u);
  EXPECT_FALSE(s.find(100005).has_value());
  EXPECT_FALSE(s.find(4).has_value());
  ASSERT_TRUE(s.take_exact(70000, 1));
  EXPECT_EQ(s.find(100004)->start, 70001u);
  EXPECT_EQ(s.find(69999)->start, 5u);
  EXPECT_EQ(s.find(64 * 64 * 3 + 17)->start, 5u);
  s.insert(70000, 1);
  EXPECT_EQ(s.find(100004)->start, 5u);
  EXPECT_EQ(s.range_count(), 1u);
}

// A host backend of 64 MiB for a page pool of 16 pages (null if it cannot be opened).
std::unique_ptr<Backend> host_backend() { return test::open_host_backend(64u << 20); }

// A large object growing in place must not take reserve slots that a lockless trim is
// releasing (their pages are about to be unmapped), though their kind still reads "reserve".
TEST(PagePool, GrowingInPlaceSkipsSlotsBeingReleased) {
  auto backend = host_backend();
  ASSERT_TRUE(backend);
  PagePool pool(*backend, 16);
  ASSERT_TRUE(pool.init(64).ok());
  auto run = pool.take_run(3, 7);
  ASSERT_TRUE(run.ok());
  pool.give_back(*run + 1, 2);  // shrink to one page: its two neighbours are reserve
  auto batch = pool.begin_release(0, 8);
  ASSERT_FALSE(batch.empty());
  ASSERT_EQ(pool.releasing_pages(), 2u);
  auto grown = pool.extend_run(*run + 1, 2, 7);
  ASSERT_TRUE(grown.ok());
  EXPECT_FALSE(*grown) << "took slots whose pages are being released";
  pool.release_calls(batch);
  ASSERT_TRUE(pool.finish_release(batch).ok());
  EXPECT_TRUE(pool.validate().ok());
  // Released (now unmapped) slots can be grown into.
  grown = pool.extend_run(*run + 1, 2, 7);
  ASSERT_TRUE(grown.ok());
  EXPECT_TRUE(*grown);
  EXPECT_TRUE(pool.validate().ok());
  pool.give_back(*run, 3);
  EXPECT_TRUE(pool.destroy().ok());
}

// Slots that queued work (a compaction copy) may touch are never unmapped: the pool refuses to,
// whichever call tries, and validate() catches a held slot that maps no page in use.
TEST(PagePool, NoUnmapWhileQueuedWorkHoldsTheSlot) {
  CountingBackend backend(host_backend());
  PagePool pool(backend, 16);
  ASSERT_TRUE(pool.init(64).ok());
  auto page = pool.take_page(SlotKind::slab, 1);
  ASSERT_TRUE(page.ok());
  auto alias = pool.share_page(*page, SlotKind::slab, 1);
  ASSERT_TRUE(alias.ok());
  const std::uint32_t slots[] = {*alias};
  pool.hold(slots);
  EXPECT_TRUE(pool.held(*alias));
  auto dropped = pool.drop_alias(*alias);
  ASSERT_FALSE(dropped.ok()) << "unmapped a slot that queued work holds";
  EXPECT_EQ(dropped.code(), Errc::internal);
  // A remap of a held slot onto another page is refused before any driver call.
  auto other = pool.take_page(SlotKind::slab, 2);
  ASSERT_TRUE(other.ok());
  const std::uint32_t other_slot[] = {*other};
  pool.hold(other_slot);
  auto plan = pool.plan_remap(*other, *page);
  const ThreadDriverCalls calls(backend);
  auto remapped = pool.remap_calls(plan);
  ASSERT_FALSE(remapped.ok()) << "remapped a slot that queued work holds";
  EXPECT_NE(remapped.error().message.find("queued work"), std::string::npos) << remapped.error().message;
  EXPECT_EQ(calls.made().total(), 0u) << "a driver call was made for a refused remap";
  pool.unhold(other_slot);
  pool.give_back(*other, 1);
  EXPECT_TRUE(pool.validate().ok());
  pool.unhold(slots);
  EXPECT_FALSE(pool.held(*alias));
  EXPECT_TRUE(pool.drop_alias(*alias).ok());
  EXPECT_TRUE(pool.validate().ok());
  // A held slot given back to the reserve (where a trim may unmap it) breaks the invariant.
  const std::uint32_t own[] = {*page};
  pool.hold(own);
  pool.give_back(*page, 1);
  auto valid = pool.validate();
  ASSERT_FALSE(valid.ok());
  EXPECT_NE(valid.error().message.find("held by queued work"), std::string::npos) << valid.error().message;
  auto batch = pool.begin_release(0, 8);
  pool.release_calls(batch);
  EXPECT_TRUE(pool.finish_release(batch).ok()) << "a held run left alone is no driver failure";
  EXPECT_EQ(pool.slot(*page).kind, SlotKind::reserve);
  EXPECT_NE(pool.slot(*page).phys, kNoPhys) << "a reserve trim unmapped a held slot";
  pool.unhold(own);
  EXPECT_TRUE(pool.validate().ok());
  EXPECT_TRUE(pool.destroy().ok());
}

}  // namespace
}  // namespace valet::detail
