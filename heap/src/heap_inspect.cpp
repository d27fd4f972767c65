// Heap::stats, Heap::validate and the JSON form of the stats.
#include <algorithm>
#include <bit>
#include <string>

#include "heap_core.h"
#include "size_classes.h"
#include "valet/stats_json.h"

namespace valet {

using detail::HandleEntry;
using detail::HeapCore;
using detail::ObjectKind;
using detail::SlotKind;
namespace state = detail::state;

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

HeapStats Heap::stats() const {
  const auto& c = *core_;
  std::lock_guard lock(c.mu);
  HeapStats s;
  s.backend = c.backend->name();
  s.capacity_bytes = c.capacity_pages * detail::kPageSize;
  s.live_bytes = c.live_bytes;
  s.live_objects = c.live_objects;
  s.footprint_bytes = c.footprint_bytes;
  s.mapped_bytes = c.pool.created_pages() * detail::kPageSize;
  s.reserved_bytes = std::size_t(c.pool.slot_count()) * detail::kPageSize;
  s.reserve_bytes = c.pool.reserve_pages() * detail::kPageSize;
  s.fragmentation = s.mapped_bytes ? 1.0 - double(s.live_bytes) / double(s.mapped_bytes) : 0.0;
  s.largest_allocatable_bytes = c.shut ? 0 : c.pool.available_pages() * detail::kPageSize;
  s.pages.reserve = c.pool.reserve_pages();
  s.pages.idle = c.pool.idle_pages();
  s.pages.releasing = c.pool.releasing_pages();
  s.pages.slab = c.slabs.live_pages();
  s.pages.large = c.pool.slots_of_kind(SlotKind::large);
  s.pages.meshed = c.meshed_slots();
  s.pages.shared_tails = c.shared_tails.size();
  c.slabs.for_each_page([&](const detail::SlabPage& p) {
    const std::size_t bin = std::min<std::size_t>(9, std::size_t(p.used) * 10 / p.capacity);
    ++s.occupancy_histogram[bin];
  });
  s.ops = c.ops;
  s.ops.pin = c.pin_count.load(std::memory_order_relaxed);
  s.driver_calls = c.pool.driver_calls();
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
  for (const auto& [slot, used] : c.open_tails) out.push_back(used);
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
  // Objects addressed through each slab slot (own slot or alias).
  std::vector<std::uint32_t> through(c.pool.slot_count(), 0);
  for (std::uint32_t i = 1; i < c.handles.high_water(); ++i) {
    const HandleEntry* e = c.handles.get(i);
    if ((e->state.load(std::memory_order_acquire) & state::kLive) && e->loc.kind == ObjectKind::slab) ++through[e->loc.page];
  }
  for (std::uint32_t k = 0; k < c.pool.slot_count(); ++k) {
    const auto& slot = c.pool.slot(k);
    PageInfo info;
    info.slot = k;
    switch (slot.kind) {
      case SlotKind::unmapped: continue;
      case SlotKind::reserve: info.kind = PageKind::reserve; break;
      case SlotKind::large: {
        info.kind = PageKind::large;
        const HandleEntry* e = slot.owner ? c.handles.get(slot.owner) : nullptr;
        if (e && (e->state.load() & state::kLive) && e->loc.kind == ObjectKind::large) {
          const std::uint64_t begin = std::uint64_t(k - e->loc.page) * detail::kPageSize;
          info.used_bytes = e->size > begin ? std::min<std::uint64_t>(e->size - begin, detail::kPageSize) : 0;
        }
        info.sharers = c.pool.mappings_of(k);
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
        info.sharers = c.pool.mappings_of(k);
        break;
      }
    }
    out.push_back(info);
  }
  return out;
}

Status Heap::validate() const {
  const auto& c = *core_;
  std::lock_guard lock(c.mu);
  auto fail = [](const std::string& what) { return make_error(Errc::internal, "validate: " + what); };
  if (c.shut) return {};
  VALET_TRY(c.pool.validate());

  // Slab pages: bitmaps, counts, buckets, slot table.
  std::size_t unowned_taken = 0, blocked = 0;
  std::size_t slab_pages = 0;
  Status bad;
  c.slabs.for_each_page([&](const detail::SlabPage& p) {
    if (!bad.ok()) return;
    ++slab_pages;
    const auto& slot = c.pool.slot(p.slot);
    if (slot.kind != SlotKind::slab || slot.owner != p.id) {
      bad = fail("slab page " + std::to_string(p.id) + " and the slot table disagree");
      return;
    }
    // A page on a shared tail maps the physical page of the large object's last slot, and its
    // blocked slots cover the bytes the object uses there.
    if (p.on_tail()) {
      blocked += p.blocked;
      const auto& ts = c.pool.slot(p.tail_slot);
      const auto link = c.shared_tails.find(p.tail_slot);
      if (link == c.shared_tails.end() || link->second != p.id || ts.kind != SlotKind::large || ts.phys != slot.phys)
        bad = fail("slab page " + std::to_string(p.id) + " is not linked to the tail it shares");
      for (std::uint32_t i = 0; i < p.blocked; ++i)
        if (!p.test(i) || p.owners[i] != detail::kNoOwner) bad = fail("a blocked slot of a shared tail is free or owned");
      const HandleEntry* e = ts.owner ? c.handles.get(ts.owner) : nullptr;
      if (e && (e->state.load() & state::kLive) && e->loc.kind == ObjectKind::large) {
        const std::uint64_t used = e->size - std::uint64_t(e->loc.pages - 1) * detail::kPageSize;
        if (std::uint64_t(p.blocked) * detail::class_size(p.cls) < used)
          bad = fail("slab page " + std::to_string(p.id) + " does not block all of the tail's bytes");
      }
    } else if (p.blocked != 0) {
      bad = fail("slab page " + std::to_string(p.id) + " blocks slots without a tail");
    }
    // Aliases map the page's physical page, name the page as owner, and are counted exactly.
    if (p.sharers() > detail::kMaxSharers) bad = fail("slab page " + std::to_string(p.id) + " has too many sharers");
    std::vector<std::uint32_t> through(p.aliases.size(), 0);
    for (const auto& a : p.aliases) {
      const auto& as = c.pool.slot(a.slot);
      if (a.slot == p.slot || as.kind != SlotKind::slab || as.owner != p.id || as.phys != slot.phys)
        bad = fail("alias " + std::to_string(a.slot) + " of slab page " + std::to_string(p.id) + " does not map its page");
    }
    auto alias_index = [&](std::uint32_t s) -> std::ptrdiff_t {
      for (std::size_t k = 0; k < p.aliases.size(); ++k)
        if (p.aliases[k].slot == s) return std::ptrdiff_t(k);
      return -1;
    };
    std::uint32_t bits = 0;
    for (std::uint32_t i = 0; i < p.capacity; ++i) {
      const bool taken = p.test(i);
      bits += taken;
      if (!taken && p.owners[i] != detail::kNoOwner) bad = fail("a free slot has an owner");
      if (taken && p.owners[i] == detail::kNoOwner) ++unowned_taken;
      if (taken && p.owners[i] != detail::kNoOwner) {
        const HandleEntry* e = c.handles.get(p.owners[i]);
        const std::ptrdiff_t via = e ? alias_index(e->loc.page) : -1;
        if (!e || !(e->state.load() & state::kLive) || e->loc.kind != ObjectKind::slab ||
            (e->loc.page != p.slot && via < 0) || e->loc.index != i)
          bad = fail("slot " + std::to_string(i) + " of page " + std::to_string(p.slot) + " names the wrong object");
        else if (via >= 0)
          ++through[std::size_t(via)];
      }
    }
    for (const auto& d : c.deferred)
      if (d.loc.kind == ObjectKind::slab && c.pool.slot(d.loc.page).owner == p.id && d.loc.page != p.slot) {
        const std::ptrdiff_t via = alias_index(d.loc.page);
        if (via < 0)
          bad = fail("a deferred free names a slot its page does not map");
        else
          ++through[std::size_t(via)];
      }
    for (std::size_t k = 0; k < p.aliases.size(); ++k)
      if (p.aliases[k].users != through[k])
        bad = fail("alias " + std::to_string(p.aliases[k].slot) + " user count is wrong");
    if (p.capacity % 64 && (p.bitmap.back() >> (p.capacity % 64)) != (~0ull >> (p.capacity % 64)))
      bad = fail("bitmap padding bits were cleared");
    if (bits != p.used) bad = fail("slab page used count disagrees with its bitmap");
    if (!p.evacuating && !p.hook.is_linked()) bad = fail("slab page " + std::to_string(p.id) + " is in no bucket");
    if (p.used == p.capacity && p.bucket != detail::kBuckets - 1 && p.hook.is_linked())
      bad = fail("a full page sits in a bucket with room");
  });
  VALET_TRY(bad);
  if (slab_pages != c.slabs.live_pages()) return fail("slab page count is wrong");
  std::size_t deferred_slab = 0, deferred_footprint = 0;
  for (const auto& d : c.deferred) {
    deferred_footprint += d.footprint;
    if (d.loc.kind == ObjectKind::slab) ++deferred_slab;
  }
  if (unowned_taken != deferred_slab + c.in_transit + blocked)
    return fail("taken slots without an owner (" + std::to_string(unowned_taken) + ") are not all deferred or in transit");

  // Every live object: its place names it back, its address is where it lives; sums are exact.
  std::size_t live = 0, footprint = 0, objects = 0;
  for (std::uint32_t i = 1; i < c.handles.high_water(); ++i) {
    const HandleEntry* e = c.handles.get(i);
    const std::uint64_t s = e->state.load(std::memory_order_acquire);
    if (!(s & state::kLive)) continue;
    ++objects;
    live += e->size;
    if (e->loc.kind == ObjectKind::slab) {
      const auto& slot = c.pool.slot(e->loc.page);
      if (slot.kind != SlotKind::slab) return fail("object " + std::to_string(i) + " points at a non-slab page");
      const auto* p = c.slabs.page(slot.owner);
      if (!p || p->owners[e->loc.index] != i) return fail("object " + std::to_string(i) + " is not its slot's owner");
      if (e->size > detail::class_size(p->cls)) return fail("object larger than its size class");
    } else {
      if (std::uint64_t(e->size) > std::uint64_t(e->loc.pages) * detail::kPageSize)
        return fail("large object larger than its pages");
      for (std::uint32_t k = 0; k < e->loc.pages; ++k) {
        const auto& slot = c.pool.slot(e->loc.page + k);
        if (slot.kind != SlotKind::large || slot.owner != i)
          return fail("page " + std::to_string(k) + " of large object " + std::to_string(i) + " is not its own");
      }
    }
    footprint += c.footprint_of(e->loc);
    if (!(s & state::kMoving) && e->address.load() != c.address_of(e->loc))
      return fail("object " + std::to_string(i) + " has a stale address");
  }
  // Every shared tail is a large object's last slot with its slab page; open tails are unshared.
  for (const auto& [tail, id] : c.shared_tails) {
    const auto* p = c.slabs.page(id);
    if (!p || !p->live || p->tail_slot != tail) return fail("shared tail " + std::to_string(tail) + " names no slab page on it");
  }
  for (const auto& [tail, used] : c.open_tails) {
    const auto& slot = c.pool.slot(tail);
    if (slot.kind != SlotKind::large || c.shared_tails.contains(tail) || c.pool.mappings_of(tail) != 1)
      return fail("open tail " + std::to_string(tail) + " is not a large object's own last page");
    const HandleEntry* e = slot.owner ? c.handles.get(slot.owner) : nullptr;
    if (e && (e->state.load() & state::kLive) &&
        (e->loc.page + e->loc.pages - 1 != tail || e->size - std::uint64_t(e->loc.pages - 1) * detail::kPageSize != used))
      return fail("open tail " + std::to_string(tail) + " disagrees with its object");
  }
  // Large slots belong to a live object or to a deferred free; only a last page is shared.
  for (const auto& [tail, id] : c.shared_tails)
    if (c.pool.slot(tail).kind != SlotKind::large) return fail("shared tail " + std::to_string(tail) + " is not a large page");
  for (std::uint32_t k = 0; k < c.pool.slot_count(); ++k) {
    const auto& slot = c.pool.slot(k);
    if (slot.kind != SlotKind::large || slot.owner == 0) continue;
    const HandleEntry* e = c.handles.get(slot.owner);
    if (!e || !(e->state.load() & state::kLive) || e->loc.kind != ObjectKind::large || k < e->loc.page ||
        k >= e->loc.page + e->loc.pages)
      return fail("large page " + std::to_string(k) + " names an object that does not hold it");
  }
  if (objects != c.live_objects) return fail("live object count is wrong");
  if (live != c.live_bytes) return fail("live byte count is wrong");
  if (footprint + deferred_footprint != c.footprint_bytes) return fail("footprint count is wrong");
  const std::size_t mapped = c.pool.created_pages() * detail::kPageSize;
  if (c.live_bytes > mapped) return fail("more live bytes than mapped bytes");
  if (mapped > c.capacity_pages * detail::kPageSize) return fail("more mapped bytes than the capacity");
  return {};
}

nlohmann::json to_json(const CompactionRecord& r) {
  return {{"trigger", trigger_name(r.trigger)},     {"objects_moved", r.objects_moved},
          {"bytes_moved", r.bytes_moved},           {"pages_freed", r.pages_freed},
          {"pages_meshed", r.pages_meshed},         {"bytes_meshed", r.bytes_meshed},
          {"objects_skipped", r.objects_skipped},
          {"duration_ns", r.duration_ns},           {"longest_pin_wait_ns", r.longest_pin_wait_ns}};
}

nlohmann::json to_json(const HeapStats& s) {
  nlohmann::json cycles = nlohmann::json::array();
  for (const auto& r : s.recent_cycles) cycles.push_back(to_json(r));
  return {
      {"backend", s.backend},
      {"capacity_bytes", s.capacity_bytes},
      {"live_bytes", s.live_bytes},
      {"live_objects", s.live_objects},
      {"footprint_bytes", s.footprint_bytes},
      {"mapped_bytes", s.mapped_bytes},
      {"reserved_bytes", s.reserved_bytes},
      {"reserve_bytes", s.reserve_bytes},
      {"fragmentation", s.fragmentation},
      {"largest_allocatable_bytes", s.largest_allocatable_bytes},
      {"pages",
       {{"slab", s.pages.slab}, {"large", s.pages.large}, {"reserve", s.pages.reserve}, {"meshed", s.pages.meshed},
        {"idle", s.pages.idle}, {"shared_tails", s.pages.shared_tails}, {"releasing", s.pages.releasing}}},
      {"occupancy_histogram", s.occupancy_histogram},
      {"ops",
       {{"allocate", s.ops.allocate}, {"free", s.ops.free}, {"resize", s.ops.resize}, {"pin", s.ops.pin},
        {"failed_allocations", s.ops.failed_allocations}}},
      {"driver_calls",
       {{"create", s.driver_calls.create}, {"release", s.driver_calls.release}, {"map", s.driver_calls.map},
        {"unmap", s.driver_calls.unmap}, {"set_access", s.driver_calls.set_access}, {"copy", s.driver_calls.copy}}},
      {"compaction",
       {{"cycles", s.compaction.cycles}, {"emergency_cycles", s.compaction.emergency_cycles},
        {"bytes_moved", s.compaction.bytes_moved}, {"objects_moved", s.compaction.objects_moved},
        {"pages_meshed", s.compaction.pages_meshed}, {"bytes_meshed", s.compaction.bytes_meshed},
        {"pages_freed", s.compaction.pages_freed}}},
      {"recent_cycles", cycles},
  };
}

}  // namespace valet
