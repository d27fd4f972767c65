// The allocation path: placing, allocating, freeing (deferred while stream-ordered unpins are
// pending), making room before out-of-memory, and the compaction entry point.
#include <cstdio>
#include <string>
#include <thread>

#include "heap_core.h"
#include "size_classes.h"

namespace valet {
namespace detail {
namespace {

constexpr std::size_t kMaxObject = std::size_t{1} << 48;

std::string mib(std::size_t bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1 << 20));
  return buf;
}

}  // namespace

bool HeapCore::try_begin_move(HandleEntry* e, bool cancelable) {
  // A stream-ordered unpin may still have queued work on the object. Checked before the claim:
  // a pin can only add events while it holds a pin, which the claim rules out.
  const std::uint64_t s = e->state.load(std::memory_order_acquire);
  if (!state::live(s) || (s & state::kMoving) || state::pins(s) != 0) return false;
  if (!e->pending_unpins.empty() && !reap_unpins(e)) return false;
  return claims::try_claim(e->state, cancelable);
}

void HeapCore::reap_deferred() {
  mu.assert_held();
  releases.reap_deferred([&](const DeferredFree& d) {
    footprint_bytes -= d.footprint;
    release_location(d.loc);
  });
}

DevicePtr HeapCore::address_of(const Location& loc) const {
  if (loc.kind == ObjectKind::large) return pool.address(loc.page);
  const SlabPage* p = slabs.page(pool.slot(loc.page).owner);
  return pool.address(loc.page) + DevicePtr(loc.index) * class_size(p->cls);
}

std::size_t HeapCore::footprint_of(const Location& loc) const {
  if (loc.kind == ObjectKind::large) return std::size_t(loc.pages) * kPageSize;
  return class_size(slabs.page(pool.slot(loc.page).owner)->cls);
}

Result<Location> HeapCore::place(std::size_t bytes, std::uint32_t owner) {
  mu.assert_held();
  if (bytes <= kMaxSlabObject) {
    const std::uint32_t cls = class_of(bytes);
    SlabPage* page = slabs.densest_with_room(cls);
    if (!page) page = slab_on_tail(cls);
    if (!page) {
      auto slot = pool.take_page(SlotKind::slab, 0);
      if (!slot.ok()) return slot.error();
      page = slabs.create(cls, *slot);
      pool.slot(*slot).owner = page->id;
      want_refill();
    }
    const std::uint32_t i = slabs.take_slot(page, owner);
    return Location{ObjectKind::slab, page->slot, i, 0};
  }
  const std::uint32_t n = std::uint32_t((bytes + kPageSize - 1) / kPageSize);
  demand.large_pages.note(n, now_ns());
  // Its last page on a slab page's physical page, when one has the room (no page of its own).
  // This maps pages on the caller's thread (docs/speed.md says why it stays for now).
  if (auto loc = place_on_slab_page(bytes, n, owner)) return *loc;
  auto run = pool.take_run(n, owner);
  if (!run.ok()) return run.error();
  want_refill();
  const Location loc{ObjectKind::large, *run, 0, n};
  open_tail(loc, bytes);
  return loc;
}

void HeapCore::release_location(const Location& loc) {
  mu.assert_held();
  if (loc.kind == ObjectKind::large) {
    release_large(loc);
  } else {
    SlabPage* p = free_slab_slot(loc);
    // Keep one empty page per class against allocate/free ping-pong; give back the others.
    if (p->holds_no_object() && !p->evacuating && slabs.pages_of(p->cls) > 1) (void)retire_slab(p);
  }
  after_release();
}

Error HeapCore::out_of_memory(std::size_t asked, const Error& cause) const {
  if (cause.code != Errc::out_of_memory) return cause;
  return make_error(Errc::out_of_memory,
                    "cannot allocate " + std::to_string(asked) + " bytes (" + mib(asked) + "): live " +
                        mib(live_bytes) + " in " + std::to_string(live_objects) + " objects (footprint " +
                        mib(footprint_bytes) + "), held " + mib(pool.created_pages() * kPageSize) +
                        " of a capacity of " + mib(capacity_pages * kPageSize) + "; " + cause.message);
}

Result<Handle> HeapCore::allocate_locked(std::size_t bytes) {
  mu.assert_held();
  std::uint32_t index;
  if (!handles.acquire(index)) return make_error(Errc::out_of_memory, "the handle table is full");
  auto loc = place(bytes, index);
  if (!loc.ok()) {
    handles.release(index);
    return loc.error();
  }
  HandleEntry* e = handles.get(index);
  e->size = bytes;
  e->loc = *loc;
  e->address.store(address_of(*loc), std::memory_order_relaxed);
  const std::uint32_t gen = claims::make_live(e->state);
  live_bytes += bytes;
  demand.live_peak.note(live_bytes, now_ns());
  footprint_bytes += footprint_of(*loc);
  ++live_objects;
  ++ops.allocate;
  table.changed();
  return Handle{index, gen, tag};
}

void HeapCore::emergency_compact(std::unique_lock<HeapMutex>& lock) {
  CompactRequest req;
  req.max_occupancy = 0.999;
  req.trigger = CompactionTrigger::emergency;
  // Lock order: the compaction lock before the heap lock.
  lock.unlock();
  std::lock_guard cl(compaction_mu);
  lock.lock();
  if (shut.load(std::memory_order_relaxed)) return;  // a shutdown ran while the lock was released
  (void)compact_locked(lock, req);
}

