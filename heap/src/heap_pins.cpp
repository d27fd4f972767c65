// Looking handles up and pinning objects: lock-free (move claims, move_claims.h), except that a
// stream pin's release records its event under the heap lock.
#include <string>

#include "heap_core.h"

namespace valet {
namespace detail {

void HeapCore::note_pin_wait(std::uint64_t ns) {
  for (auto* max : {&pin_wait_ns_max, &cycle_pin_wait_ns}) {
    std::uint64_t cur = max->load(std::memory_order_relaxed);
    while (ns > cur && !max->compare_exchange_weak(cur, ns, std::memory_order_relaxed)) {
    }
  }
}

Result<HandleEntry*> HeapCore::lookup(Handle h) const {
  if (h.is_null()) return make_error(Errc::invalid_handle, "null handle");
  if (h.heap != tag)
    return make_error(Errc::foreign_handle, "handle of another heap (tag " + std::to_string(h.heap) +
                                                ", this heap is " + std::to_string(tag) + ")");
  HandleEntry* e = handles.get(h.index);
  if (!e || h.index == 0) return make_error(Errc::invalid_handle, "handle index " + std::to_string(h.index) + " was never issued");
  const std::uint64_t s = e->state.load(std::memory_order_acquire);
  if (state::generation(s) != h.generation || !(s & state::kLive))
    return make_error(Errc::stale_handle, "stale handle: the object was freed (double free or use after free)");
  return e;
}

void HeapCore::serve_pending(Handle h) {
  std::unique_lock lock(mu);
  // lookup again under the lock: the entry may have been freed and taken since the caller's.
  if (!lookup(h).ok()) return;
  if (!misses.is_pending(h.index)) collect_unlocked_misses();  // it may wait in a cache
  if (!misses.is_pending(h.index) || !misses.serve_queued(h.index, lock)) return;
  ++ops.misses_served_by_pins;
  // What the mapper does after a miss (trim_after_freed_misses): the chunks left to misses go
  // to the keeper here; the trim of what an object freed meanwhile returned (its run released
  // at the booking) is the mapper's, in a turn before the misses queued after it, so that no
  // miss creates pages beside those (a probe freed while pending and the next probe).
  keeper.chunks_for_misses_done();
  if (mapper_trim_pages > 0 && misses.running()) misses.want_turn();
}

Result<HandleEntry*> HeapCore::acquire_pin(Handle h, DevicePtr& address) {
  if (shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "pin: the heap was shut down");
  auto looked = lookup(h);
  if (!looked.ok()) return looked;
  HandleEntry* e = *looked;
  if (config.pins_serve_misses && claims::waits_for_move(e->state.load(std::memory_order_acquire))) serve_pending(h);
  std::uint64_t before = 0, waited_ns = 0;
  Status st = claims::add_pin(e->state, h.generation, before, waited_ns);
  if (waited_ns) note_pin_wait(waited_ns);
  if (!st.ok()) {
    if (st.code() == Errc::stale_handle && shut.load(std::memory_order_acquire))
      return make_error(Errc::shut_down, "pin: the heap was shut down");
    return st.error();
  }
  // Aliased: the page is being remapped; the bytes are complete at the alias, which stays mapped
  // while the object lives (whether the remap succeeds, or fails and the object is repointed).
  address = (before & state::kAliased) ? e->alias.load(std::memory_order_acquire) : e->address.load(std::memory_order_acquire);
  pin_count.fetch_add(1, std::memory_order_relaxed);
  return e;
}

Status HeapCore::unpin_on_stream(HandleEntry* e, Stream s) {
  // The event is listed before the pin count drops: a mover sees one or the other (and a free
  // on a thread cache's fast path sees the flag).
  e->unpins_recorded.store(true, std::memory_order_relaxed);
  Status st = releases.record(mu, s, e->pending_unpins);
  unpin(e);
  return st;
}

}  // namespace detail

using detail::HeapCore;

// --- Pin / StreamPin ---

Pin& Pin::operator=(Pin&& o) noexcept {
  if (this != &o) {
    reset();
    core_ = std::exchange(o.core_, nullptr);
    handle_ = o.handle_;
    address_ = o.address_;
    size_ = o.size_;
  }
  return *this;
}

void Pin::reset() {
  if (!core_) return;
  core_->unpin(core_->handles.get(handle_.index));
  core_ = nullptr;
}

StreamPin& StreamPin::operator=(StreamPin&& o) noexcept {
  if (this != &o) {
    (void)release();
    core_ = std::exchange(o.core_, nullptr);
    handle_ = o.handle_;
    stream_ = o.stream_;
    address_ = o.address_;
    size_ = o.size_;
  }
  return *this;
}

Status StreamPin::release() {
  if (!core_) return {};
  auto* core = std::exchange(core_, nullptr);
  return core->unpin_on_stream(core->handles.get(handle_.index), stream_);
}

Result<Pin> Heap::pin(Handle h) {
  auto& c = *core_;
  DevicePtr address = 0;
  auto e = c.acquire_pin(h, address);
  if (!e.ok()) return e.error();
  Pin p;
  p.core_ = &c;
  p.handle_ = h;
  p.address_ = address;
  p.size_ = (*e)->size();
  return p;
}

Result<StreamPin> Heap::pin(Handle h, Stream stream) {
  auto& c = *core_;
  DevicePtr address = 0;
  auto e = c.acquire_pin(h, address);
  if (!e.ok()) return e.error();
  StreamPin p;
  p.core_ = &c;
  p.handle_ = h;
  p.stream_ = stream;
  p.address_ = address;
  p.size_ = (*e)->size();
  return p;
}

}  // namespace valet
