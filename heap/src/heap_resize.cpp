// Heap::resize: large objects grow and shrink by mapping and unmapping pages at their end, or
// move by remapping their pages to a new virtual range (no copy); other changes copy the object
// to a new place of the right kind. The handle never changes.
#include "heap_core.h"
#include "size_classes.h"

namespace valet {

using detail::HandleEntry;
using detail::HeapCore;
using detail::Location;
using detail::ObjectKind;
namespace state = detail::state;

namespace {

std::uint32_t pages_for(std::size_t bytes) {
  return std::uint32_t((bytes + detail::kPageSize - 1) / detail::kPageSize);
}

Status resize_by_copy(HeapCore& c, std::unique_lock<detail::HeapMutex>& lock, std::uint32_t index, HandleEntry* e,
                      std::size_t bytes);
Status resize_large_unshared(HeapCore& c, std::uint32_t index, HandleEntry* e, std::size_t bytes);

// Resizes a large object that stays large. Precondition: `lock` holds mu (unsharing its tail
// releases it during the copy), the object is MOVING.
Status resize_large(HeapCore& c, std::unique_lock<detail::HeapMutex>& lock, std::uint32_t index, HandleEntry* e,
                    std::size_t bytes) {
  Location& loc = e->loc;
  const std::uint32_t tail = loc.page + loc.pages - 1;
  if (c.tails.is_shared(tail) && !c.unshare_tail(lock, tail).ok()) {
    // The slab page on its last page cannot move off it now: the object moves instead, by copy,
    // to pages of its own (releasing the old ones hands the shared page to the slab page).
    return resize_by_copy(c, lock, index, e, bytes);
  }
  // The last page changes (or its used part does): offered again once the resize is done. A
  // standby alias of it would keep the page from being released (a shrink gives it back).
  c.tails.close(tail);
  c.discard_standby_alias(tail);
  Status st = resize_large_unshared(c, index, e, bytes);
  if (st.code() == Errc::unsupported) {
    // Its run shares a chunk with other slots, which cannot be remapped without them: a copy.
    st = resize_by_copy(c, lock, index, e, bytes);
    if (!st.ok()) c.open_tail(loc, e->size());
    return st;
  }
  c.open_tail(loc, st.ok() ? bytes : e->size());
  return st;
}

// Resizes a large object whose last page is its own. Precondition as for resize_large.
Status resize_large_unshared(HeapCore& c, std::uint32_t index, HandleEntry* e, std::size_t bytes) {
  Location& loc = e->loc;
  const std::uint32_t want = pages_for(bytes);
  if (want == loc.pages) return {};
  if (want < loc.pages) {
    c.pool.give_back(loc.page + want, loc.pages - want);
    loc.pages = want;
    c.after_release();
    return {};
  }
  const std::uint32_t extra = want - loc.pages;
  auto grown = c.pool.extend_run(loc.page + loc.pages, extra, index);
  if (!grown.ok()) return grown.error();
  if (*grown) {
    loc.pages = want;
    return {};
  }
  // A neighbour is in the way: move the pages to a new virtual range and grow there.
  if (c.table_blocks_moves()) return make_error(Errc::pinned, "resize: the device handle table is pinned");
  auto moved = c.pool.relocate_run(loc.page, loc.pages, want, index);
  if (!moved.ok()) return moved.error();
  loc.page = *moved;
  loc.pages = want;
  return {};
}

// The arena slots a location reads or writes (none for the copying region's: no slot of its is
// ever unmapped beneath an object).
void add_slots(const Location& loc, std::vector<std::uint32_t>& out) {
  if (loc.kind == ObjectKind::region) return;
  const std::uint32_t n = loc.kind == ObjectKind::large ? loc.pages : 1;
  for (std::uint32_t k = 0; k < n; ++k) out.push_back(loc.page + k);
}

// Moves the object to a new place of the right kind for `bytes`, copying min(old, new) bytes
// through the move executor, without the heap lock: the object is claimed (pins and frees wait)
// and its new place is in transit, owned by nobody, until the copy completed.
// Precondition: `lock` holds mu (released and retaken), the object is MOVING.
Status resize_by_copy(HeapCore& c, std::unique_lock<detail::HeapMutex>& lock, std::uint32_t index, HandleEntry* e,
                      std::size_t bytes) {
  if (c.table_blocks_moves()) return make_error(Errc::pinned, "resize: the device handle table is pinned");
  auto dest = c.place(lock, bytes);
  if (!dest.ok()) return dest.error();
  // The placement may have let the lock go: the table may have been pinned meanwhile.
  if (c.table_blocks_moves()) {
    c.release_location(*dest);
    return make_error(Errc::pinned, "resize: the device handle table is pinned");
  }
  const bool slab = dest->kind == ObjectKind::slab;
  if (slab) ++c.in_transit;
  detail::CopyBatch batch;
  batch.copies.push_back({e->address.load(std::memory_order_relaxed), c.address_of(*dest), std::min(bytes, e->size())});
  add_slots(e->loc, batch.slots);
  add_slots(*dest, batch.slots);
  const Status st = c.mover.run(lock, batch);
  if (slab) --c.in_transit;
  if (!st.ok()) {
    c.release_location(*dest);
    return st;
  }
  c.set_owner(*dest, index);
  c.release_location(e->loc);
  e->loc = *dest;
  return {};
}

}  // namespace

Status Heap::resize(Handle h, std::size_t bytes) {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "resize: the heap was shut down");
  if (bytes == 0) return make_error(Errc::invalid_argument, "resize: 0 bytes (free the object instead)");
  if (bytes > (std::size_t{1} << 48)) return make_error(Errc::invalid_argument, "resize: size beyond any device");
  std::unique_lock lock(c.mu);
  HandleEntry* e = nullptr;
  for (;;) {
    if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "resize: the heap was shut down");
    auto looked = c.lookup(h);
    if (!looked.ok()) return looked.error();
    e = *looked;
    const std::uint64_t s = e->state.load(std::memory_order_acquire);
    if (state::pins(s) > 0) return make_error(Errc::pinned, "resize: the object is pinned");
    if (e->fixed) return make_error(Errc::pinned, "resize: the object is fixed (allocate_fixed): it never moves");
    if (s & state::kMoving) {
      // A compaction cycle is moving it: wait for the move to settle.
      lock.unlock();
      detail::claims::wait_not_moving(e->state, h.generation);
      lock.lock();
      continue;
    }
    if (c.try_begin_move(e)) break;
    if (!e->pending_unpins.empty()) return make_error(Errc::pinned, "resize: a stream-ordered unpin is still pending");
  }
  if (bytes > c.capacity_pages * detail::kPageSize) {
    c.end_move(e);
    return make_error(Errc::out_of_memory, "resize: " + std::to_string(bytes) + " bytes exceeds the heap's capacity");
  }
  const std::size_t old_size = e->size();
  const std::size_t old_footprint = c.footprint_of(e->loc);
  const bool was_large = e->loc.kind == ObjectKind::large;
  const bool stays_large = was_large && bytes > detail::kMaxSlabObject;
  const bool same_class = e->loc.kind == ObjectKind::slab && bytes <= detail::kMaxSlabObject &&
                          detail::class_of(bytes) == detail::class_of(old_size);
  Status st;
  if (same_class) {
    // Nothing moves.
  } else if (stays_large) {
    st = resize_large(c, lock, h.index, e, bytes);
  } else {
    st = resize_by_copy(c, lock, h.index, e, bytes);
  }
  if (!st.ok() && st.code() == Errc::out_of_memory) {
    // Free pages (empty slab pages; with compact_on_oom, by evacuating other objects: this one
    // is MOVING, so it stays put), then retry.
    const detail::KeeperPause paused(c.keeper);  // until the retry is done
    c.make_room(lock);
    st = stays_large ? resize_large(c, lock, h.index, e, bytes) : resize_by_copy(c, lock, h.index, e, bytes);
  }
  if (st.ok()) {
    e->set_size(bytes);
    e->address.store(c.address_of(e->loc), std::memory_order_relaxed);
    c.live_bytes += std::int64_t(bytes) - std::int64_t(old_size);
    c.footprint_bytes = c.footprint_bytes - old_footprint + c.footprint_of(e->loc);
    ++c.ops.resize;
    c.table.changed();
  } else if (st.code() == Errc::out_of_memory) {
    ++c.ops.failed_allocations;
    st = c.out_of_memory(bytes, st.error());
  }
  c.end_move(e);  // release-store: a pin that follows sees the new address and size
  return st;
}

}  // namespace valet
