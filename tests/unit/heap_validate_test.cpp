// validate() catches what it claims to: each test breaks one invariant of a healthy heap through
// its internals, expects validate() to name it, and repairs it (so that the heap shuts down
// cleanly). The components' own invariants have their own tests; these are the checks that span
// components (heap_validate.cpp) and the small components of the heap core.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "heap_core.h"
#include "heap_test_util.h"
#include "size_classes.h"

namespace valet::detail {
namespace {

using test::kMiB;

class HeapValidate : public ::testing::Test {
 protected:
  void SetUp() override {
    heap_ = test::make_heap();
    ASSERT_TRUE(heap_);
    // A large object whose last page is shared with a slab page (its tail), small objects of
    // another class on a page of their own (so full that no large object's tail fits below
    // them), and a large object with an open tail.
    shared_large_ = *heap_->allocate(2 * kMiB + 512 * 1024);
    for (int i = 0; i < 3; ++i) small_.push_back(*heap_->allocate(4096));  // built on the tail
    for (int i = 0; i < 600; ++i) other_.push_back(*heap_->allocate(3000));
    open_large_ = *heap_->allocate(4 * kMiB + kMiB);
    ASSERT_TRUE(heap_->validate().ok()) << heap_->validate().error().to_string();
  }

  HeapCore& core() { return HeapInternals::of(*heap_); }
  HandleEntry* entry(Handle h) { return core().handles.get(h.index); }
  SlabPage* page_of(Handle h) { return core().slabs.page(core().pool.slot(entry(h)->loc.page).owner); }

  // Breaks an invariant, expects validate() to name it, repairs it, expects validate() to pass.
  void expect_caught(const std::string& words, const std::function<void()>& brk, const std::function<void()>& repair) {
    {
      std::lock_guard lock(core().mu);
      brk();
    }
    const Status st = heap_->validate();
    EXPECT_FALSE(st.ok()) << "not caught: " << words;
    if (!st.ok()) {
      EXPECT_NE(st.error().message.find(words), std::string::npos) << st.error().to_string();
    }
    {
      std::lock_guard lock(core().mu);
      repair();
    }
    EXPECT_TRUE(heap_->validate().ok()) << "the repair of \"" << words << "\" did not restore the heap";
  }

