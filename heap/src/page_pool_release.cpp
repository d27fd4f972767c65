// The page pool's reserve trimming and refilling (page_pool.h): the lockless release batch
// (begin_release, release_calls, finish_release), idle pages, and balance(), which runs the
// same batch in place.
#include <algorithm>

#include "page_pool.h"
#include "thread_scratch.h"

namespace valet::detail {

namespace {

// Retired release batches, empty with their capacity, for the thread's next ones.
constexpr std::size_t kSpareReleases = 2;
struct SpareReleases;
std::vector<PagePool::ReleaseBatch>* spare_releases() {
  return thread_scratch<std::vector<PagePool::ReleaseBatch>, SpareReleases>();
}
struct KeptRuns;

}  // namespace

void PagePool::retire_release(ReleaseBatch& b) {
  b.runs.clear();
  b.phys.clear();
  b.pages.clear();
  b.released.clear();
  b.idle = 0;
  if (auto* spares = spare_releases(); spares && spares->size() < kSpareReleases) spares->push_back(std::move(b));
  b = ReleaseBatch{};
}

PagePool::ReleaseBatch PagePool::begin_release(std::size_t keep, std::size_t max_pages, bool with_idle,
                                               std::size_t free_chunk_pages) {
  ReleaseBatch b;
  if (auto* spares = spare_releases(); spares && !spares->empty()) {
    b = std::move(spares->back());
    spares->pop_back();
  }
  std::size_t want = reserve_.total() > keep ? std::min<std::size_t>(reserve_.total() - keep, max_pages) : 0;
  // Every whole free chunk, beside the reserve's surplus (page_pool_chunks.cpp).
  take_free_chunks(b, free_chunk_pages);
  // Runs left in the reserve, put back after the loop (the thread's list, kept from call to call).
  ScratchOrOwn<std::vector<RangeSet::Range>, KeptRuns> scratch;
  std::vector<RangeSet::Range>& kept = scratch.get();
  kept.clear();
  while (want > 0 && !reserve_.empty()) {
    auto r = *reserve_.take_smallest();
    std::uint32_t k = std::uint32_t(std::min<std::size_t>(r.length, want));
    std::uint32_t start = r.start + (r.length - k);
    // A page a dropping alias still maps stays (released, its record would go while a slot
    // maps it): only the slots after the last such page leave.
    for (std::uint32_t s = start; s < r.start + r.length; ++s)
      if (phys_[slots_[s].phys].dropping > 0) start = s + 1;
    k = r.start + r.length - start;
    if (start > r.start) kept.push_back({r.start, start - r.start});
    if (k == 0) continue;
    releasing_.insert(start, k);
    b.runs.push_back({start, k, false});
    for (std::uint32_t s = start; s < start + k; ++s) {
      b.phys.push_back(slots_[s].phys);
      b.pages.push_back(phys_[slots_[s].phys].page);
    }
    want -= k;
  }
  for (const auto& r : kept) reserve_.insert(r.start, r.length);
  if (with_idle) {
    // At most a batch's worth: pages in flight still count as created (and mapped).
    b.idle = std::min(idle_.size(), max_pages);
    in_flight_idle_ += b.idle;
    for (std::size_t k = idle_.size() - b.idle; k < idle_.size(); ++k) {
      b.phys.push_back(idle_[k]);
      b.pages.push_back(phys_[idle_[k]].page);
    }
    idle_.resize(idle_.size() - b.idle);
  }
  b.released.assign(b.phys.size(), false);
  return b;
}

void PagePool::release_calls(ReleaseBatch& b) const {
  // A freeing thread's own trim is a caller's; the keeper's waits for callers' calls when it
  // defers (Config::keeper_defers).
  const CallerCalls mark(*this, !defers_to_callers());
  std::size_t i = 0;
  for (auto& run : b.runs) {
    const std::uint32_t entries = run.chunk ? 1 : run.length;
    if (!refuse_held(run.start, run.length).ok()) {  // back to the reserve (finish_release)
      run.held = true;
      i += entries;
      continue;
    }
    defer_to_callers();
    run.unmapped = backend_.unmap(address(run.start), std::size_t(run.length) * kPage).ok();
    for (std::uint32_t k = 0; k < entries; ++k, ++i) {
      if (!run.unmapped) continue;
      defer_to_callers();
      b.released[i] = backend_.release_page(b.pages[i]).ok();
    }
  }
  for (; i < b.phys.size(); ++i) {
    defer_to_callers();
    b.released[i] = backend_.release_page(b.pages[i]).ok();
  }
}

Status PagePool::finish_release(ReleaseBatch& b) {
  Status first;
  std::size_t i = 0;
  for (const auto& run : b.runs) {
    releasing_.take_exact(run.start, run.length);
    if (!run.unmapped) {
      insert_free(run.start, run.length);
      i += run.chunk ? 1 : run.length;
      if (!run.held && first.ok()) first = make_error(Errc::driver_error, "reserve trim: unmap failed");
      continue;
    }
    if (run.chunk) {
      for (std::uint32_t s = run.start; s < run.start + run.length; ++s) slots_[s].phys = kNoPhys;
      phys_[b.phys[i]].mappings = 0;
      book_release(b.phys[i], b.released[i], first);
      ++i;
      set_kind(run.start, run.length, SlotKind::unmapped, 0);
      unmapped_.insert(run.start, run.length);
      continue;
    }
    for (std::uint32_t s = run.start; s < run.start + run.length; ++s, ++i) {
      slots_[s].phys = kNoPhys;
      --phys_[b.phys[i]].mappings;
      book_release(b.phys[i], b.released[i], first);
    }
    set_kind(run.start, run.length, SlotKind::unmapped, 0);
    unmapped_.insert(run.start, run.length);
  }
  in_flight_idle_ -= b.idle;
  for (; i < b.phys.size(); ++i) book_release(b.phys[i], b.released[i], first);
  b.runs.clear();
  b.idle = 0;
  return first;
}

PagePool::DropBatch PagePool::begin_drops() {
  DropBatch b;
  if (!drops_in_flight_.empty()) return b;
  b.slots.swap(drops_);
  for (std::uint32_t d : b.slots) dropped_.take_exact(d, 1);
  b.unmapped.assign(b.slots.size(), false);
  drops_in_flight_.insert(drops_in_flight_.end(), b.slots.begin(), b.slots.end());
  return b;
}

void PagePool::drop_calls(DropBatch& b) const {
  for (std::size_t i = 0; i < b.slots.size(); ++i) {
    defer_to_callers();
    b.unmapped[i] = refuse_held(b.slots[i], 1).ok() && backend_.unmap(address(b.slots[i]), kPage).ok();
  }
}

void PagePool::finish_drops(DropBatch& b) {
  drops_in_flight_.clear();  // one batch at a time (the keeper's)
  for (std::size_t i = 0; i < b.slots.size(); ++i) {
    const std::uint32_t s = b.slots[i];
    if (!b.unmapped[i]) {  // held by queued work, or the unmap failed: the next batch tries again
      queue_drop(s);
      continue;
    }
    book_dropped(s);
    unmapped_.insert(s, 1);
  }
  b = DropBatch{};
}

void PagePool::book_dropped(std::uint32_t s) {
  const std::uint32_t p = slots_[s].phys;
  slots_[s].phys = kNoPhys;
  --phys_[p].dropping;
  if (--phys_[p].mappings == 0) idle_.push_back(p);
  set_kind(s, 1, SlotKind::unmapped, 0);
}

std::size_t PagePool::pages_only_dropping() const {
  std::vector<std::uint32_t> pages;  // a page mapped at two dropping slots counts once
  for (const auto* list : {&drops_, &drops_in_flight_, &retargeting_})
    for (std::uint32_t d : *list)
      if (const PhysRecord& r = phys_[slots_[d].phys]; r.mappings == r.dropping) pages.push_back(slots_[d].phys);
  std::sort(pages.begin(), pages.end());
  return std::size_t(std::unique(pages.begin(), pages.end()) - pages.begin());
}

void PagePool::book_release(std::uint32_t p, bool released, Status& first) {
  if (released) {
    forget_record(p);
    return;
  }
  if (phys_[p].chunk())
    keep_idle_chunk(p);
  else
    idle_.push_back(p);
  if (first.ok()) first = make_error(Errc::driver_error, "reserve trim: release failed");
}

Status PagePool::release_idle_chunks(std::size_t& n) {
  while (n > 0 && !idle_chunks_.empty()) {
    const std::uint32_t p = idle_chunks_.back();
    const std::size_t pages = phys_[p].pages;
    VALET_TRY(release(p));
    idle_chunks_.pop_back();
    idle_chunk_pages_ -= pages;
    n -= std::min(n, pages);
  }
  return {};
}

Status PagePool::release_idle(std::size_t n) {
  VALET_TRY(release_idle_chunks(n));
  while (n > 0 && !idle_.empty()) {
    VALET_TRY(release(idle_.back()));
    idle_.pop_back();
    --n;
  }
  return {};
}

Status PagePool::balance(std::size_t low, std::size_t high, std::size_t max_release) {
  if (reserve_pages() > high) {
    const std::size_t mid = (low + high) / 2;
    const std::size_t target = reserve_pages() - std::min(reserve_pages() - mid, max_release);
    VALET_TRY(release_idle(reserve_pages() - target));
    // The mapped reserve above the target: the batch the lockless trim uses, run in place.
    const std::size_t unmapped = idle_.size() + idle_chunk_pages_;
    auto batch = begin_release(target > unmapped ? target - unmapped : 0, ~std::size_t{0});
    release_calls(batch);
    Status st = finish_release(batch);
    retire_release(batch);
    return st;
  }
  // Map idle pages back into the reserve, and create pages up to the low watermark.
  const std::size_t mapped_reserve = std::size_t(reserve_.total());
  std::size_t want = idle_.size();
  if (mapped_reserve + want < low) want = std::min(low - mapped_reserve, idle_.size() + creatable_pages());
  if (want == 0) return {};
  auto s = unmapped_.take_best_fit(std::uint32_t(want));
  if (!s) return make_error(Errc::out_of_address_space, "reserve refill: no free virtual run");
  if (auto st = back_run(*s, std::uint32_t(want), false); !st.ok()) {
    unmapped_.insert(*s, std::uint32_t(want));
    return st;
  }
  give_back(*s, std::uint32_t(want));
  return {};
}

}  // namespace valet::detail
