// Heap::validate: every component checks its own invariants (page pool, slabs, handle table,
// stream releases, device table, keeper), then the checks that span components: slab pages against the slot table, the
// handle table and the tails; every live object against its place; the counters.
#include <array>
#include <string>

#include "heap_core.h"
#include "size_classes.h"

namespace valet {

using detail::HandleEntry;
using detail::HeapCore;
using detail::ObjectKind;
using detail::SlabPage;
using detail::SlotKind;
namespace state = detail::state;

namespace {

Error fail(const std::string& what) { return make_error(Errc::internal, "validate: " + what); }

bool live(const HandleEntry* e) { return e && state::live(e->state.load(std::memory_order_acquire)); }

// What the slab walk counts for the checks that follow it.
struct SlabTally {
  std::size_t unowned_taken = 0, blocked = 0;
};

// The objects the thread caches hold (thread_caches.h), and the counters' deltas they hold.
struct CacheTally {
  std::vector<bool> held;  // by handle index
  std::size_t footprint = 0;
  // Misses made without the heap lock (unlocked_misses.cpp): the objects in the caches' inboxes
  // (by handle index), the footprint the caches counted for them, and the pages credited.
  std::vector<bool> inbox;
  std::size_t inbox_footprint = 0, credit = 0;
  std::int64_t live_bytes = 0, live_objects = 0;
  std::uint64_t allocs = 0, frees = 0;
};

// A cache's entry `index` (`name` in messages): in range, listed by no other cache, and a settled
// free entry (no pin, no claim, not live, nothing fixed or pending on it); it is held from here.
Result<const HandleEntry*> hold_cached_entry(const HeapCore& c, CacheTally& t, std::uint32_t index,
                                             const std::string& name) {
  if (index == 0 || index >= t.held.size() || t.held[index]) return fail(name + " is out of range or cached twice");
  t.held[index] = true;
  const HandleEntry* e = c.handles.get(index);
  const std::uint64_t st = e->state.load(std::memory_order_acquire);
  if ((st & 0xffffffffu) != 0 || e->fixed || !e->pending_unpins.empty()) return fail(name + " is not a settled free entry");
  return e;
}

// A cached object still owns its slab slot, at the address the cache will hand out.
Status check_cached_slot(const HeapCore& c, CacheTally& t, std::uint32_t cls, const detail::CachedSlot& cs) {
  const std::string name = "cached object " + std::to_string(cs.index);
  auto held = hold_cached_entry(c, t, cs.index, name);
  if (!held.ok()) return held.error();
  const HandleEntry* e = *held;
  const auto& slot = c.pool.slot(cs.loc.page);
  const SlabPage* p = slot.kind == SlotKind::slab ? c.slabs.page(slot.owner) : nullptr;
  if (cs.loc.kind != ObjectKind::slab || !p || e->loc.kind != ObjectKind::slab || e->loc.page != cs.loc.page ||
      e->loc.index != cs.loc.index || cs.loc.index >= p->capacity || !p->test(cs.loc.index) ||
      p->owners[cs.loc.index] != cs.index)
    return fail(name + " does not own the slab slot it names");
  if (detail::class_size(cls) > detail::class_size(p->cls) || cs.address != c.address_of(cs.loc))
    return fail(name + " is in the wrong class or has a stale address");
  t.footprint += c.footprint_of(cs.loc);
  return {};
}

// A cached run owns every page of its run, with the bytes it was freed with, at its address.
Status check_cached_run(const HeapCore& c, CacheTally& t, const detail::CachedRun& r) {
  const std::string name = "cached run " + std::to_string(r.index);
  auto held = hold_cached_entry(c, t, r.index, name);
  if (!held.ok()) return held.error();
  const HandleEntry* e = *held;
  if (e->size() != r.bytes) return fail(name + " is not a settled free entry of its bytes");
  if (r.loc.kind != ObjectKind::large || e->loc.kind != ObjectKind::large || e->loc.page != r.loc.page ||
      e->loc.pages != r.loc.pages || r.loc.page + r.loc.pages > c.pool.slot_count() ||
      r.bytes > std::uint64_t(r.loc.pages) * detail::kPageSize)
    return fail(name + " does not name its object's run");
  for (std::uint32_t k = 0; k < r.loc.pages; ++k) {
    const auto& slot = c.pool.slot(r.loc.page + k);
    if (slot.kind != SlotKind::large || slot.owner != r.index)
      return fail(name + " does not own page " + std::to_string(k) + " of its run");
  }
  if (r.footprint != c.footprint_of(r.loc) || r.address != c.address_of(r.loc))
    return fail(name + " has a wrong footprint or a stale address");
  t.footprint += r.footprint;
  return {};
}

// The objects and runs the caches hold; a cache's byte counts are its bins' class sizes and its
// runs' footprints, its runs within its allowance, and the allowances add up within the total.
Status check_caches(const HeapCore& c, CacheTally& t) {
  t.held.assign(c.handles.high_water(), false);
  t.inbox.assign(c.handles.high_water(), false);
  Status bad;
  std::size_t granted = 0;
  c.caches.for_each([&](const detail::ThreadCache& tc) {
    if (!bad.ok()) return;
    t.live_bytes += tc.live_bytes;
    t.live_objects += tc.live_objects;
    t.allocs += tc.allocs;
    t.frees += tc.frees;
    std::size_t bytes = 0, run_bytes = 0;
    for (std::uint32_t cls = 0; cls < detail::kClassCount && bad.ok(); ++cls)
      for (const detail::CachedSlot& cs : tc.bins[cls]) {
        bytes += detail::class_size(cls);
        if (bad = check_cached_slot(c, t, cls, cs); !bad.ok()) return;
      }
    if (bytes != tc.bytes) bad = fail("a thread cache's byte count is wrong");
    for (const detail::CachedRun& r : tc.runs) {
      if (!bad.ok()) return;
      run_bytes += r.footprint;
      bad = check_cached_run(c, t, r);
    }
    if (bad.ok() && run_bytes != tc.run_bytes) bad = fail("a thread cache's run byte count is wrong");
    if (bad.ok() && tc.run_bytes > tc.run_allowance) bad = fail("a thread cache holds runs beyond its allowance");
    granted += tc.run_allowance;
    for (const std::uint32_t i : tc.spare_handles) {
      if (!bad.ok()) return;
      if (auto held = hold_cached_entry(c, t, i, "spare handle " + std::to_string(i)); !held.ok()) bad = held.error();
    }
    for (const std::uint32_t i : tc.inbox) {
      if (!bad.ok()) return;
      if (i == 0 || i >= t.inbox.size() || t.inbox[i] || t.held[i])
        bad = fail("inbox object " + std::to_string(i) + " is out of range or listed twice");
      else
        t.inbox[i] = true;
    }
    t.inbox_footprint += tc.footprint;
    t.credit += tc.credit_pages;
  });
  if (bad.ok() && (granted != c.caches.runs_granted() || granted > c.config.thread_cache_runs_total_bytes))
    bad = fail("the caches' run allowances do not add up within the total");
  return bad;
}

// A page on a shared tail maps the physical page of the large object's last slot, and its
// blocked slots cover the bytes the object uses there.
Status check_tail_link(const HeapCore& c, const SlabPage& p) {
  const auto& slot = c.pool.slot(p.slot);
  if (!p.on_tail()) return {};
  const auto& ts = c.pool.slot(p.tail_slot);
  const auto link = c.tails.shared_page(p.tail_slot);
  if (!link || *link != p.id || ts.kind != SlotKind::large || ts.phys != slot.phys)
    return fail("slab page " + std::to_string(p.id) + " is not linked to the tail it shares");
  const HandleEntry* e = ts.owner ? c.handles.get(ts.owner) : nullptr;
  if (live(e) && e->loc.kind == ObjectKind::large) {
    const std::uint64_t used = e->size() - std::uint64_t(e->loc.pages - 1) * detail::kPageSize;
    if (std::uint64_t(p.blocked) * detail::class_size(p.cls) < used)
      return fail("slab page " + std::to_string(p.id) + " does not block all of the tail's bytes");
  }
  return {};
}

std::ptrdiff_t alias_index(const SlabPage& p, std::uint32_t s) {
  for (std::size_t k = 0; k < p.aliases.size(); ++k)
    if (p.aliases[k].slot == s) return std::ptrdiff_t(k);
  return -1;
}

// Aliases map the page's physical page and name the page as owner; every taken slot names the
// object that lives there (through the page's slot or an alias), and each alias's user count is
// exactly the objects and deferred frees addressed through it.
Status check_slots_and_aliases(const HeapCore& c, const SlabPage& p, const CacheTally& cached, SlabTally& tally) {
  const auto& slot = c.pool.slot(p.slot);
  for (const auto& a : p.aliases) {
    const auto& as = c.pool.slot(a.slot);
    if (a.slot == p.slot || as.kind != SlotKind::slab || as.owner != p.id || as.phys != slot.phys)
      return fail("alias " + std::to_string(a.slot) + " of slab page " + std::to_string(p.id) + " does not map its page");
  }
  std::vector<std::uint32_t> through(p.aliases.size(), 0);
  for (std::uint32_t i = 0; i < p.capacity; ++i) {
    if (!p.test(i)) continue;
    if (p.owners[i] == detail::kNoOwner) {
      ++tally.unowned_taken;
      continue;
    }
    const HandleEntry* e = c.handles.get(p.owners[i]);
    const std::ptrdiff_t via = e ? alias_index(p, e->loc.page) : -1;
    const bool held = p.owners[i] < cached.held.size() && cached.held[p.owners[i]];
    if (!(live(e) || held) || e->loc.kind != ObjectKind::slab || (e->loc.page != p.slot && via < 0) || e->loc.index != i)
      return fail("slot " + std::to_string(i) + " of page " + std::to_string(p.slot) + " names the wrong object");
    if (via >= 0) ++through[std::size_t(via)];
  }
  Status held_ok;
  c.releases.for_each_held([&](const detail::Location& loc, std::size_t) {
    if (loc.kind == ObjectKind::slab && c.pool.slot(loc.page).owner == p.id && loc.page != p.slot) {
      const std::ptrdiff_t via = alias_index(p, loc.page);
      if (via < 0) {
        if (held_ok.ok()) held_ok = fail("a deferred or cached free names a slot its page does not map");
        return;
      }
      ++through[std::size_t(via)];
    }
  });
  VALET_TRY(held_ok);
  std::uint32_t fixed = 0;
  for (std::uint32_t i = 0; i < p.capacity; ++i)
    if (p.test(i) && p.owners[i] != detail::kNoOwner) fixed += c.handles.get(p.owners[i])->fixed;
  if (fixed != p.fixed) return fail("slab page " + std::to_string(p.id) + " fixed object count is wrong");
  for (std::size_t k = 0; k < p.aliases.size(); ++k)
    if (p.aliases[k].users != through[k]) return fail("alias " + std::to_string(p.aliases[k].slot) + " user count is wrong");
  return {};
}

// Slab pages against the slot table, the tails and the handle table.
Status check_slab_pages(const HeapCore& c, const CacheTally& cached, SlabTally& tally) {
  Status bad;
  c.slabs.for_each_page([&](const SlabPage& p) {
    if (!bad.ok()) return;
    const auto& slot = c.pool.slot(p.slot);
    if (slot.kind != SlotKind::slab || slot.owner != p.id) {
      bad = fail("slab page " + std::to_string(p.id) + " and the slot table disagree");
      return;
    }
    tally.blocked += p.on_tail() ? p.blocked : 0;
    bad = check_tail_link(c, p);
    if (bad.ok()) bad = check_slots_and_aliases(c, p, cached, tally);
  });
  VALET_TRY(bad);
  std::size_t deferred_slab = 0;
  c.releases.for_each_held([&](const detail::Location& loc, std::size_t) { deferred_slab += loc.kind == ObjectKind::slab; });
  if (tally.unowned_taken != deferred_slab + c.in_transit + tally.blocked)
    return fail("taken slots without an owner (" + std::to_string(tally.unowned_taken) +
                ") are not all deferred or in transit");
  return {};
}

// Every live object: its place names it back, its address is where it lives; sums are exact.
Status check_objects(const HeapCore& c, const CacheTally& cached) {
  std::size_t region_objects = 0;  // live objects placed in the copying region
  std::size_t live_bytes = 0, footprint = 0, objects = 0, fixed = 0, fixed_bytes = 0, unplaced_pages = 0, inbox_pages = 0;
  std::array<std::uint32_t, detail::kClassCount> unplaced_small{};
  for (std::uint32_t i = 1; i < c.handles.high_water(); ++i) {
    const HandleEntry* e = c.handles.get(i);
    const std::uint64_t s = e->state.load(std::memory_order_acquire);
    if (!state::live(s)) continue;
    ++objects;
    live_bytes += e->size();
    if (e->fixed) {
      ++fixed;
      fixed_bytes += e->size();
    }
    if (i < cached.inbox.size() && cached.inbox[i]) {
      // Made without the heap lock, in its cache's inbox: claimed, unplaced, its pages taken
      // from the cache's credit; the mapper's queue has not seen it yet.
      if (!(s & state::kMoving) || c.misses.is_pending(i) || e->loc.kind != ObjectKind::large ||
          e->loc.page != HeapCore::kUnplaced || e->address.load() != 0 || e->fixed)
        return fail("inbox object " + std::to_string(i) + " is not a claimed unplaced large object");
      inbox_pages += e->loc.pages;
      footprint += c.footprint_of(e->loc);
      continue;
    }
    if (e->loc.kind == ObjectKind::slab && e->loc.page == HeapCore::kUnplaced) {
      // A small object the mapper has yet to place (heap.cpp, place): one page promised, its
      // class in the location's index.
      if (!c.misses.is_pending(i) || !(s & state::kMoving))
        return fail("unplaced small object " + std::to_string(i) + " is not a claimed pending one");
      if (e->address.load() != 0) return fail("unplaced object " + std::to_string(i) + " has an address");
      if (e->loc.pages > 1 || e->loc.index >= detail::kClassCount || e->size() > detail::class_size(e->loc.index))
        return fail("unplaced small object " + std::to_string(i) + " has no class that holds it");
      unplaced_pages += e->loc.pages;
      ++unplaced_small[e->loc.index];
    } else if (e->loc.kind == ObjectKind::slab) {
      const auto& slot = c.pool.slot(e->loc.page);
      if (slot.kind != SlotKind::slab) return fail("object " + std::to_string(i) + " points at a non-slab page");
      const auto* p = c.slabs.page(slot.owner);
      if (!p || p->owners[e->loc.index] != i) return fail("object " + std::to_string(i) + " is not its slot's owner");
      if (e->size() > detail::class_size(p->cls)) return fail("object larger than its size class");
    } else if (e->loc.kind == ObjectKind::region) {
      // The copying region: its book has the object where the location says, as this handle's.
      const auto placed = c.region_on() ? c.region.book->object_at(HeapCore::region_offset(e->loc)) : std::nullopt;
      if (!placed || placed->second != i || placed->first < e->size())
        return fail("region object " + std::to_string(i) + " is not its book's object at its offset");
      ++region_objects;
    } else if (c.misses.is_pending(i)) {
      // Background misses: its run is a step in flight (provisioning slots, unowned ones taken
      // from the reserve, its own once a step booked them, a retargeted alias): no other
      // object's.
      if (!(s & state::kMoving)) return fail("pending object " + std::to_string(i) + " is not claimed");
      // Not placed yet (Config::mapper_places_misses): no slot, its pages promised.
      if (e->loc.page == HeapCore::kUnplaced) {
        if (e->address.load() != 0) return fail("unplaced object " + std::to_string(i) + " has an address");
        unplaced_pages += e->loc.pages;
      } else {
        for (std::uint32_t k = 0; k < e->loc.pages; ++k) {
          const std::uint32_t owner = c.pool.slot(e->loc.page + k).owner;
          if (owner != 0 && owner != i)
            return fail("page " + std::to_string(k) + " of pending object " + std::to_string(i) + " is another's");
        }
      }
    } else {
      if (std::uint64_t(e->size()) > std::uint64_t(e->loc.pages) * detail::kPageSize)
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
  std::size_t deferred_footprint = 0, region_deferred = 0;
  c.releases.for_each_held([&](const detail::Location& loc, std::size_t f) {
    deferred_footprint += f;
    region_deferred += loc.kind == ObjectKind::region;
  });
  // Every object in the region's book is a live object's or a deferred free's.
  if (c.region_on() && c.region.book->object_count() != region_objects + region_deferred)
    return fail("the region's book holds " + std::to_string(c.region.book->object_count()) + " objects for " +
                std::to_string(region_objects) + " live ones and " + std::to_string(region_deferred) + " deferred frees");
  // The heap's counters with the caches' deltas not yet folded in.
  if (std::int64_t(objects) != std::int64_t(c.live_objects) + cached.live_objects) return fail("live object count is wrong");
  if (fixed != c.fixed_objects || fixed_bytes != c.fixed_bytes) return fail("fixed object counts are wrong");
  if (std::int64_t(live_bytes) != std::int64_t(c.live_bytes) + cached.live_bytes) return fail("live byte count is wrong");
  if (footprint + deferred_footprint + cached.footprint != c.footprint_bytes + cached.inbox_footprint)
    return fail("footprint count is wrong");
  if (c.pool.credited_pages() != cached.credit + inbox_pages)
    return fail("credited pages (" + std::to_string(c.pool.credited_pages()) + ") are not the caches' credit (" +
                std::to_string(cached.credit) + ") and their inbox objects' (" + std::to_string(inbox_pages) + ")");
  // A small object freed while the mapper maps its slab page's alias keeps its promise until
  // then; the large objects pending bound the last pages promised (below).
  std::size_t pending_large = 0;
  c.misses.for_each_pending([&](std::uint32_t i, bool freed) {
    const HandleEntry* e = c.handles.get(i);
    if (e->loc.kind == ObjectKind::large) ++pending_large;
    if (freed && e->loc.page == HeapCore::kUnplaced) {
      unplaced_pages += e->loc.pages;
      if (e->loc.kind == ObjectKind::slab) ++unplaced_small[e->loc.index];
    }
  });
  if (unplaced_small != c.unplaced_small) return fail("unplaced small objects by class are miscounted");
  // And a page for the last slot of each body or alias in flight (PendingMiss::last_promised).
  if (c.last_page_promises > pending_large)
    return fail("more last pages promised than large objects pending");
  if (unplaced_pages + c.last_page_promises != c.pool.promised_pages())
    return fail("promised pages (" + std::to_string(c.pool.promised_pages()) + ") are not the unplaced objects' (" +
                std::to_string(unplaced_pages) + ") and the bodies' last pages (" +
                std::to_string(c.last_page_promises) + ")");
  return {};
}

// Large slots belong to a live object, to a cached run or to a deferred free (owner 0 while in
// transit).
Status check_large_slots(const HeapCore& c, const CacheTally& cached) {
  for (std::uint32_t k = 0; k < c.pool.slot_count(); ++k) {
    const auto& slot = c.pool.slot(k);
    if (slot.kind != SlotKind::large || slot.owner == 0) continue;
    const HandleEntry* e = c.handles.get(slot.owner);
    // An object freed while pending holds its run until the mapper releases it.
    const bool held = slot.owner < cached.held.size() && cached.held[slot.owner];
    const bool holds = live(e) || c.misses.is_freed(slot.owner) || held;
    if (!holds || e->loc.kind != ObjectKind::large || k < e->loc.page || k >= e->loc.page + e->loc.pages)
      return fail("large page " + std::to_string(k) + " names an object that does not hold it");
  }
  return {};
}

}  // namespace

Status Heap::validate() const {
  const auto& c = *core_;
  std::lock_guard lock(c.mu);
  if (c.shut) return {};
  // A still picture: no thread cache's fast path runs meanwhile.
  detail::FastPathGate gate(c.caches);
  // Each component's own invariants first.
  VALET_TRY(c.pool.validate());
  VALET_TRY(c.validate_region());
  VALET_TRY(c.slabs.validate());
  CacheTally cached;
  VALET_TRY(check_caches(c, cached));
  // Objects freed while pending: their entries and footprint are the miss mapper's until their
  // step ends (heap_misses.cpp).
  c.misses.for_each_pending([&](std::uint32_t i, bool freed) {
    if (!freed || i >= cached.held.size()) return;
    cached.held[i] = true;
    cached.footprint += c.footprint_of(c.handles.get(i)->loc);
  });
  VALET_TRY(c.handles.validate(cached.held));
  VALET_TRY(c.releases.validate());
  VALET_TRY(c.table.validate());
  VALET_TRY(c.keeper.validate());
  // Then what spans components.
  SlabTally tally;
  VALET_TRY(check_slab_pages(c, cached, tally));
  VALET_TRY(check_objects(c, cached));
  VALET_TRY(c.tails.validate(c.pool, c.slabs, c.handles));
  VALET_TRY(check_large_slots(c, cached));
  // Objects not placed yet are live on promised pages.
  const std::size_t mapped =
      (c.pool.created_pages() + c.pool.promised_pages() + c.pool.credited_pages()) * detail::kPageSize;
  if (std::int64_t(c.live_bytes) + cached.live_bytes > std::int64_t(mapped))
    return fail("more live bytes than mapped, promised and credited bytes");
  return {};
}

}  // namespace valet
