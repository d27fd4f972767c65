// Placing a large run that no mapped run serves (page_pool.h, the place batch): its slots and
// pages are taken out of the pool under the heap lock, the driver calls (unmapping the reserve
// pages it moves, creating pages, mapping, granting access) run without it, and the outcome is
// booked under it again. Another thread may allocate, free, pin or provision meanwhile: nothing
// it can reach names the batch's slots or pages (docs/speed.md, "Session 24").
#include <algorithm>
#include <string>

#include "page_pool.h"
#include "thread_scratch.h"

namespace valet::detail {

namespace {

// Calls f(start, length) for each maximal run of consecutive slots in `slots` (sorted) whose
// entries satisfy keep(i).
template <class Keep, class F>
void for_each_run(const std::vector<std::uint32_t>& slots, Keep&& keep, F&& f) {
  for (std::size_t i = 0; i < slots.size();) {
    if (!keep(i)) {
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    while (j < slots.size() && keep(j) && slots[j] == slots[j - 1] + 1) ++j;
    f(i, slots[i], std::uint32_t(j - i));
    i = j;
  }
}

// The vectors of booked place batches, kept (empty, with their capacity) for the thread's next
// batches: a batch holds a dozen, and building and dropping them under the heap lock was a tenth
// of the mapper's holds of it (docs/speed.md, "Session 46"). A few per thread.
constexpr std::size_t kSpareBatches = 4;
struct SpareBatches;
std::vector<PagePool::PlaceBatch>* spare_batches() {
  return thread_scratch<std::vector<PagePool::PlaceBatch>, SpareBatches>();
}

template <class V>
void take_capacity(V& to, V& from) {
  from.clear();
  to = std::move(from);
}

// A new batch, with a kept batch's vectors where the thread has one.
PagePool::PlaceBatch new_batch() {
  PagePool::PlaceBatch b;
  auto* spares = spare_batches();
  if (!spares || spares->empty()) return b;
  PagePool::PlaceBatch& k = spares->back();
  take_capacity(b.claimed, k.claimed);
  take_capacity(b.fills, k.fills);
  take_capacity(b.slots, k.slots);
  take_capacity(b.pages, k.pages);
  take_capacity(b.sources, k.sources);
  take_capacity(b.drops, k.drops);
  take_capacity(b.drop_unmapped, k.drop_unmapped);
  take_capacity(b.made, k.made);
  take_capacity(b.mapped, k.mapped);
  take_capacity(b.freed.runs, k.freed.runs);
  take_capacity(b.freed.phys, k.freed.phys);
  take_capacity(b.freed.pages, k.freed.pages);
  take_capacity(b.freed.released, k.freed.released);
  spares->pop_back();
  return b;
}

// Empties `b` (as `b = PlaceBatch{}`), keeping its vectors for new_batch where there is room.
void retire_batch(PagePool::PlaceBatch& b) {
  if (auto* spares = spare_batches(); spares && spares->size() < kSpareBatches) spares->push_back(std::move(b));
  b = PagePool::PlaceBatch{};
}

}  // namespace

bool PagePool::claimable_drop(std::uint32_t s) const { return dropped_.contains(s) && !held(s); }

void PagePool::claim_drop(std::uint32_t s, PlaceBatch& b) {
  // Still mapped (the old alias), still dropping; place_calls unmaps it first.
  unqueue_drop(std::size_t(std::find(drops_.begin(), drops_.end(), s) - drops_.begin()));
  retargeting_.push_back(s);
  b.drops.push_back(s);
}

void PagePool::return_free_slot(std::uint32_t s) {
  if (slots_[s].kind == SlotKind::dropping) {  // a claimed drop not unmapped: queued again
    unlist_retargeting(s);
    queue_drop(s);
    return;
  }
  unmapped_.insert(s, 1);
}

bool PagePool::claim_slots(std::uint32_t at, std::uint32_t n, PlaceBatch& b) {
  if (std::uint64_t(at) + n > slots_.size()) return false;
  for (std::uint32_t s = at; s < at + n; ++s) {
    // Aliases waiting for the keeper inside the window are free slots to placement (best_window
    // counts them so): the batch's calls unmap them first. A reserve slot being released
    // without the lock is not free: its page is about to be unmapped; nor is a slot another
    // batch is mapping.
    const SlotKind k = slots_[s].kind;
    if (k == SlotKind::dropping ? !claimable_drop(s)
                                : (k != SlotKind::reserve && k != SlotKind::unmapped) || releasing_.contains(s) ||
                                      provisioning_.contains(s))
      return false;
  }
  // Unmapped slots and claimed drops are the batch's fills; mapped free ones are its own. A free
  // reserve slot is a chunk's where the chunk reserve holds it (insert_free), so the bitmap says
  // so without the slot's page record.
  enum class From { unmapped, dropped, reserve, chunk_reserve };
  auto from = [&](std::uint32_t s) {
    const SlotKind k = slots_[s].kind;
    return k == SlotKind::unmapped         ? From::unmapped
           : k == SlotKind::dropping       ? From::dropped
           : chunk_reserve_.contains(s)    ? From::chunk_reserve
                                           : From::reserve;
  };
  for (std::uint32_t s = at; s < at + n;) {
    const From f = from(s);
    std::uint32_t e = s;
    while (e < at + n && from(e) == f) ++e;
    if (f == From::unmapped || f == From::dropped) {
      if (f == From::unmapped)
        unmapped_.take_exact(s, e - s);
      else
        for (std::uint32_t d = s; d < e; ++d) claim_drop(d, b);
      provisioning_.insert(s, e - s);
      b.fills.push_back({s, e - s});
    } else {
      (f == From::chunk_reserve ? chunk_reserve_ : reserve_).take_exact(s, e - s);
      set_kind(s, e - s, SlotKind::large, 0);  // mapped already: the run's, unowned until booked
      b.claimed.push_back({s, e - s});
    }
    s = e;
  }
  return true;
}

void PagePool::unclaim(PlaceBatch& b) {
  for (const auto& r : b.claimed) {
    set_kind(r.start, r.length, SlotKind::reserve, 0);
    insert_free(r.start, r.length);
  }
  for (const auto& r : b.fills) {
    provisioning_.take_exact(r.start, r.length);
    for (std::uint32_t s = r.start; s < r.start + r.length; ++s) return_free_slot(s);
  }
  if (b.tail) free_held_slot(b.tail_slot());
  retire_batch(b);
}

void PagePool::free_held_slot(std::uint32_t s) {
  provisioning_.take_exact(s, 1);
  return_free_slot(s);
}

bool PagePool::claim_tail(std::uint32_t s, PlaceBatch& b) {
  if (s >= slots_.size()) return false;
  if (slots_[s].kind == SlotKind::dropping) {
    if (!claimable_drop(s)) return false;
    claim_drop(s, b);
  } else if (!unmapped_.take_exact(s, 1)) {
    return false;
  }
  provisioning_.insert(s, 1);
  b.tail = true;
  return true;
}

Result<PagePool::PlaceBatch> PagePool::begin_place(std::uint32_t n, const PlaceOptions& how) {
  PlaceBatch b = new_batch();
  // With a tail, the batch maps the run's body and holds its last slot unmapped (attach_tail).
  const std::uint32_t body = how.tail ? n - 1 : n;
  std::optional<std::uint32_t> at = how.at;
  if (!at && how.window && body > 0)
    if (auto w = best_window(n, how.tail)) at = w->start;
  if (at) {
    const bool claimed = claim_slots(*at, body, b);
    if (claimed && (!how.tail || claim_tail(*at + body, b))) {
      b.start = *at;
      b.n = n;
    } else {
      if (claimed) unclaim(b);
      if (how.at) return PlaceBatch{};  // not free: nothing changed
      at.reset();
    }
  }
  if (!at) {
    auto s = unmapped_.take_best_fit(n);
    if (!s) return make_error(Errc::out_of_address_space, "no free virtual run of " + std::to_string(n) + " pages");
    provisioning_.insert(*s, n);
    b.start = *s;
    b.n = n;
    if (body > 0) b.fills.push_back({*s, body});
    b.tail = how.tail;
  }
  for (const auto& r : b.fills)
    for (std::uint32_t s = r.start; s < r.start + r.length; ++s) b.slots.push_back(s);
  const std::size_t need = b.slots.size();
  // The run's own reserve pages are in use by it now, so only its unmapped slots need pages.
  const std::size_t creatable = creatable_pages();
  // Whole free chunks are room too: a batch that creates pages releases them first (below).
  const std::size_t freeable = whole_free_chunk_pages();
  // Reserve pages it may move: all but the floor, and of the floor's only what it needs to fit
  // within the capacity.
  const std::size_t reserve = how.from_reserve ? std::size_t(reserve_.total()) : 0;
  const std::size_t others = idle_.size() + creatable + freeable;
  const std::size_t above_floor = reserve > how.reserve_floor ? reserve - how.reserve_floor : 0;
  const std::size_t short_of = need > others ? need - others : 0;
  const std::size_t movable = std::min(reserve, std::max(above_floor, short_of));
  const std::size_t can = others + movable;
  if (need > can) {
    unclaim(b);
    return make_error(Errc::out_of_memory,
                      "needs " + std::to_string(need) + " pages, " + std::to_string(can) + " free within the capacity");
  }
  // The pages, in slot order: idle ones, then reserve pages moved here (the smallest runs
  // first), then new ones.
  b.pages.assign(need, PageRef{});
  std::size_t i = 0;
  for (; i < need && !idle_.empty(); ++i) {
    const std::uint32_t p = idle_.back();
    idle_.pop_back();
    b.pages[i] = {p, phys_[p].page};
  }
  b.idle = std::uint32_t(i);
  in_flight_idle_ += b.idle;
  for (std::size_t left = movable; left > 0 && i < need && !reserve_.empty();) {
    auto r = *reserve_.take_smallest();
    const std::uint32_t k = std::uint32_t(std::min<std::size_t>({r.length, need - i, left}));
    left -= k;
    if (k < r.length) reserve_.insert(r.start + k, r.length - k);
    releasing_.insert(r.start, k);
    b.sources.push_back({r.start, k, false});
    for (std::uint32_t s = r.start; s < r.start + k; ++s, ++i) b.pages[i] = {slots_[s].phys, phys_[slots_[s].phys].page};
  }
  // The new pages still missing before the chunk's end come as one chunk when there are enough
  // of them (those in the first unmapped piece they reach).
  b.fresh = std::uint32_t(need - i);
  if (b.fresh > 0) {
    const std::uint32_t lo = b.slots[i];
    std::uint32_t piece_end = lo;
    while (piece_end - lo < need - i && b.slots[i + (piece_end - lo)] == piece_end) ++piece_end;
    const std::uint32_t end = how.chunk_end ? how.chunk_end : b.start + n - (how.chunk_last ? 0 : 1);
    const std::uint32_t hi = std::min(piece_end, end);
    const std::uint32_t least = how.chunk_min > 0 ? how.chunk_min : chunk_min_pages_;
    if (least > 0 && hi >= lo + std::max<std::uint32_t>(least, 2)) {
      b.chunk_index = std::uint32_t(i);
      b.chunk_pages = hi - lo;
    }
  }
  // Whole free chunks go back before the batch creates pages (its calls release them first),
  // counted as released from here, so that mapped memory never holds both: a free leaves its
  // emptied chunk to the keeper (ReserveKeeper::trim_surplus), and a miss meanwhile must not
  // add pages beside it. As many as hold the new pages: the others may serve the misses queued
  // behind this one where they lie (best_window).
  if (b.fresh > 0 && freeable > 0) {
    take_free_chunks(b.freed, b.fresh);
    b.freed.released.assign(b.freed.phys.size(), false);
    b.freed_pages = 0;
    for (const std::uint32_t p : b.freed.phys) b.freed_pages += phys_[p].pages;
    created_ -= b.freed_pages;
    freed_in_flight_ += b.freed_pages;
  }
  created_ += b.fresh;
  fresh_in_flight_ += b.fresh;
  note_created_peak();  // counted as created from here, as a provision batch's new pages are
  ++placing_;
  count_placing(b, +1);
  return b;
}

void PagePool::place_calls(PlaceBatch& b) const {
  const CallerCalls mark(*this);
  Status st;
  auto note = [&](Status s) {
    if (!s.ok() && st.ok()) st = std::move(s);
  };
  // The free chunks it releases first, before it creates any page.
  if (!b.freed.empty()) release_calls(b.freed);
  // The old aliases at the claimed drops first (the unmaps the keeper would have made).
  b.drop_unmapped.assign(b.drops.size(), false);
  for (std::size_t i = 0; i < b.drops.size() && st.ok(); ++i) {
    note(backend_.unmap(address(b.drops[i]), kPage));
    b.drop_unmapped[i] = st.ok();
  }
  for (auto& run : b.sources) {
    if (!st.ok()) break;
    // Reserve slots are never held (validate()), but a broken rule must not unmap queued work.
    Status u = refuse_held(run.start, run.length);
    if (u.ok()) u = backend_.unmap(address(run.start), std::size_t(run.length) * kPage);
    run.unmapped = u.ok();
    note(u);
    if (!st.ok()) break;
  }
  const std::size_t need = b.slots.size();
  b.made.assign(need, false);
  b.mapped.assign(need, false);
  if (st.ok() && b.chunk_pages > 0) {
    // A chunk that cannot be had: its slots get single pages.
    auto c = backend_.create_chunk(b.chunk_pages);
    if (c.ok()) b.chunk = *c;
    b.chunk_made = c.ok();
    if (!c.ok()) b.chunk_pages = 0;
  }
  for (std::size_t i = 0; i < need && st.ok(); ++i) {
    if (b.pages[i].phys != kNoPhys || b.chunk_holds(i)) continue;
    auto p = backend_.create_page();
    if (!p.ok()) {
      note(p.error());
      break;
    }
    b.pages[i].page = *p;
    b.made[i] = true;
  }
  for (std::size_t i = 0; i < need && st.ok(); ++i) {
    if (b.chunk_holds(i)) {
      if (i != b.chunk_index) continue;
      note(backend_.map(address(b.slots[i]), b.chunk));
      if (st.ok())
        for (std::size_t k = i; k < i + b.chunk_pages; ++k) b.mapped[k] = true;
      continue;
    }
    note(backend_.map(address(b.slots[i]), b.pages[i].page));
    b.mapped[i] = st.ok();
  }
  if (st.ok())
    for_each_run(b.slots, [](std::size_t) { return true; }, [&](std::size_t, std::uint32_t start, std::uint32_t length) {
      if (st.ok()) note(backend_.set_access(address(start), std::size_t(length) * kPage));
    });
  if (!st.ok()) {
    // Nothing half made reaches anyone: what was mapped is unmapped (its pages become idle),
    // and a chunk that is mapped nowhere goes back at once.
    for_each_run(b.slots, [&](std::size_t i) { return bool(b.mapped[i]); },
                 [&](std::size_t i, std::uint32_t start, std::uint32_t length) {
                   if (!backend_.unmap(address(start), std::size_t(length) * kPage).ok()) return;
                   for (std::size_t k = i; k < i + length; ++k) b.mapped[k] = false;
                 });
    const bool chunk_mapped = b.chunk_pages > 0 && b.mapped[b.chunk_index];
    if (b.chunk_made && !chunk_mapped && backend_.release_page(b.chunk).ok()) b.chunk_made = false;
  }
  b.status = st;
}

Result<std::uint32_t> PagePool::finish_place(PlaceBatch& b, std::uint32_t owner) {
  --placing_;
  count_placing(b, -1);
  // The free chunks: released ones are gone; one whose unmap failed is free again, one whose
  // release failed idle (released later). Neither is the run's failure.
  created_ += b.freed_pages;
  freed_in_flight_ -= b.freed_pages;
  b.freed_pages = 0;
  if (!b.freed.empty()) {
    (void)finish_release(b.freed);
    note_created_peak();  // a chunk whose release failed was held beside the new pages
  }
  // Claimed drops whose old alias is gone are plain unmapped slots now; the others are still
  // dropping (return_free_slot queues them again).
  for (std::size_t i = 0; i < b.drops.size(); ++i)
    if (i < b.drop_unmapped.size() && b.drop_unmapped[i]) {
      unlist_retargeting(b.drops[i]);
      book_dropped(b.drops[i]);
    }
  for (const auto& r : b.fills) provisioning_.take_exact(r.start, r.length);
  in_flight_idle_ -= b.idle;
  fresh_in_flight_ -= b.fresh;
  created_ -= b.fresh;  // counted again below for what was created
  const std::size_t need = b.slots.size();
  std::uint32_t chunk = kNoPhys;
  if (b.chunk_made) chunk = add_chunk_record(b.chunk, b.chunk_pages, b.slots[b.chunk_index]);
  for (std::size_t i = 0; i < need; ++i)
    if (b.made[i]) {
      b.pages[i].phys = add_record(b.pages[i].page);
      ++created_;
    }
  book_moved_sources(b.sources);
  bool chunk_mapped = false;
  for (std::size_t i = 0; i < need; ++i) {
    const std::uint32_t s = b.slots[i];
    const bool in_chunk_range = chunk != kNoPhys && b.chunk_holds(i);
    const std::uint32_t p = in_chunk_range ? chunk : b.pages[i].phys;
    if (b.mapped[i]) {
      slots_[s].phys = p;
      ++phys_[p].mappings;
      chunk_mapped |= in_chunk_range;
    } else if (p != kNoPhys && !in_chunk_range && phys_[p].mappings == 0) {
      idle_.push_back(p);
    }
  }
  if (chunk != kNoPhys && !chunk_mapped) keep_idle_chunk(chunk);  // created, then its release failed
  if (b.status.ok()) {
    // A tail slot stays held, unmapped, for attach_tail or abandon_tail.
    for (const auto& r : b.fills) set_kind(r.start, r.length, SlotKind::large, owner);
    for (const auto& r : b.claimed) set_kind(r.start, r.length, SlotKind::large, owner);
    const std::uint32_t start = b.start;
    retire_batch(b);
    return start;
  }
  // A call failed: the run's slots go back. Mapped ones (their unmap failed too) join the
  // reserve with their pages; the others are free again.
  const Error err = b.status.error();
  for (std::size_t i = 0; i < need; ++i) {
    const std::uint32_t s = b.slots[i];
    if (b.mapped[i]) {
      set_kind(s, 1, SlotKind::reserve, 0);
      insert_free(s, 1);
    } else {
      return_free_slot(s);
    }
  }
  b.fills.clear();  // out of provisioning_ already
  unclaim(b);        // the claimed slots and the held last slot
  return err;
}

void PagePool::count_placing(const PlaceBatch& b, int sign) {
  const std::size_t moved = b.slots.size() - b.idle - b.fresh;
  if (sign > 0) {
    placing_idle_ += b.idle;
    placing_fresh_ += b.fresh;
    placing_moved_ += moved;
  } else {
    placing_idle_ -= b.idle;
    placing_fresh_ -= b.fresh;
    placing_moved_ -= moved;
  }
}

void PagePool::abandon_place(PlaceBatch& b) {
  for (auto& run : b.freed.runs) run.held = true;  // not released: free again, no error
  b.drop_unmapped.assign(b.drops.size(), false);
  b.made.assign(b.slots.size(), false);
  b.mapped.assign(b.slots.size(), false);
  b.chunk_pages = 0;  // no chunk was created
  b.status = make_error(Errc::invalid_state, "the placement was given up before its calls");
  (void)finish_place(b, 0);
}

Result<std::uint32_t> PagePool::attach_tail(std::uint32_t start, std::uint32_t n, std::uint32_t owner,
                                            std::uint32_t last_of) {
  AttachPlan plan = begin_attach(start, n, last_of);
  attach_calls(plan);
  return finish_attach(plan, owner);
}

PagePool::AttachPlan PagePool::begin_attach(std::uint32_t start, std::uint32_t n, std::uint32_t last_of) {
  AttachPlan plan;
  plan.start = start;
  plan.n = n;
  if (in_chunk(last_of) || slots_[last_of].phys == kNoPhys)
    plan.status = make_error(Errc::internal, "attach_tail: slot " + std::to_string(last_of) + " maps no page of its own");
  else
    plan.page = phys_[plan.phys = slots_[last_of].phys].page;
  ++placing_;
  return plan;
}

std::optional<PagePool::AttachPlan> PagePool::begin_retarget(std::uint32_t n, std::uint32_t last_of) {
  if (in_chunk(last_of) || slots_[last_of].phys == kNoPhys) return std::nullopt;
  for (std::size_t i = 0; i < drops_.size(); ++i) {
    const std::uint32_t d = drops_[i];
    if (!reserve_before(d, n) || held(d)) continue;
    AttachPlan plan;
    plan.start = d - (n - 1);
    plan.n = n;
    plan.retarget = true;
    plan.page = phys_[plan.phys = slots_[last_of].phys].page;
    if (n > 1) {
      reserve_.take_exact(plan.start, n - 1);
      set_kind(plan.start, n - 1, SlotKind::large, 0);  // the run's, unowned until booked
    }
    unqueue_drop(i);
    retargeting_.push_back(d);
    ++placing_;
    return plan;
  }
  return std::nullopt;
}

void PagePool::attach_calls(AttachPlan& plan) const {
  if (!plan.status.ok()) return;
  const CallerCalls mark(*this);
  const DevicePtr va = address(plan.start + plan.n - 1);
  if (plan.retarget) {
    plan.status = backend_.unmap(va, kPage);
    if (!plan.status.ok()) return;
    plan.unmapped_old = true;
  }
  plan.status = map_accessible(va, plan.page, plan.mapped);
}

Status PagePool::map_accessible(DevicePtr va, PhysicalPage page, bool& mapped) const {
  VALET_TRY(backend_.map(va, page));
  mapped = true;
  Status st = backend_.set_access(va, kPage);
  if (!st.ok() && backend_.unmap(va, kPage).ok()) mapped = false;
  return st;
}

Result<std::uint32_t> PagePool::finish_attach(AttachPlan& plan, std::uint32_t owner) {
  --placing_;
  const std::uint32_t last = plan.start + plan.n - 1;
  if (plan.retarget) {
    unlist_retargeting(last);
    if (!plan.unmapped_old) {  // the old mapping stays: a queued drop again, the body back
      queue_drop(last);
      if (plan.n > 1) give_back(plan.start, plan.n - 1);
      return plan.status.error();
    }
    book_dropped(last);  // the old page loses this mapping (idle if it was its last)
  } else {
    provisioning_.take_exact(last, 1);
  }
  if (plan.mapped) {
    slots_[last].phys = plan.phys;
    ++phys_[plan.phys].mappings;
  }
  if (plan.status.ok()) {
    set_kind(plan.start, plan.n, SlotKind::large, owner);
    return plan.start;
  }
  if (plan.mapped)
    drop_later(last);  // mapped without access, and the unmap failed too
  else
    unmapped_.insert(last, 1);
  if (plan.n > 1) give_back(plan.start, plan.n - 1);  // mapped and accessible: the body's pages join the reserve
  return plan.status.error();
}

void PagePool::abandon_tail(std::uint32_t start, std::uint32_t n) {
  free_held_slot(start + n - 1);
  if (n > 1) give_back(start, n - 1);
}

}  // namespace valet::detail