void HeapCore::make_room(std::unique_lock<HeapMutex>& lock) {
  mu.assert_held();
  reap_deferred();
  retire_empty_slabs();  // to the reserve, where the retry finds them
  // Pages the keeper is moving without the lock come back first: out-of-memory is never
  // reported while they are on their way. (Only the batch in flight: the keeper may start
  // another one each time it books one.)
  const std::uint64_t seen = pool.batches_finished();
  while (pool.batch_in_flight() && pool.batches_finished() == seen) {
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
  // An emergency cycle (bounded: one full cycle) evacuates sparse pages.
  if (config.compact_on_oom) emergency_compact(lock);
}

}  // namespace detail

using detail::HandleEntry;
using detail::HeapCore;
namespace state = detail::state;
namespace claims = detail::claims;

Result<Handle> Heap::allocate(std::size_t bytes) {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "allocate: the heap was shut down");
  if (bytes == 0) return make_error(Errc::invalid_argument, "allocate: 0 bytes");
  if (bytes > detail::kMaxObject)
    return make_error(Errc::invalid_argument, "allocate: " + std::to_string(bytes) + " bytes is beyond any device");
  std::unique_lock lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "allocate: the heap was shut down");
  if (bytes > c.capacity_pages * detail::kPageSize) {
    ++c.ops.failed_allocations;
    return make_error(Errc::out_of_memory, "allocate: " + std::to_string(bytes) + " bytes exceeds the heap's capacity of " +
                                               std::to_string(c.capacity_pages * detail::kPageSize) + " bytes");
  }
  auto h = c.allocate_locked(bytes);
  if (h.ok() || h.code() != Errc::out_of_memory) return h;
  // Out-of-memory is never reported while free pages are held: make room, and retry once.
  c.make_room(lock);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "allocate: the heap was shut down");
  h = c.allocate_locked(bytes);
  if (h.ok()) return h;
  ++c.ops.failed_allocations;
  return c.out_of_memory(bytes, h.error());
}

Status Heap::free(Handle h) {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "free: the heap was shut down");
  std::unique_lock lock(c.mu);
  for (;;) {
    if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "free: the heap was shut down");
    auto looked = c.lookup(h);
    if (!looked.ok()) return looked.error();
    HandleEntry* e = *looked;
    std::uint64_t s = e->state.load(std::memory_order_acquire);
    if (state::pins(s) > 0) return make_error(Errc::pinned, "free: the object is pinned");
    if (s & state::kMoving) {
      lock.unlock();
      claims::wait_not_moving(e->state, h.generation);
      lock.lock();
      continue;
    }
    if (!claims::try_free(e->state, s, h.generation)) continue;
    c.live_bytes -= e->size;
    --c.live_objects;
    ++c.ops.free;
    c.table.changed();
    const std::size_t footprint = c.footprint_of(e->loc);
    if (!e->pending_unpins.empty() && !c.reap_unpins(e)) {
      // The memory stays taken, owned by nobody, until the streams pass their unpins.
      if (e->loc.kind == detail::ObjectKind::slab)
        c.slabs.set_owner(c.slabs.page(c.pool.slot(e->loc.page).owner), e->loc.index, detail::kNoOwner);
      else
        for (std::uint32_t k = 0; k < e->loc.pages; ++k) c.pool.slot(e->loc.page + k).owner = 0;
      c.releases.defer({e->loc, footprint, std::move(e->pending_unpins)});
      e->pending_unpins.clear();
    } else {
      c.footprint_bytes -= footprint;
      c.release_location(e->loc);
    }
    c.handles.release(h.index);
    // The pages beyond the reserve's limit go back to the backend now, in this call but without
    // the heap lock: held memory follows live memory, and the freeing thread (which gave back
    // more than the reserve's budget) pays for it rather than every later allocation. Within
    // the budget a free makes no driver call.
    if (e->loc.kind == detail::ObjectKind::large) (void)c.keeper.trim_surplus(lock);
    return {};
  }
}

Result<std::size_t> Heap::size_of(Handle h) const {
  if (core_->shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "size_of: the heap was shut down");
  std::lock_guard lock(core_->mu);
  if (core_->shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "size_of: the heap was shut down");
  auto e = core_->lookup(h);
  if (!e.ok()) return e.error();
  return (*e)->size;
}

Status Heap::maintain() {
  auto& c = *core_;
  if (c.shut.load()) return make_error(Errc::shut_down, "maintain: the heap was shut down");
  std::lock_guard lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "maintain: the heap was shut down");
  c.reap_deferred();
  c.retire_empty_slabs();
  return c.keeper.balance();
}

Result<CompactionRecord> Heap::compact(const CompactRequest& request) {
  auto& c = *core_;
  if (c.shut.load()) return make_error(Errc::shut_down, "compact: the heap was shut down");
  if (!(request.max_occupancy > 0 && request.max_occupancy < 1))
    return make_error(Errc::invalid_argument, "compact: max_occupancy must be within (0, 1)");
  std::lock_guard cl(c.compaction_mu);
  std::unique_lock lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "compact: the heap was shut down");
  return c.compact_locked(lock, request);
}

}  // namespace valet
