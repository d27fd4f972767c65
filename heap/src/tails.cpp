// Shared tails: a large object of k pages uses bytes [0, r) of its last page; the rest of that
// physical page would be mapped and wasted for the object's whole life. Instead a new slab page
// is built on it: the page is mapped at a second arena slot (the slab page's own slot) and the
// slab's slots overlapping [0, r) are blocked. No byte is copied and no address changes; the
// physical page is counted once (docs/meshing.md, "Shared tails").
//
// The link lives in two places: TailLinks (tail_links.h) lists the open tails (large objects
// whose last page could host a slab page) and the shared ones (whose last page one does), and the
// slab page's `tail_slot` names the large object's last slot. Either side may go first:
//   - the slab page empties: its own slot is unmapped (the large object keeps the page) and the
//     tail is open again;
//   - the large object is freed: its last slot is unmapped (the slab page keeps the page) and
//     the blocked slots are freed;
//   - the large object is resized: the slab page's objects move to a page of their own first
//     (unshare_tail), or, if they cannot, the resize copies the object to unshared pages.
#include <algorithm>

#include "heap_core.h"
#include "size_classes.h"
#include "valet/evacuation_plan.h"

namespace valet::detail {

namespace {

// A last page with less room than this is not worth two driver calls and a slab page.
constexpr std::uint32_t kMinTailRoom = std::uint32_t{256} << 10;

std::uint32_t last_slot(const Location& loc) { return loc.page + loc.pages - 1; }

}  // namespace

void HeapCore::open_tail(const Location& loc, std::size_t bytes) {
  if (loc.kind != ObjectKind::large || !config.share_tails) return;
  if (pool.in_chunk(last_slot(loc))) return;  // a chunk's page is never mapped alone elsewhere
  const std::uint64_t used = used_in_last_page(bytes, loc.pages);
  if (kPageSize - used >= kMinTailRoom) tails.open(last_slot(loc), std::uint32_t(used));
}

void HeapCore::reopen_tail(const Location& loc, std::size_t bytes) {
  if (tails.shared_page(last_slot(loc))) return;  // its slab page's blocked slots stay as they are
  tails.close(last_slot(loc));
  open_tail(loc, bytes);
}

bool HeapCore::tail_fits(const Location& loc, std::size_t bytes) const {
  const auto shared = tails.shared_page(last_slot(loc));
  if (!shared) return true;
  // A slab page shares the last page: its blocked low slots must cover the new object's bytes
  // there (they covered the old object's).
  const SlabPage* p = slabs.page(*shared);
  return used_in_last_page(bytes, loc.pages) <= std::uint64_t(p->blocked) * class_size(p->cls);
}

std::optional<std::uint32_t> HeapCore::prepared_tail_for(std::uint32_t cls) const {
  for (const auto& [t, slot] : prepared_aliases)
    if (tail_can_host(cls, t)) return t;
  return std::nullopt;
}

SlabPage* HeapCore::slab_on_tail(std::uint32_t cls) {
  // A prepared alias first (the keeper's standbys, or one a cycle's planners did not take while
  // the cycle copies without the lock: it would be discarded at the cycle's end, and a planner
  // that finds its tail's alias gone passes the tail over): no call on this thread.
  std::optional<std::uint32_t> tail = prepared_tail_for(cls);
  if (!tail) tail = tails.roomiest();
  return tail ? slab_on_tail_at(cls, *tail) : nullptr;
}

namespace {
// The slots of class `cls` that the object's `used` bytes on its last page block.
std::uint32_t blocked_slots(std::uint32_t cls, std::uint32_t used) {
  const std::uint32_t size = std::uint32_t(class_size(cls));
  return (used + size - 1) / size;
}
}  // namespace

bool HeapCore::tail_can_host(std::uint32_t cls, std::uint32_t tail) const {
  const auto used = tails.open_bytes(tail);
  return used && !pool.in_chunk(tail) && blocked_slots(cls, *used) < class_slots(cls);
}

SlabPage* HeapCore::slab_on_tail_at(std::uint32_t cls, std::uint32_t tail, bool may_map) {
  // A chunk's page is refused here as share_page would refuse it (map_alias, before any call).
  if (!tail_can_host(cls, tail)) return nullptr;
  const std::uint32_t blocked = blocked_slots(cls, *tails.open_bytes(tail));
  std::optional<std::uint32_t> slot;
  if (auto it = prepared_aliases.find(tail); it != prepared_aliases.end()) {
    const std::uint32_t alias = it->second;
    prepared_aliases.erase(it);
    want_refill();  // the keeper prepares another standby (after the cycle, for a cycle's alias)
    if (pool.use_tail_alias(alias, tail, SlotKind::slab, 0))
      slot = alias;
    else {
      pool.discard_tail_alias(alias);  // the tail's page changed since it was prepared
      after_release();                 // the keeper unmaps it
    }
  }
  if (!slot && may_map) {
    auto shared = pool.share_page(tail, SlotKind::slab, 0);
    if (shared.ok()) slot = *shared;
  }
  if (!slot) return nullptr;  // the caller takes a page of its own
  SlabPage* page = slabs.create(cls, *slot);
  pool.slot(*slot).owner = page->id;
  slabs.block_tail(page, tail, blocked);
  tails.share(tail, page->id);
  return page;
}

SlabPage* HeapCore::tail_host(std::uint64_t used, const std::vector<std::uint32_t>& cached) const {
  // The hosts with room for `used` bytes, the tightest first (Slabs::for_each_host): the first
  // that fits, unless one further up is `cached`.
  SlabPage* best = nullptr;
  slabs.for_each_host(used, [&](SlabPage& p) {
    const std::uint64_t size = class_size(p.cls);
    if ((used + size - 1) / size >= p.capacity) return true;  // the tail would block every slot
    if (!best) best = &p;
    if (cached.empty()) return false;
    if (std::find(cached.begin(), cached.end(), pool.slot(p.slot).phys) == cached.end()) return true;
    best = &p;
    return false;
  });
  return best;
}

SlabPage* HeapCore::tail_host_for(std::size_t bytes, std::uint32_t pages, bool prefer_dropped) const {
  if (!config.share_tails) return nullptr;
  const std::uint64_t used = used_in_last_page(bytes, pages);
  if (kPageSize - used < kMinTailRoom) return nullptr;
  return tail_host(used, prefer_dropped ? pool.dropped_run_pages(pages) : std::vector<std::uint32_t>{});
}

std::optional<Location> HeapCore::place_on_slab_page(std::unique_lock<HeapMutex>& lock, std::size_t bytes,
                                                     std::uint32_t pages, PendingMiss* miss, bool calls) {
  // The page whose free low span fits the bytes most tightly, leaving at least one slot free
  // (an empty page's span is all its slots). But first a page that a freed object's run still
  // ends on (its alias not yet unmapped by the keeper, the body's pages in the reserve before
  // it): that run is taken as it is, with no driver call.
  SlabPage* best = tail_host_for(bytes, pages, /*prefer_dropped=*/true);
  if (!best) return std::nullopt;
  const std::uint64_t used = used_in_last_page(bytes, pages);
  std::optional<std::uint32_t> run = pool.take_unchanged_run_onto(pages, kNoOwner, best->slot);
  if (!run && !calls) return std::nullopt;
  bool had_objects = false;  // the host page's objects, when its alias was mapped without the lock
  if (!run) {
    // Else such a run whose last slot maps another page: remapped (three calls). Else a body
    // mapped without the lock; meanwhile the slab page may have changed (filled, gone, put on a
    // tail): look again.
    // Background misses: the calls are the mapper's (heap_misses.cpp), the retarget's alias at
    // once, or the body first and the alias after it. The slab page may be full or gone when
    // the body is booked, or the alias fail (a failed alias begins the whole run again, its last
    // slot on a page of its own): a page is promised for the last slot until then, so that the
    // object is not lost for want of one. Where a miss is served (the mapper, a pin) the promise
    // always holds (the object's promise of all its pages was given back just before); where it
    // cannot (the allocating thread places near the capacity), this thread makes the calls, below.
    // Promised before the plan is begun: a plan begun and then left would hold its slots.
    const bool promised = miss && pool.promise(1);
    if (miss && !promised && t_serving_miss) {
      VALET_ASSERT(false);  // a miss's placement (the mapper's, a pin's) never lets the heap lock go
      return std::nullopt;
    }
    std::optional<PagePool::AttachPlan> plan = pool.begin_retarget(pages, best->slot);
    if (promised) {
      if (plan) {
        miss->step = PendingMiss::Step::alias;
        miss->plan = *plan;
        miss->host = best;
        miss->host_had_objects = !best->holds_no_object();
        slabs.detach(best);
      } else {
        auto body = pool.begin_miss(pages, /*tail=*/true);
        if (!body.ok()) {
          pool.unpromise(1);
          return std::nullopt;
        }
        miss->step = PendingMiss::Step::body;
        miss->batch = std::move(*body);
      }
      miss->last_promised = true;
      ++last_page_promises;
      want_refill();
      return Location{ObjectKind::large, plan ? plan->start : miss->batch.start, 0, pages};
    }
    if (!plan) {
      auto body = place_run(lock, pages, true);
      if (!body.ok()) return std::nullopt;
      best = tail_host(used, {});
      if (!best) {
        pool.abandon_tail(*body, pages);
        return std::nullopt;
      }
      plan = pool.begin_attach(*body, pages, best->slot);
    }
    // The alias's calls without the lock too. The slab page is detached meanwhile (as a mesh's
    // pages are): no allocation lands on it, and no compaction or free moves, meshes or retires
    // it, so its physical page stays where the plan found it; frees of its objects go on.
    had_objects = !best->holds_no_object();
    slabs.detach(best);
    lock.unlock();
    pool.attach_calls(*plan);
    lock.lock();
    slabs.attach(best);
    auto attached = pool.finish_attach(*plan, kNoOwner);
    if (!attached.ok()) {  // the body went to the reserve
      retire_if_spare(best);
      return std::nullopt;
    }
    run = *attached;
  }
  want_refill();
  const Location loc{ObjectKind::large, *run, 0, pages};
  share_tail(loc, bytes, best);
  // Its last objects were freed meanwhile: it retires as their free would have retired it.
  if (had_objects) retire_if_spare(best);
  return loc;
}

void HeapCore::share_tail(const Location& loc, std::size_t bytes, SlabPage* host) {
  const std::uint32_t tail = last_slot(loc);
  const std::uint64_t size = class_size(host->cls);
  slabs.block_tail(host, tail, std::uint32_t((used_in_last_page(bytes, loc.pages) + size - 1) / size));
  tails.share(tail, host->id);
}

void HeapCore::pair_with_tails(std::vector<MeshPair>& pairs, std::uint64_t& pages_left, std::uint64_t& bytes_left,
                               std::vector<std::uint32_t>* want) {
  if (!tails.any_open() || pages_left == 0) return;
  // Candidates: partly used slab pages of their own whose objects all lie above some tail's
  // bytes, by that free low span. Full pages have no free slot; empty ones nothing to move.
  struct Candidate {
    std::uint32_t low_free;
    SlabPage* page;
  };
  std::vector<Candidate> candidates;
  for (std::uint32_t cls = 0; cls < kClassCount; ++cls)
    for (std::size_t b = 1; b + 1 < kBuckets; ++b)
      for (auto& p : slabs.bucket(cls, b))
        if (const std::uint32_t lf = Slabs::low_free_bytes(p); lf > 0 && (p.fixed == 0 || safe_point_cycle))
          candidates.push_back({lf, const_cast<SlabPage*>(&p)});
  if (candidates.empty()) return;
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) { return a.low_free < b.low_free; });
  // The fullest tails first; each takes the candidate with the least room to spare that fits.
  std::vector<std::pair<std::uint32_t, std::uint32_t>> fullest;  // (bytes used, last slot)
  for (const auto& [slot, used] : tails.open_tails()) fullest.push_back({used, slot});
  std::sort(fullest.rbegin(), fullest.rend());
  std::vector<bool> taken(candidates.size(), false);
  for (const auto& [used, tail] : fullest) {
    if (pages_left == 0) break;
    auto it = std::lower_bound(candidates.begin(), candidates.end(), used,
                               [](const Candidate& c, std::uint32_t v) { return c.low_free < v; });
    for (auto k = std::size_t(it - candidates.begin()); k < candidates.size(); ++k) {
      SlabPage* src = candidates[k].page;
      const std::uint64_t bytes = std::uint64_t(src->used) * class_size(src->cls);
      if (taken[k] || bytes > bytes_left) continue;
      if (want) {
        if (!tail_can_host(src->cls, tail)) break;
        want->push_back(tail);
        taken[k] = true;
        bytes_left -= bytes;
        --pages_left;
        break;
      }
      SlabPage* dst = slab_on_tail_at(src->cls, tail, !tail_aliases_prepared);
      if (!dst) break;
      taken[k] = true;
      slabs.detach(dst);
      slabs.detach(src);
      bytes_left -= bytes;
      --pages_left;
      pairs.push_back(MeshPair{.dst = dst, .src = src});
      break;
    }
  }
}

