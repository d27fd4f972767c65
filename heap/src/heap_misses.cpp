// Background misses (Config::background_misses, miss_mapper.h): the steps of a pending object's
// run (their calls and their booking), retries after a failed call, frees of pending objects,
// and giving an object up.
#include <cstdio>
#include <utility>

#include "heap_core.h"
#include "size_classes.h"

namespace valet::detail {
namespace {

// Runs begun for one object before it is given up. A call can fail only for reasons outside the
// heap: the capacity was counted when the batch began, so the driver's out-of-memory comes from
// another user of the device.
constexpr unsigned kMissAttempts = 3;

}  // namespace

bool HeapCore::place_miss(PendingMiss& m, std::unique_lock<HeapMutex>& lock) {
  mu.assert_held();
  HandleEntry* e = handles.get(m.index);
  const std::uint32_t n = e->loc.pages;
  if (e->loc.kind == ObjectKind::slab) {
    ++ops.small_misses_placed_by_mapper;
    const std::uint32_t cls = e->loc.index;
    // Its calls are off the allocating thread now, so a new slab page goes on an open tail (no
    // new page) even where the reserve refilled meanwhile: the tail's page mapped at a free slot
    // without the heap lock (step slab_alias, its promise kept until then), as the keeper
    // prepares a standby; else (a slab page with room, a prepared alias, no tail to begin one on)
    // place_small with the tail first.
    if (auto a = begin_small_tail_alias(cls)) {
      m.tail_alias = *a;
      m.step = PendingMiss::Step::slab_alias;
      return false;
    }
    unplace_small(e->loc);
    m.step = PendingMiss::Step::run;
    return book_small_miss(m, place_small_for_miss(cls, /*tail_first=*/true));
  }
  // Its promise back first: the pages it counted on are creatable again, for it alone to take.
  pool.unpromise(n);
  m.step = PendingMiss::Step::run;
  ++ops.misses_placed_by_mapper;
  auto loc = place_large(lock, e->size(), n, &m, /*counted_live=*/true);
  if (!publish_placement(m.index, loc)) return true;
  if (!m.empty()) return false;  // its first step's calls next
  set_owner(*loc, m.index);      // a run that needed no call
  return settle_miss(m);
}

std::optional<PagePool::TailAlias> HeapCore::begin_small_tail_alias(std::uint32_t cls) {
  // Where a new slab page is wanted (no slab page with room) and no prepared alias serves: an
  // open tail that can host the class, with no alias prepared (whatever the reserve holds).
  if (!config.share_tails || slabs.densest_with_room(cls) || prepared_tail_for(cls)) return std::nullopt;
  const std::optional<std::uint32_t> tail = tails.roomiest();
  if (!tail || !tail_can_host(cls, *tail) || prepared_aliases.contains(*tail)) return std::nullopt;
  return pool.begin_tail_alias(*tail);
}

bool HeapCore::finish_small_tail_alias(PendingMiss& m) {
  HandleEntry* e = handles.get(m.index);
  const std::uint32_t cls = e->loc.index;
  const PagePool::TailAlias& a = m.tail_alias;
  unplace_small(e->loc);
  m.step = PendingMiss::Step::run;
  const bool prepared = pool.finish_tail_alias(m.tail_alias);
  // Another alias of the tail prepared meanwhile (a cycle's, a standby) serves instead: this
  // one goes back (the keeper unmaps it).
  if (prepared && !prepared_aliases.try_emplace(a.tail, a.slot).second) {
    pool.discard_tail_alias(a.slot);
    after_release();
  }
  // slab_on_tail_at takes the prepared alias if its tail still hosts the class on the same page
  // (else it is discarded there); one left over goes back (the keeper unmaps it).
  SlabPage* page = prepared && !misses.is_freed(m.index) ? slab_on_tail_at(cls, a.tail, /*may_map=*/false) : nullptr;
  if (auto it = prepared_aliases.find(a.tail); prepared && it != prepared_aliases.end() && it->second == a.slot) {
    prepared_aliases.erase(it);
    pool.discard_tail_alias(a.slot);
    after_release();
  }
  if (misses.is_freed(m.index)) {  // nothing placed: only its footprint and index
    ++ops.background_misses;
    return drop_freed_miss(m.index);
  }
  if (page) return book_small_miss(m, slot_on(page));
  return book_small_miss(m, place_small_for_miss(cls, /*tail_first=*/false));  // the tail closed or changed meanwhile
}

void HeapCore::release_last_promise(PendingMiss& m) {
  if (!m.last_promised) return;
  VALET_ASSERT(last_page_promises > 0);
  --last_page_promises;
  pool.unpromise(1);
  m.last_promised = false;
}

Result<Location> HeapCore::place_small_for_miss(std::uint32_t cls, bool tail_first) {
  // Its allocation succeeded already: a failed call (a page created or mapped under the lock)
  // is tried again, as a large miss's run is begun again, before the object is given up.
  // Any error: a driver's out-of-memory is another user of the device, as a failed call is.
  Result<Location> loc = place_small(cls, tail_first);
  for (unsigned attempt = 1; attempt < kMissAttempts && !loc.ok(); ++attempt) loc = place_small(cls, tail_first);
  return loc;
}

void HeapCore::unplace_small(const Location& loc) {
  VALET_ASSERT(loc.kind == ObjectKind::slab && loc.page == kUnplaced && unplaced_small[loc.index] > 0);
  --unplaced_small[loc.index];
  pool.unpromise(loc.pages);
}

bool HeapCore::publish_placement(std::uint32_t index, const Result<Location>& loc) {
  HandleEntry* e = handles.get(index);
  if (!loc.ok()) {
    // The promise held the capacity: only the address space, a small object that rode along
    // without a promise, or a broken rule gets here.
    std::fprintf(stderr, "valet: a pending object of %zu bytes is lost: it could not be placed (%s)\n", e->size(),
                 loc.error().to_string().c_str());
    lose_miss(index);
    return false;
  }
  e->loc = *loc;
  // Its pins read the address once the claim ends (end_move releases it); the device table
  // takes it at its next upload.
  e->address.store(address_of(*loc), std::memory_order_relaxed);
  table.changed();
  return true;
}

bool HeapCore::book_small_miss(PendingMiss& m, Result<Location> loc) {
  if (!publish_placement(m.index, loc)) return true;
  set_owner(*loc, m.index);
  return settle_miss(m);
}

void HeapCore::miss_calls(PendingMiss& m) const {
  if (m.step == PendingMiss::Step::alias)
    pool.attach_calls(m.plan);
  else if (m.step == PendingMiss::Step::slab_alias)
    pool.tail_alias_calls(m.tail_alias);
  else
    pool.place_calls(m.batch);
}

bool HeapCore::finish_miss(PendingMiss& m) {
  mu.assert_held();
  if (m.step == PendingMiss::Step::slab_alias) return finish_small_tail_alias(m);
  HandleEntry* e = handles.get(m.index);
  const Location loc = e->loc;
  const bool freed = misses.is_freed(m.index);  // freed while pending: released once its step ends
  const std::uint32_t last = loc.page + loc.pages - 1;
  Error failed;
  // Begins `step` as a place batch of n slots from `start` (free again, so the address holds);
  // false, with `failed` set where it could not begin, when they are not.
  auto begin_at = [&](std::uint32_t start, std::uint32_t n, PendingMiss::Step step) {
    PagePool::PlaceOptions at;
    at.at = start;
    auto b = pool.begin_place(n, at);
    if (!b.ok()) {
      failed = b.error();
      return false;
    }
    if (b->empty()) return false;
    m.batch = std::move(*b);
    m.step = step;
    return true;
  };
  switch (m.step) {
    case PendingMiss::Step::run:
    case PendingMiss::Step::last_page: {
      auto booked = pool.finish_place(m.batch, m.index);
      if (booked.ok()) {
        if (!freed) open_tail(loc, e->size());
        return settle_miss(m);
      }
      failed = booked.error();
      if (m.step == PendingMiss::Step::last_page && loc.pages > 1) pool.give_back(loc.page, loc.pages - 1);
      break;
    }
    case PendingMiss::Step::body: {
      // Its last page's promise is kept through the alias step (a failed alias begins the whole
      // run again) and given back where the last slot gets its page or the miss ends.
      auto booked = pool.finish_place(m.batch, m.index);
      if (!booked.ok()) {
        failed = booked.error();  // the held last slot went back with the body
        break;
      }
      if (freed) {
        release_last_promise(m);
        pool.abandon_tail(loc.page, loc.pages);
        return drop_freed_miss(m.index);
      }
      // The slab page that fits now (others may have changed meanwhile): its physical page is
      // mapped at the last slot next, as place_on_slab_page does.
      if (SlabPage* host = tail_host(used_in_last_page(e->size(), loc.pages), {})) {
        m.plan = pool.begin_attach(loc.page, loc.pages, host->slot);
        m.host = host;
        m.host_had_objects = !host->holds_no_object();
        slabs.detach(host);
        m.step = PendingMiss::Step::alias;
        return false;
      }
      // None has the room any more: the last slot gets a page of its own, the promised one
      // (creatable again, for this object alone while the lock is held).
      release_last_promise(m);
      pool.free_held_slot(last);
      failed = make_error(Errc::internal, "the last slot was taken");
      if (begin_at(last, 1, PendingMiss::Step::last_page)) return false;
      if (loc.pages > 1) pool.give_back(loc.page, loc.pages - 1);
      break;
    }
    case PendingMiss::Step::place:  // placed before its calls (place_miss): never here
    case PendingMiss::Step::slab_alias:  // finish_small_tail_alias
      VALET_ASSERT(false);
      failed = make_error(Errc::internal, "a miss reached its booking unplaced");
      break;
    case PendingMiss::Step::alias: {
      slabs.attach(m.host);
      auto booked = pool.finish_attach(m.plan, m.index);
      if (booked.ok()) {
        release_last_promise(m);
        share_tail(loc, e->size(), m.host);
        // Its last objects were freed meanwhile: it retires as their free would have retired it.
        if (m.host_had_objects) retire_if_spare(m.host);
        return settle_miss(m);
      }
      retire_if_spare(m.host);
      failed = booked.error();  // the body went to the reserve, the last slot is free
      break;
    }
  }
  release_last_promise(m);  // its page may be the run's now
  if (freed) return drop_freed_miss(m.index);
  // The run's slots are free again: begin the whole run again at the same start, so that the
  // address the caller holds stays right.
  if (m.attempts < kMissAttempts && begin_at(loc.page, loc.pages, PendingMiss::Step::run)) {
    ++m.attempts;
    return false;
  }
  std::fprintf(stderr, "valet: a pending object of %zu bytes is lost: its pages could not be mapped (%s)\n", e->size(),
               failed.to_string().c_str());
  lose_miss(m.index);
  return true;
}

bool HeapCore::settle_miss(PendingMiss& m) {
  HandleEntry* e = handles.get(m.index);
  ++ops.background_misses;
  if (!misses.is_freed(m.index)) {
    end_move(e);  // pins waiting for the mapping go on
    return true;
  }
  // Freed while pending: released now, as the free would have released it (and trimmed after
  // the settle, trim_after_freed_misses).
  footprint_bytes -= footprint_of(e->loc);
  if (e->loc.kind == ObjectKind::large) mapper_trim_pages += e->loc.pages;
  release_location(e->loc);
  handles.release(m.index);
  return true;
}

void HeapCore::trim_after_freed_misses(std::unique_lock<HeapMutex>& lock) {
  keeper.chunks_for_misses_done();
  if (mapper_trim_pages == 0) return;
  const std::size_t pages = std::exchange(mapper_trim_pages, 0);
  (void)keeper.trim_surplus(lock, pages);
}

void HeapCore::trim_returned(std::unique_lock<HeapMutex>& lock, std::size_t pages) {
  mu.assert_held();
  if (misses.running() && keeper.trims_on_freeing_thread(pages)) {
    mapper_trim_pages += pages;
    misses.want_turn();
    return;
  }
  (void)keeper.trim_surplus(lock, pages);
}

bool HeapCore::drop_freed_miss(std::uint32_t index) {
  // Its run went back when its step failed or was given up: only the footprint and the index.
  footprint_bytes -= footprint_of(handles.get(index)->loc);
  handles.release(index);
  after_release();
  return true;
}

void HeapCore::end_pending_handle(HandleEntry* e) {
  live_bytes -= std::int64_t(e->size());
  --live_objects;
  table.changed();
  // Not live, same generation: its handle is stale from here; waiting pins wake and fail.
  claims::kill(e->state);
}

void HeapCore::lose_miss(std::uint32_t index) {
  mu.assert_held();
  end_pending_handle(handles.get(index));
  ++ops.lost_allocations;
  drop_freed_miss(index);  // its run went back with the failed step
}

Status HeapCore::free_pending(Handle h, HandleEntry* e) {
  mu.assert_held();
  // Nothing can have used it (a pin waits for its mapping), so no stream needs to pass: the
  // handle dies now, its run is released by the mapper once the step under way ends.
  end_pending_handle(e);
  ++ops.free;
  if (auto queued = misses.take_queued(h.index)) {
    // Its step's calls were not made yet: given up now, nothing mapped for it.
    abandon_miss(*queued, e->loc);
    drop_freed_miss(h.index);
    return {};
  }
  misses.mark_freed(h.index);
  return {};
}

void HeapCore::abandon_miss(PendingMiss& m, const Location& loc) {
  switch (m.step) {
    case PendingMiss::Step::place:  // nothing chosen yet: only its promise
      if (loc.kind == ObjectKind::slab)
        unplace_small(loc);
      else
        pool.unpromise(loc.pages);
      keeper.chunks_for_misses_done();
      break;
    case PendingMiss::Step::slab_alias:  // in the mapper's hand from place_miss to its booking: never queued
      VALET_ASSERT(false);
      m.tail_alias.status = make_error(Errc::invalid_state, "the object was freed before its slab page was mapped");
      (void)pool.finish_tail_alias(m.tail_alias);
      unplace_small(loc);
      break;
    case PendingMiss::Step::run:
    case PendingMiss::Step::body:
      release_last_promise(m);
      pool.abandon_place(m.batch);
      break;
    case PendingMiss::Step::last_page:
      pool.abandon_place(m.batch);
      if (loc.pages > 1) pool.give_back(loc.page, loc.pages - 1);  // the body its step booked
      break;
    case PendingMiss::Step::alias:
      // An attach that failed before its first call: the body goes to the reserve, the last
      // slot is free (or a queued drop again, for a retarget).
      m.plan.status = make_error(Errc::invalid_state, "the object was freed before its alias was mapped");
      release_last_promise(m);
      (void)pool.finish_attach(m.plan, 0);
      slabs.attach(m.host);
      retire_if_spare(m.host);
      break;
  }
}

void HeapCore::wait_for_misses(std::unique_lock<HeapMutex>& lock) {
  collect_unlocked_misses();
  if (misses.running()) misses.wait_settled(lock);
}

}  // namespace valet::detail