  std::unique_ptr<Heap> heap_;
  Handle shared_large_, open_large_;
  std::vector<Handle> small_, other_;
};

TEST_F(HeapValidate, AHealthyHeapPasses) { EXPECT_TRUE(heap_->validate().ok()); }

TEST_F(HeapValidate, CountersThatDisagreeWithTheObjects) {
  expect_caught("live byte count", [&] { ++core().live_bytes; }, [&] { --core().live_bytes; });
  expect_caught("live object count", [&] { ++core().live_objects; }, [&] { --core().live_objects; });
  expect_caught("footprint count", [&] { core().footprint_bytes += 256; }, [&] { core().footprint_bytes -= 256; });
  expect_caught("are not all deferred or in transit", [&] { ++core().in_transit; }, [&] { --core().in_transit; });
}

TEST_F(HeapValidate, AnObjectThatIsNotWhereItsHandleSays) {
  HandleEntry* e = entry(other_[0]);
  expect_caught("stale address", [&] { e->address.fetch_add(256); }, [&] { e->address.fetch_sub(256); });
  SlabPage* p = page_of(other_[0]);
  const std::uint32_t i = e->loc.index;
  // Another live object, one that owns no slab slot (the slabs' own check sees nothing wrong).
  expect_caught("names the wrong object", [&] { p->owners[i] = open_large_.index; }, [&] { p->owners[i] = other_[0].index; });
  HandleEntry* big = entry(open_large_);
  auto& slot = core().pool.slot(big->loc.page);
  expect_caught("is not its own", [&] { slot.owner = shared_large_.index; }, [&] { slot.owner = open_large_.index; });
  const std::size_t size = e->size();
  expect_caught("larger than its size class", [&] { e->set_size(class_size(p->cls) + 1); }, [&] { e->set_size(size); });
  const std::size_t big_size = big->size();
  expect_caught("large object larger than its pages", [&] { big->set_size(big->loc.pages * kPageSize + 1); },
                [&] { big->set_size(big_size); });
}

TEST_F(HeapValidate, ASlabPageWhoseBookkeepingIsWrong) {
  SlabPage* p = page_of(other_[0]);
  expect_caught("disagrees with its bitmap", [&] { ++p->used; }, [&] { --p->used; });
  std::uint32_t free_slot = 0;
  while (p->test(free_slot)) ++free_slot;
  expect_caught("has owner", [&] { p->owners[free_slot] = other_[0].index; },
                [&] { p->owners[free_slot] = kNoOwner; });
  expect_caught("is in no bucket and not being evacuated",
                [&] {
                  core().slabs.detach(p);
                  p->evacuating = false;
                },
                [&] { core().slabs.attach(p); });
  expect_caught("slots without a tail", [&] { p->blocked = 1; }, [&] { p->blocked = 0; });
  // An alias added behind the slabs' back: the page is no tail's host any more, its index says it is.
  ASSERT_GT(p->host_room, 0u) << "the page was expected among the tails' hosts";
  expect_caught("listed among the tails' hosts", [&] { p->aliases.push_back({entry(open_large_)->loc.page, 0}); },
                [&] { p->aliases.pop_back(); });
  auto& own = core().pool.slot(p->slot);
  expect_caught("and the slot table disagree", [&] { own.owner += 1000; }, [&] { own.owner -= 1000; });
  // 3000 bytes -> the 3072 class: 682 slots, so the last bitmap word has padding bits.
  ASSERT_NE(p->capacity % 64, 0u);
  const std::uint64_t pad = 1ull << 63;
  expect_caught("padding bits past the capacity were cleared", [&] { p->bitmap.back() &= ~pad; }, [&] { p->bitmap.back() |= pad; });
}

TEST_F(HeapValidate, AliasesThatDoNotMapTheirPage) {
  SlabPage* p = page_of(other_[0]);
  const std::uint32_t elsewhere = entry(open_large_)->loc.page;
  // Each break tells the slabs that the aliases changed, as the heap does: the index of tails'
  // hosts stays right, and what validate() must catch is the aliases themselves.
  auto changed = [&] { core().slabs.aliases_changed(p); };
  expect_caught("does not map its page", [&] { p->aliases.push_back({elsewhere, 0}); changed(); },
                [&] { p->aliases.pop_back(); changed(); });
  // A real second mapping of the page, listed with a user that no object accounts for.
  std::uint32_t alias = 0;
  expect_caught("user count is wrong",
                [&] {
                  alias = *core().pool.share_page(p->slot, SlotKind::slab, p->id);
                  p->aliases.push_back({alias, 1});
                  changed();
                },
                [&] {
                  p->aliases.pop_back();
                  changed();
                  ASSERT_TRUE(core().pool.drop_alias(alias).ok());
                });
  expect_caught("sharers, at most",
                [&] {
                  for (std::size_t k = 0; k < kMaxSharers; ++k) p->aliases.push_back({elsewhere, 0});
                  changed();
                },
                [&] { p->aliases.clear(); changed(); });
}

TEST_F(HeapValidate, TailsThatAreNotWhatTheySay) {
  SlabPage* tail_page = page_of(small_[0]);
  ASSERT_TRUE(tail_page->on_tail()) << "the small objects were expected on the large object's tail";
  const std::uint32_t tail = tail_page->tail_slot;
  auto& shared = HeapInternals::shared_tails(core().tails);
  expect_caught("is not linked to the tail it shares", [&] { shared.erase(tail); },
                [&] { shared[tail] = tail_page->id; });
  expect_caught("blocked slot 0 is free or owned", [&] { tail_page->owners[0] = small_[0].index; },
                [&] { tail_page->owners[0] = kNoOwner; });
  const std::uint32_t blocked = tail_page->blocked;
  expect_caught("does not block all of the tail's bytes", [&] { tail_page->blocked = 1; },
                [&] { tail_page->blocked = blocked; });
  const std::uint32_t not_a_tail = entry(open_large_)->loc.page;  // its first page, not its last
  expect_caught("names no slab page on it", [&] { shared[not_a_tail] = 1u << 30; }, [&] { shared.erase(not_a_tail); });
  auto& open = HeapInternals::open_tails(core().tails);
  const HandleEntry* big = entry(open_large_);
  const std::uint32_t last = big->loc.page + big->loc.pages - 1;
  ASSERT_TRUE(open.contains(last));
  // Fewer bytes than the object uses there (more is allowed: a run a thread cache gave back).
  expect_caught("disagrees with its object", [&] { --open[last]; }, [&] { ++open[last]; });
  const std::uint32_t slab_slot = page_of(other_[0])->slot;
  expect_caught("is not a large object's own last page", [&] { open[slab_slot] = 100; }, [&] { open.erase(slab_slot); });
}

TEST_F(HeapValidate, ALargeSlotThatNoObjectHolds) {
  std::uint32_t stray = 0;
  expect_caught("names an object that does not hold it",
                [&] { stray = *core().pool.take_page(SlotKind::large, open_large_.index); },
                [&] { core().pool.give_back(stray, 1); });
}

TEST_F(HeapValidate, TheSmallComponentsCheckThemselves) {
  auto& c = core();
  expect_caught("low watermark is above", [&] { c.config.reserve_low_pages = c.config.reserve_high_pages + 1; },
                [&] { c.config.reserve_low_pages = 2; });
  expect_caught("uploaded copy is newer", [&] { HeapInternals::uploaded_version(c.table) = 1u << 20; },
                [&] { HeapInternals::uploaded_version(c.table) = 0; });
  // A deferred free must wait on an event (checked on a component of its own: a corrupt list in
  // the heap would be released at shutdown).
  StreamReleases releases(heap_->backend());
  EXPECT_TRUE(releases.validate().ok());
  releases.defer({Location{}, 0, {}});
  const Status st = releases.validate();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("waits on no event"), std::string::npos);
}

// A thread cache's objects: freed, settled, each the owner of its slot, counted once.
TEST_F(HeapValidate, ThreadCacheObjectsThatAreNotWhatTheySay) {
  // Two frees: the first makes this thread's cache, the second is cached.
  ASSERT_TRUE(heap_->free(other_[0]).ok());
  ASSERT_TRUE(heap_->free(other_[1]).ok());
  ThreadCache* mine = nullptr;
  {
    std::lock_guard lock(core().mu);
    FastPathGate gate(core().caches);
    core().caches.for_each([&](ThreadCache& c) {
      if (!c.holds_nothing()) mine = &c;
    });
  }
  ASSERT_NE(mine, nullptr);
  const std::uint32_t cls = class_of(3000);
  ASSERT_FALSE(mine->bins[cls].empty());
  CachedSlot& cached = mine->bins[cls].back();
  expect_caught("is not a settled free entry", [&] { cached.index = other_[2].index; },
                [&] { cached.index = other_[1].index; });
  expect_caught("does not own the slab slot it names", [&] { ++cached.loc.index; }, [&] { --cached.loc.index; });
  expect_caught("has a stale address", [&] { cached.address += 256; }, [&] { cached.address -= 256; });
  expect_caught("byte count is wrong", [&] { mine->bytes += 256; }, [&] { mine->bytes -= 256; });
  expect_caught("live byte count is wrong", [&] { mine->live_bytes += 1; }, [&] { mine->live_bytes -= 1; });
  // Last: the copy may move the bin's storage.
  const CachedSlot twice = cached;
  expect_caught("cached twice", [&] { mine->bins[cls].push_back(twice); }, [&] { mine->bins[cls].pop_back(); });
}

TEST_F(HeapValidate, CachedRunsThatAreNotWhatTheySay) {
  ASSERT_TRUE(heap_->free(open_large_).ok());  // cached (this thread's cache made now)
  ThreadCache* mine = nullptr;
  {
    std::lock_guard lock(core().mu);
    FastPathGate gate(core().caches);
    core().caches.for_each([&](ThreadCache& c) {
      if (!c.runs.empty()) mine = &c;
    });
  }
  ASSERT_NE(mine, nullptr);
  ASSERT_EQ(mine->runs.size(), 1u);
  CachedRun& run = mine->runs.back();
  EXPECT_EQ(run.index, open_large_.index);
  expect_caught("is not a settled free entry of its bytes", [&] { ++run.bytes; }, [&] { --run.bytes; });
  expect_caught("does not name its object's run", [&] { ++run.loc.pages; }, [&] { --run.loc.pages; });
  auto& last = core().pool.slot(run.loc.page + run.loc.pages - 1);
  expect_caught("does not own page 2 of its run", [&] { last.owner = other_[0].index; },
                [&] { last.owner = open_large_.index; });
  expect_caught("has a wrong footprint or a stale address", [&] { run.address += kPageSize; }, [&] { run.address -= kPageSize; });
  expect_caught("run byte count is wrong", [&] { mine->run_bytes += kPageSize; }, [&] { mine->run_bytes -= kPageSize; });
  expect_caught("beyond its allowance", [&] { mine->run_allowance = 0; },
                [&] { mine->run_allowance = core().caches.runs_granted(); });
  expect_caught("do not add up", [&] { mine->run_allowance += kPageSize; }, [&] { mine->run_allowance -= kPageSize; });
  // A run the cache lost: its entry is neither live, free nor cached.
  const CachedRun lost = run;
  expect_caught("leaked indices",
                [&] {
                  mine->runs.clear();
                  mine->run_bytes = 0;
                },
                [&] {
                  mine->runs.push_back(lost);
                  mine->run_bytes = lost.footprint;
                });
}

}  // namespace
}  // namespace valet::detail