void HeapCore::release_large(const Location& loc) {
  const std::uint32_t tail = last_slot(loc);
  tails.close(tail);
  discard_standby_alias(tail);  // it would keep the page from being released
  const auto shared = tails.shared_page(tail);
  if (!shared) {
    pool.give_back(loc.page, loc.pages);
    return;
  }
  SlabPage* p = slabs.page(*shared);
  tails.unshare(tail);
  if (loc.pages > 1) pool.give_back(loc.page, loc.pages - 1);
  // The slab page keeps the physical page. If the last slot cannot be unmapped now it stays as
  // an alias of the slab page with no users, unmapped when the page retires.
  if (!pool.drop_alias(tail).ok()) {
    pool.retag(tail, SlotKind::slab, p->id);
    p->aliases.push_back({tail, 0});
    slabs.aliases_changed(p);
  }
  slabs.unblock_tail(p);
  retire_if_spare(p);
}

bool HeapCore::release_tail_page(SlabPage* p) {
  if (!pool.drop_alias(p->slot).ok()) return false;
  const std::uint32_t tail = p->tail_slot;
  tails.unshare(tail);
  slabs.unblock_tail(p);
  // Open again for the next slab page, unless the object is already freed (a deferred free).
  const std::uint32_t owner = pool.slot(tail).owner;
  if (const HandleEntry* e = owner ? handles.get(owner) : nullptr;
      e && (e->state.load(std::memory_order_acquire) & state::kLive) && e->loc.kind == ObjectKind::large &&
      last_slot(e->loc) == tail)
    open_tail(e->loc, e->size());
  return true;
}

