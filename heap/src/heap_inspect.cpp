// Heap::stats, occupancy, open tails and the page map: snapshots under the heap lock (the JSON
// form of the stats is the runtime's: stats_json.cpp; validate is heap_validate.cpp).
#include <algorithm>
#include <bit>
#include <string>

#include "heap_core.h"
#include "size_classes.h"

namespace valet {

using detail::HandleEntry;
using detail::HeapCore;
using detail::ObjectKind;
using detail::SlotKind;
namespace state = detail::state;

namespace {

// One role's holds as HeapStats reports them: quantiles as their bucket's upper bound.
HeapStats::LockHolds lock_holds_of(const detail::LockHolds& h, std::size_t role) {
  HeapStats::LockHolds out;
  const auto& hist = h.histogram[role];
  for (std::uint64_t n : hist) out.holds += n;
  out.total_ns = h.total_ns[role];
  out.longest_ns = h.longest_ns[role];
  constexpr std::size_t k8us = std::bit_width(std::uint64_t(8192));  // the first bucket of 8192 ns and more
  for (std::size_t b = k8us; b < hist.size(); ++b) out.over_8us += hist[b];
  const auto upper_bound_at = [&](double q) -> std::uint64_t {
    if (out.holds == 0) return 0;
    const auto rank = std::uint64_t(q * double(out.holds - 1)) + 1;
    std::uint64_t seen = 0;
    for (std::size_t b = 0; b < hist.size(); ++b)
      if ((seen += hist[b]) >= rank) return b == 0 ? 0 : (std::uint64_t(1) << b) - 1;
    return out.longest_ns;
  };
  out.p50_ns = std::min(upper_bound_at(0.5), out.longest_ns);
  out.p99_ns = std::min(upper_bound_at(0.99), out.longest_ns);
  return out;
}

}  // namespace

const char* trigger_name(CompactionTrigger t) {
  switch (t) {
    case CompactionTrigger::explicit_request: return "explicit";
    case CompactionTrigger::emergency: return "emergency";
    case CompactionTrigger::fragmentation: return "fragmentation";
    case CompactionTrigger::reserve_low: return "reserve_low";
    case CompactionTrigger::idle: return "idle";
    case CompactionTrigger::safepoint: return "safepoint";
    case CompactionTrigger::tails: return "tails";
  }
  return "?";
}

namespace detail {

HeapStats::Pages HeapCore::pages_by_use() const {
  mu.assert_held();
  HeapStats::Pages p;
  // Pages a keeper batch holds mapped nowhere count as idle reserve pages, so that the pages by
  // use still add up to the mapped pages; a place batch's pages (an allocation's run, a pending
  // object's for as long as it is pending) count as large.
  const std::size_t unplaced = pool.unplaced_in_flight() - pool.placing_unplaced();
  p.reserve = pool.reserve_pages() + pool.chunk_reserve_pages() + unplaced;
  p.idle = pool.idle_pages() + unplaced;
  p.releasing = pool.releasing_pages() - pool.placing_moved() - pool.freed_in_flight() + pool.pages_only_dropping();
  p.moving = moving_pages;
  p.slab = slabs.live_pages();
  p.large = pool.slots_of_kind(SlotKind::large) + pool.placing_pages();
  p.chunked = pool.chunk_pages();
  p.chunks = pool.chunks();
  p.chunk_reserve = pool.chunk_reserve_pages();
  p.chunks_created = pool.chunks_created();
  p.meshed = meshed_slots();
  p.shared_tails = tails.shared_count();
  p.region = region.chunks.size() * (region_on() ? region.book->chunk() / kPageSize : 0);
  return p;
}

}  // namespace detail

HeapStats Heap::stats() const {
  auto& c = *core_;
  std::lock_guard lock(c.mu);
  // The thread caches' counter deltas folded in (a stats call is not a still picture otherwise).
  if (!c.shut) {
    detail::FastPathGate gate(c.caches);
    c.fold_caches();
  }
  HeapStats s;
  s.backend = c.backend->name();
  s.capacity_bytes = c.capacity_pages * detail::kPageSize;
  s.live_bytes = c.live_bytes_known();
  s.live_objects = std::size_t(std::max<std::int64_t>(0, c.live_objects));
  s.fixed_objects = c.fixed_objects;
  s.fixed_bytes = c.fixed_bytes;
  s.stream_cached_bytes = c.releases.cached_footprint();
  s.stream_deferred_bytes = c.releases.deferred_footprint();
  s.footprint_bytes = c.footprint_bytes;
  s.mapped_bytes = c.pool.created_pages() * detail::kPageSize;
  s.peak_mapped_bytes = c.pool.peak_created_pages() * detail::kPageSize;
  s.reserved_bytes = std::size_t(c.pool.slot_count()) * detail::kPageSize;
  s.pages = c.pages_by_use();
  if (c.region_on()) {
    const detail::CopyRegion& book = *c.region.book;
    const auto& r = c.region;
    s.copy_region = {book.mapped(), book.top(), book.hole_bytes(), book.object_count(), r.placed,          r.fell_back,
                     r.rounds,      r.moves,  r.moves_cancelled, r.bytes_moved,        r.chunks_mapped, r.chunks_unmapped};
  }
  // The chunk reserve is mapped and unused too (outside the reserve's budget, not its count).
  s.reserve_bytes = s.pages.reserve * detail::kPageSize;
  s.fragmentation = s.mapped_bytes ? 1.0 - double(s.live_bytes) / double(s.mapped_bytes) : 0.0;
  // Pages credited to thread caches come back before an allocation is refused (make_room).
  std::size_t credited = 0;
  c.caches.for_each([&](const detail::ThreadCache& tc) { credited += tc.credit_pages; });
  s.largest_allocatable_bytes = c.shut ? 0 : (c.pool.available_pages() + credited) * detail::kPageSize;
  c.slabs.for_each_page([&](const detail::SlabPage& p) {
    const std::size_t bin = std::min<std::size_t>(9, std::size_t(p.used) * 10 / p.capacity);
    ++s.occupancy_histogram[bin];
  });
  s.ops = c.ops;
  s.ops.pin = c.pin_count.load(std::memory_order_relaxed);
  s.ops.mapper_wakes = c.misses.wakes();
  const DriverCallCounts calls = c.backend->totals();
  const detail::KeeperLockWaits waits = c.keeper.lock_waits();
  s.keeper = {waits.batches, waits.yields, waits.wait_ns, waits.longest_ns, waits.over_1ms};
  const detail::LockHolds& holds = c.mu.holds();
  HeapStats::LockHolds* by_role[] = {&s.lock_holds.callers, &s.lock_holds.mapper, &s.lock_holds.keeper,
                                     &s.lock_holds.compaction};
  for (std::size_t r = 0; r < detail::kLockRoles; ++r) *by_role[r] = lock_holds_of(holds, r);
  s.driver_calls.create = calls[DriverOp::create_page];
  s.driver_calls.release = calls[DriverOp::release_page];
  s.driver_calls.map = calls[DriverOp::map];
  s.driver_calls.unmap = calls[DriverOp::unmap];
  s.driver_calls.set_access = calls[DriverOp::set_access];
  s.driver_calls.copy = calls[DriverOp::copy];
  s.driver_calls.under_heap_lock = c.backend->under_lock().total();
  const DriverCallTimes times = c.backend->times();
  using detail::LockRole;
  s.driver_calls.time = {times.total_ns(), times.thread_kind_ns(std::size_t(LockRole::caller)),
                         times.thread_kind_ns(std::size_t(LockRole::mapper)),
                         times.thread_kind_ns(std::size_t(LockRole::keeper)),
                         times.thread_kind_ns(std::size_t(LockRole::compaction))};
  s.compaction = c.compaction;
  s.recent_cycles.assign(c.recent_cycles.begin(), c.recent_cycles.end());
  return s;
}

std::vector<ClassOccupancy> Heap::occupancy() const {
  const auto& c = *core_;
  std::vector<ClassOccupancy> out(detail::kClassCount);
  std::lock_guard lock(c.mu);
  for (std::uint32_t k = 0; k < detail::kClassCount; ++k) {
    out[k].class_size = std::uint32_t(detail::class_size(k));
    out[k].slots_per_page = detail::class_slots(k);
  }
  // Pages on tails are left out: emptying them frees nothing (and their blocked slots are not
  // objects), so planners must not count them as candidates; their free slots take objects.
  c.slabs.for_each_page([&](const detail::SlabPage& p) {
    if (!p.on_tail()) out[p.cls].used.push_back(p.used);
    else out[p.cls].tail_free_slots += p.capacity - p.used;
  });
  return out;
}

std::vector<std::uint32_t> Heap::open_tail_bytes() const {
  const auto& c = *core_;
  std::lock_guard lock(c.mu);
  std::vector<std::uint32_t> out;
  for (const auto& [slot, used] : c.tails.open_tails()) out.push_back(used);
  return out;
}

const char* page_kind_name(PageKind k) {
  switch (k) {
    case PageKind::slab: return "slab";
    case PageKind::meshed: return "meshed";
    case PageKind::large: return "large";
    case PageKind::reserve: return "reserve";
  }
  return "?";
}

std::vector<PageInfo> Heap::page_map() const {
  const auto& c = *core_;
  std::lock_guard lock(c.mu);
  std::vector<PageInfo> out;
  if (c.shut) return out;
  // Objects addressed through each slab slot (own slot or alias), the threads' cached ones too
  // (their slots are taken): a still picture.
  detail::FastPathGate gate(c.caches);
  std::vector<std::uint32_t> through(c.pool.slot_count(), 0);
  for (std::uint32_t i = 1; i < c.handles.high_water(); ++i) {
    const HandleEntry* e = c.handles.get(i);
    if ((e->state.load(std::memory_order_acquire) & state::kLive) && e->loc.kind == ObjectKind::slab &&
        e->loc.page != HeapCore::kUnplaced)
      ++through[e->loc.page];
  }
  c.caches.for_each([&](const detail::ThreadCache& tc) {
    for (const auto& bin : tc.bins)
      for (const detail::CachedSlot& cs : bin) ++through[cs.loc.page];
  });
  for (std::uint32_t k = 0; k < c.pool.slot_count(); ++k) {
    const auto& slot = c.pool.slot(k);
    PageInfo info;
    info.slot = k;
    switch (slot.kind) {
      case SlotKind::unmapped:
      case SlotKind::dropping: continue;  // an alias on its way out: its page shows where it is owned
      case SlotKind::reserve: info.kind = PageKind::reserve; break;
      case SlotKind::large: {
        info.kind = PageKind::large;
        const HandleEntry* e = slot.owner ? c.handles.get(slot.owner) : nullptr;
        if (e && (e->state.load() & state::kLive) && e->loc.kind == ObjectKind::large) {
          const std::uint64_t begin = std::uint64_t(k - e->loc.page) * detail::kPageSize;
          info.used_bytes = e->size() > begin ? std::min<std::uint64_t>(e->size() - begin, detail::kPageSize) : 0;
        }
        info.sharers = c.pool.live_mappings_of(k);
        break;
      }
      case SlotKind::slab: {
        const detail::SlabPage* p = c.slabs.page(slot.owner);
        info.kind = p->slot == k ? PageKind::slab : PageKind::meshed;
        info.class_size = std::uint32_t(detail::class_size(p->cls));
        info.used_slots = p->used;
        info.total_slots = p->capacity;
        info.through_this = through[k];
        info.maps_page_of = p->slot == k && p->on_tail() ? p->tail_slot : p->slot;
        info.blocked_slots = p->blocked;
        info.sharers = c.pool.live_mappings_of(k);
        break;
      }
    }
    out.push_back(info);
  }
  return out;
}

}  // namespace valet
