#include "page_pool.h"

#include <algorithm>
#include <chrono>
#include <string>

namespace valet::detail {

namespace {
thread_local bool t_defers_to_callers = false;
}  // namespace

void PagePool::set_defers_to_callers(bool on) { t_defers_to_callers = on; }
bool PagePool::defers_to_callers() { return t_defers_to_callers; }

void PagePool::defer_to_callers() const {
  if (!t_defers_to_callers || callers_calling_.load(std::memory_order_acquire) == 0) return;
  std::unique_lock lock(defer_mu_);
  defer_cv_.wait_for(lock, defer_limit_, [&] { return callers_calling_.load(std::memory_order_acquire) == 0; });
}

void PagePool::wake_deferring() const {
  // Under the mutex: a deferring thread that saw callers at work is waiting by now, or sees none.
  std::lock_guard lock(defer_mu_);
  defer_cv_.notify_all();
}

PagePool::PagePool(VmmDoor& backend, std::size_t capacity_pages)
    : backend_(backend), capacity_pages_(capacity_pages) {}

PagePool::~PagePool() = default;

Status PagePool::init(std::size_t slot_count) {
  if (slot_count == 0 || slot_count > (std::size_t{1} << 31))
    return make_error(Errc::invalid_argument, "page pool: bad arena size");
  arena_bytes_ = slot_count * kPage;
  auto base = backend_.reserve(arena_bytes_);
  if (!base.ok()) return base.error();
  base_ = *base;
  slots_.assign(slot_count, SlotRecord{});
  // Room for a record per page the capacity allows, so that a booking never moves them all:
  // growing the vector under the heap lock copied it into memory touched for the first time
  // (page faults in the mapper's holds: docs/speed.md, "Session 47").
  phys_.reserve(std::min(capacity_pages_, slot_count));
  kind_counts_[std::size_t(SlotKind::unmapped)] = slot_count;
  unmapped_.insert(0, std::uint32_t(slot_count));
  return {};
}

Status PagePool::destroy() {
  Status first;
  auto note = [&](Status s) {
    if (!s.ok() && first.ok()) first = s;
  };
  // Unmap every mapped run, then release every created page.
  std::uint32_t s = 0;
  while (s < slots_.size()) {
    if (slots_[s].phys == kNoPhys) {
      ++s;
      continue;
    }
    std::uint32_t e = s;
    while (e < slots_.size() && slots_[e].phys != kNoPhys) ++e;
    note(unmap_run(s, e - s));
    s = e;
  }
  for (std::uint32_t p = 0; p < phys_.size(); ++p)
    if (phys_[p].in_use) note(release(p));
  idle_.clear();
  idle_chunks_.clear();
  idle_chunk_pages_ = 0;
  if (base_) note(backend_.unreserve(base_, arena_bytes_));
  base_ = 0;
  return first;
}

void PagePool::set_kind(std::uint32_t start, std::uint32_t n, SlotKind kind, std::uint32_t owner) {
  for (std::uint32_t i = start; i < start + n; ++i) {
    --kind_counts_[std::size_t(slots_[i].kind)];
    ++kind_counts_[std::size_t(kind)];
    slots_[i].kind = kind;
    slots_[i].owner = owner;
  }
}

Result<std::uint32_t> PagePool::create_page() {
  if (creatable_pages() == 0)
    return make_error(Errc::out_of_memory, "the heap holds its whole capacity (" +
                                               std::to_string(capacity_pages_ * kPage >> 20) + " MiB)");
  auto page = backend_.create_page();
  if (!page.ok()) return page.error();
  ++created_;
  note_created_peak();
  return add_record(*page);
}

std::uint32_t PagePool::add_record(PhysicalPage page) {
  std::uint32_t p;
  if (!free_phys_.empty()) {
    p = free_phys_.back();
    free_phys_.pop_back();
  } else {
    p = std::uint32_t(phys_.size());
    phys_.emplace_back();
  }
  phys_[p] = PhysRecord{page, 0, 0, true};
  return p;
}

void PagePool::forget_record(std::uint32_t p) {
  created_ -= phys_[p].pages;
  if (phys_[p].chunk()) {
    chunk_pages_ -= phys_[p].pages;
    --chunks_;
  }
  phys_[p] = PhysRecord{};
  free_phys_.push_back(p);
}

Status PagePool::map_at(std::uint32_t slot, std::uint32_t p) {
  VALET_TRY(backend_.map(address(slot), phys_[p].page));
  phys_[p].mappings += phys_[p].pages;
  for (std::uint32_t k = 0; k < phys_[p].pages; ++k) slots_[slot + k].phys = p;
  return {};
}

Status PagePool::map_alias(std::uint32_t slot, std::uint32_t of) {
  if (in_chunk(of)) return make_error(Errc::internal, "map_alias: slot " + std::to_string(of) + " is a chunk's");
  VALET_TRY(map_at(slot, slots_[of].phys));
  if (auto st = backend_.set_access(address(slot), kPage); !st.ok()) {
    (void)unmap_run(slot, 1);
    return st;
  }
  return {};
}

Status PagePool::unmap_run(std::uint32_t start, std::uint32_t n) {
  VALET_TRY(refuse_held(start, n));
  VALET_TRY(backend_.unmap(address(start), std::size_t(n) * kPage));
  for (std::uint32_t s = start; s < start + n; ++s) {
    const std::uint32_t p = slots_[s].phys;
    slots_[s].phys = kNoPhys;
    if (--phys_[p].mappings > 0) continue;
    if (phys_[p].chunk())
      chunk_unmapped(p);  // never idle: a chunk's pages cannot back other slots one by one
    else
      idle_.push_back(p);
  }
  return {};
}

Status PagePool::release(std::uint32_t p) {
  VALET_TRY(backend_.release_page(phys_[p].page));
  forget_record(p);
  return {};
}

Status PagePool::back_run(std::uint32_t start, std::uint32_t n, bool from_reserve, std::uint32_t chunk_end) {
  // Gather n created, unmapped pages: idle ones, then pages moved out of the reserve (one unmap
  // per reserve range), then new ones. Every step leaves the pool consistent if a later one fails.
  while (from_reserve && idle_.size() < n && !reserve_.empty()) {
    auto r = *reserve_.take_smallest();
    const std::uint32_t k = std::min<std::uint32_t>(r.length, std::uint32_t(n - idle_.size()));
    if (k < r.length) reserve_.insert(r.start + k, r.length - k);
    if (auto st = unmap_run(r.start, k); !st.ok()) {
      reserve_.insert(r.start, k);
      return st;
    }
    set_kind(r.start, k, SlotKind::unmapped, 0);
    unmapped_.insert(r.start, k);
  }
  // The pages it must create come after as many whole free chunks went back, as a place batch's
  // do (mapped memory never holds both; while misses are queued the keeper leaves free chunks to
  // them). A chunk whose release fails stays idle, counted, and the run is backed all the same.
  if (idle_.size() < n && free_chunk_waits()) (void)release_free_chunks(n - idle_.size());
  // The pages still missing before `chunk_end` come as one chunk when there are enough of them
  // (mapped first; single pages if the chunk cannot be had), after the idle pages.
  const std::uint32_t lo = start + std::uint32_t(std::min<std::size_t>(idle_.size(), n));
  const std::uint32_t hi = std::min(start + n, chunk_end);
  std::uint32_t chunk = 0;
  if (chunk_min_pages_ > 0 && hi >= lo + std::max<std::uint32_t>(chunk_min_pages_, 2) && map_new_chunk(lo, hi - lo).ok())
    chunk = hi - lo;
  auto unwind = [&](std::uint32_t upto) {  // unmaps what is mapped of [start, upto) and the chunk
    if (chunk == 0 || upto <= lo) {
      if (upto > start) (void)unmap_run(start, upto - start);
      if (chunk > 0) (void)unmap_run(lo, chunk);
      return;
    }
    (void)unmap_run(start, std::max(upto, hi) - start);
  };
  while (idle_.size() < n - chunk) {
    auto p = create_page();
    if (!p.ok()) {
      unwind(start);
      return p.error();
    }
    idle_.push_back(*p);
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    if (chunk > 0 && start + i == lo) {
      i += chunk - 1;
      continue;
    }
    if (auto st = map_at(start + i, idle_.back()); !st.ok()) {
      unwind(start + i);
      return st;
    }
    idle_.pop_back();
  }
  if (auto st = backend_.set_access(address(start), std::size_t(n) * kPage); !st.ok()) {
    (void)unmap_run(start, n);
    return st;
  }
  return {};
}

Result<std::uint32_t> PagePool::take_fresh(std::uint32_t n, SlotKind kind, std::uint32_t owner) {
  if (available_pages() < n)
    return make_error(Errc::out_of_memory, "needs " + std::to_string(n) + " pages, " +
                                               std::to_string(available_pages()) + " free within the capacity");
  auto s = unmapped_.take_best_fit(n);
  if (!s) return make_error(Errc::out_of_address_space, "no free virtual run of " + std::to_string(n) + " pages");
  if (auto st = back_run(*s, n, true, kind == SlotKind::large ? body_end(*s, n) : 0); !st.ok()) {
    unmapped_.insert(*s, n);
    return st.error();
  }
  set_kind(*s, n, kind, owner);
  return *s;
}

Result<std::uint32_t> PagePool::take_page(SlotKind kind, std::uint32_t owner) {
  if (auto s = reserve_.take_best_fit(1)) {
    set_kind(*s, 1, kind, owner);
    return *s;
  }
  return take_fresh(1, kind, owner);
}

std::optional<std::uint32_t> PagePool::take_mapped_run(std::uint32_t n, std::uint32_t owner) {
  // A chunk's free slots when they fit closely, else the reserve's. Never a chunk's loosely: the
  // object would keep the rest of the chunk from going back, and mapped for large objects only
  // (docs/speed.md, "Session 22": on t1 that doubled the driver calls).
  // Nor a whole free chunk: it waits for its release (the keeper's, or the next batch that
  // creates pages), and an object on part of it would strand the rest, mapped.
  const auto close_chunk = chunk_reserve_.best_fit(n);
  const bool close = close_chunk && close_chunk->length - n <= n / 4 && !whole_free_chunk_at(close_chunk->start, close_chunk->length);
  RangeSet& mapped = close ? chunk_reserve_ : reserve_;
  auto s = mapped.take_best_fit(n);
  if (s) set_kind(*s, n, SlotKind::large, owner);
  return s;
}

Result<std::uint32_t> PagePool::take_run(std::uint32_t n, std::uint32_t owner) {
  if (auto s = take_mapped_run(n, owner)) return *s;
  return place_miss(n, false, owner, [&](PlaceBatch& b) { place_calls(b); });
}

bool PagePool::reserve_before(std::uint32_t d, std::uint32_t n) const {
  if (d < n - 1) return false;
  if (n == 1) return true;
  const auto r = reserve_.find(d - 1);
  return r && r->start + n - 1 <= d;
}

std::vector<std::uint32_t> PagePool::dropped_run_pages(std::uint32_t n) const {
  std::vector<std::uint32_t> pages;
  for (std::uint32_t d : drops_)
    if (reserve_before(d, n)) pages.push_back(slots_[d].phys);
  return pages;
}

std::optional<std::uint32_t> PagePool::take_dropped_run(std::uint32_t n, std::uint32_t last_of) {
  const std::uint32_t page = slots_[last_of].phys;
  for (std::size_t i = 0; i < drops_.size(); ++i) {
    const std::uint32_t d = drops_[i];
    if (slots_[d].phys != page || !reserve_before(d, n)) continue;
    const std::uint32_t start = d - (n - 1);
    if (n > 1) reserve_.take_exact(start, n - 1);
    unqueue_drop(i);
    --phys_[page].dropping;
    return start;
  }
  return std::nullopt;
}

std::optional<std::uint32_t> PagePool::take_unchanged_run_onto(std::uint32_t n, std::uint32_t owner,
                                                             std::uint32_t last_of) {
  auto start = take_dropped_run(n, last_of);
  if (start) set_kind(*start, n, SlotKind::large, owner);
  return start;
}

std::optional<std::uint32_t> PagePool::take_cached_run_onto(std::uint32_t n, std::uint32_t owner,
                                                          std::uint32_t last_of) {
  // A freed object's run whose last slot still maps this page (its alias not yet unmapped):
  // taken as it is, no driver call. Else one whose last slot maps another page: that slot is
  // remapped (its unmap, which the keeper would have made, then the alias's map and access), so
  // that the run is reused where it lies, as it was before the alias drop was deferred.
  if (auto start = take_unchanged_run_onto(n, owner, last_of)) return start;
  auto plan = begin_retarget(n, last_of);
  if (!plan) return std::nullopt;
  attach_calls(*plan);
  auto run = finish_attach(*plan, owner);
  return run.ok() ? std::optional<std::uint32_t>(*run) : std::nullopt;
}

Result<std::uint32_t> PagePool::take_run_onto(std::uint32_t n, std::uint32_t owner, std::uint32_t last_of) {
  if (auto start = take_cached_run_onto(n, owner, last_of)) return *start;
  // The body as take_run's miss places a run, its last slot held; then the shared page's alias.
  auto body = place_miss(n, true, owner, [&](PlaceBatch& b) { place_calls(b); });
  if (!body.ok()) return body.error();
  return attach_tail(*body, n, owner, last_of);
}

Result<bool> PagePool::extend_run(std::uint32_t at, std::uint32_t n, std::uint32_t owner, std::uint32_t chunk_end) {
  PlaceOptions how;
  how.at = at;
  how.chunk_end = chunk_end;
  auto batch = begin_place(n, how);
  if (!batch.ok()) return batch.error();
  if (batch->empty()) return false;
  place_calls(*batch);
  auto s = finish_place(*batch, owner);
  if (!s.ok()) return s.error();
  return true;
}

Result<std::uint32_t> PagePool::relocate_run(std::uint32_t from, std::uint32_t n, std::uint32_t length,
                                             std::uint32_t owner) {
  if (length - n > available_pages())
    return make_error(Errc::out_of_memory, "grow: needs " + std::to_string(length - n) + " pages, " +
                                               std::to_string(available_pages()) + " free");
  // A chunk is mapped whole or not at all: one that other slots share stays where it is.
  if (cuts_chunk(from, n)) return make_error(Errc::unsupported, "relocate: a chunk reaches beyond the run (copy instead)");
  auto dest = unmapped_.take_best_fit(length);
  if (!dest) return make_error(Errc::out_of_address_space, "relocate: no free virtual run of " + std::to_string(length) + " pages");
  auto fail = [&](std::uint32_t mapped, const Error& err) -> Result<std::uint32_t> {
    if (mapped > 0) (void)unmap_run(*dest, mapped);
    unmapped_.insert(*dest, length);
    return err;
  };
  // Map the same pages at the destination first (a page may be mapped twice), so that a failure
  // anywhere leaves the object where it was, intact; unmap the old range last.
  // A chunk (the run holds it whole, from its first slot) is mapped a second time, whole.
  for (std::uint32_t i = 0; i < n;) {
    const std::uint32_t p = slots_[from + i].phys;
    if (auto st = map_at(*dest + i, p); !st.ok()) return fail(i, st.error());
    i += phys_[p].pages;
  }
  if (auto st = backend_.set_access(address(*dest), std::size_t(n) * kPage); !st.ok()) return fail(n, st.error());
  if (length > n) {
    if (auto st = back_run(*dest + n, length - n, true, body_end(*dest, length)); !st.ok()) return fail(n, st.error());
  }
  if (auto st = unmap_run(from, n); !st.ok()) {
    if (length > n) (void)unmap_run(*dest + n, length - n);
    return fail(n, st.error());
  }
  for (std::uint32_t i = 0; i < n; ++i)
    if (PhysRecord& r = phys_[slots_[*dest + i].phys]; r.chunk() && r.first == from + i) r.first = *dest + i;
  set_kind(from, n, SlotKind::unmapped, 0);
  unmapped_.insert(from, n);
  set_kind(*dest, length, SlotKind::large, owner);
  return *dest;
}

void PagePool::give_back(std::uint32_t start, std::uint32_t n) {
  set_kind(start, n, SlotKind::reserve, 0);
  insert_free(start, n);
}

PagePool::RemapPlan PagePool::plan_remap(std::uint32_t s, std::uint32_t onto) const {
  RemapPlan r;
  r.slot = s;
  r.own = slots_[s].phys;
  r.shared = slots_[onto].phys;
  r.va = address(s);
  r.own_page = phys_[r.own].page;
  r.shared_page = phys_[r.shared].page;
  return r;
}

Status PagePool::remap_calls(RemapPlan& r) const {
  if (r.own == kNoPhys || r.shared == kNoPhys || r.own == r.shared)
    return make_error(Errc::internal, "remap: slots not mapped to two pages");
  VALET_TRY(refuse_held(r.slot, 1));
  VALET_TRY(backend_.unmap(r.va, kPage));
  Status st = backend_.map(r.va, r.shared_page);
  if (st.ok()) {
    st = backend_.set_access(r.va, kPage);
    if (st.ok()) return {};
    (void)backend_.unmap(r.va, kPage);
  }
  // Put the slot's own page back where it was.
  for (int attempt = 0; attempt < 4; ++attempt) {
    if (!backend_.map(r.va, r.own_page).ok()) continue;
    if (backend_.set_access(r.va, kPage).ok()) return st;
    (void)backend_.unmap(r.va, kPage);
  }
  r.lost = true;
  return st;
}

void PagePool::commit_remap(const RemapPlan& r) {
  slots_[r.slot].phys = r.shared;
  ++phys_[r.shared].mappings;
  if (--phys_[r.own].mappings == 0) idle_.push_back(r.own);
}

void PagePool::forget_slot(const RemapPlan& r) {
  slots_[r.slot].phys = kNoPhys;
  if (--phys_[r.own].mappings == 0) idle_.push_back(r.own);
  set_kind(r.slot, 1, SlotKind::unmapped, 0);
  unmapped_.insert(r.slot, 1);
}

Status PagePool::drop_alias(std::uint32_t s) {
  if (slots_[s].phys == kNoPhys || phys_[slots_[s].phys].mappings < 2)
    return make_error(Errc::internal, "drop_alias: slot " + std::to_string(s) + " is not a shared mapping");
  if (defer_drops_) {
    drop_later(s);
    return {};
  }
  VALET_TRY(unmap_run(s, 1));
  set_kind(s, 1, SlotKind::unmapped, 0);
  unmapped_.insert(s, 1);
  return {};
}

Result<std::uint32_t> PagePool::share_page(std::uint32_t of, SlotKind kind, std::uint32_t owner) {
  if (slots_[of].phys == kNoPhys) return make_error(Errc::internal, "share_page: slot " + std::to_string(of) + " maps no page");
  auto s = unmapped_.take_best_fit(1);
  if (!s) return make_error(Errc::out_of_address_space, "share_page: no free virtual slot");
  if (auto st = map_alias(*s, of); !st.ok()) {
    if (slots_[*s].phys != kNoPhys)
      drop_later(*s);  // mapped without access, and its unmap failed too
    else
      unmapped_.insert(*s, 1);
    return st.error();
  }
  set_kind(*s, 1, kind, owner);
  return *s;
}

void PagePool::hold(std::span<const std::uint32_t> slots) {
  std::lock_guard lock(holds_mu_);
  for (std::uint32_t s : slots) ++holds_[s];
}

void PagePool::unhold(std::span<const std::uint32_t> slots) {
  std::lock_guard lock(holds_mu_);
  for (std::uint32_t s : slots) {
    auto it = holds_.find(s);
    if (it != holds_.end() && --it->second == 0) holds_.erase(it);
  }
}

bool PagePool::held(std::uint32_t s) const {
  std::lock_guard lock(holds_mu_);
  return holds_.contains(s);
}

std::size_t PagePool::held_slots() const {
  std::lock_guard lock(holds_mu_);
  return holds_.size();
}

Status PagePool::refuse_held(std::uint32_t start, std::uint32_t n) const {
  std::lock_guard lock(holds_mu_);
  // Holds are few (one compaction batch's slots), runs may be long: walk the holds.
  for (const auto& [s, count] : holds_)
    if (s >= start && s - start < n)
      return make_error(Errc::internal, "unmap of slot " + std::to_string(s) + " while queued work may touch it");
  return {};
}

}  // namespace valet::detail