void HeapCore::choose_tail_sources(std::vector<SlabPage*>& sources, std::uint64_t& pages_left, std::uint64_t& bytes_left,
                                   std::vector<std::uint32_t>* want) {
  if (!tails.any_open() || pages_left == 0) return;
  // The rule is valet/evacuation_plan.h's, the one the policy engine predicts with. Candidates:
  // the pages of their own that hold objects, per class in bucket order.
  std::vector<ClassOccupancy> classes(kClassCount);
  std::vector<std::vector<SlabPage*>> pages(kClassCount);
  for (std::uint32_t cls = 0; cls < kClassCount; ++cls) {
    classes[cls].class_size = std::uint32_t(class_size(cls));
    classes[cls].slots_per_page = class_slots(cls);
    for (std::size_t b = 1; b < kBuckets; ++b)
      for (auto& p : slabs.bucket(cls, b))
        if (!p.on_tail() && p.fixed == 0) {  // a page with fixed objects cannot be emptied
          classes[cls].used.push_back(p.used);
          pages[cls].push_back(const_cast<SlabPage*>(&p));
        }
  }
  std::vector<std::uint32_t> tail_bytes, tail_slots;  // in slot order
  for (const auto& [slot, used] : tails.open_tails()) {
    // A dry run after the mesh's: the tails the mesh takes are no longer open then.
    if (want && std::find(want->begin(), want->end(), slot) != want->end()) continue;
    tail_bytes.push_back(used);
    tail_slots.push_back(slot);
  }
  planner::Budget budget{pages_left, bytes_left};
  if (want) {
    planner::choose_tail_pages(classes, tail_bytes, budget, [&](const planner::TailMatch& m) {
      if (!tail_can_host(m.cls, tail_slots[m.tail])) return false;
      want->push_back(tail_slots[m.tail]);
      return true;
    });
    return;
  }
  // The new page on the tail takes the source's objects (or others of the class: evacuation
  // fills the densest pages first; the class has the room either way). If it cannot be made,
  // the tail is passed over and the page stays a candidate.
  const auto chosen = planner::choose_tail_pages(classes, tail_bytes, budget, [&](const planner::TailMatch& m) {
    return slab_on_tail_at(m.cls, tail_slots[m.tail], !tail_aliases_prepared) != nullptr;
  });
  for (const auto& m : chosen.matches) {
    slabs.detach(pages[m.cls][m.page]);
    sources.push_back(pages[m.cls][m.page]);
  }
  pages_left = budget.pages;
  bytes_left = budget.bytes;
}

}  // namespace valet::detail
