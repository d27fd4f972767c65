// Misses made without the heap lock (Config::unlocked_misses; docs/background_misses.md, "Misses
// without the heap lock"). A large allocation that finds the heap lock held would wait for the
// holder's whole hold (the mapper's placement of another miss, a keeper's batch, a compaction
// step): most of the allocations' slowest hundredth did. With background misses the object is
// pending anyway until the mapper maps it, so the allocation needs the lock only for what it
// takes from the heap (a handle index, pages of the capacity) and for the mapper's queue. Those
// are handed to the thread's cache beforehand, under the lock (top_up_unlocked), and the miss
// waits in the cache's inbox until the next holder of the lock queues it (collect_unlocked_misses:
// the mapper before it looks at its queue; a free or a serving pin of one of them; a wait for
// misses; a drain).
#include "heap_core.h"
#include "size_classes.h"

namespace valet::detail {
namespace {

// Pages a cache is credited at most: enough for the large objects of a serving loop, a small
// share of the capacity, and never the last pages of it: a credit is withheld from every other
// allocation until it is given back. All caches together hold at most four caches' worth (and a
// sixteenth of the capacity): a process of many threads credits the ones that came first, and
// the others take the lock as before.
constexpr std::size_t kCreditPages = 128;
std::size_t credit_target(std::size_t capacity_pages) { return std::min(kCreditPages, capacity_pages / 32); }
std::size_t credit_total(std::size_t capacity_pages) { return std::min(4 * kCreditPages, capacity_pages / 16); }

}  // namespace

std::optional<Handle> HeapCore::allocate_unlocked_miss(std::size_t bytes) {
  ThreadCache* c = caches.mine();
  if (!c) return std::nullopt;
  const auto n = std::uint32_t((bytes + kPageSize - 1) / kPageSize);
  std::uint32_t index = 0, gen = 0;
  bool mapper_may_sleep = false;
  {
    std::lock_guard cl(c->mu);
    // A gate, a closing (a pin_table, a shutdown) or a shutdown decided: each passed through
    // this lock after setting its flag, so a miss made here is one they collect.
    if (caches.gated() || unlocked_closed.load(std::memory_order_acquire) != 0 ||
        shut.load(std::memory_order_acquire))
      return std::nullopt;
    if (c->spare_handles.empty() || c->credit_pages < n || c->inbox.size() >= ThreadCache::kInbox) return std::nullopt;
    index = c->spare_handles.back();
    c->spare_handles.pop_back();
    c->credit_pages -= n;
    HandleEntry* e = handles.get(index);
    // Nobody reads a spare entry's fields: it is neither free nor live until the store below
    // publishes them, claimed, so that no mover and no pin takes it before the mapper places it.
    e->set_size(bytes);
    e->loc = Location{ObjectKind::large, kUnplaced, 0, n};
    e->fixed = false;
    e->address.store(0, std::memory_order_relaxed);
    gen = claims::make_live_claimed(e->state);
    c->inbox.push_back(index);
    c->live_bytes += std::int64_t(bytes);
    ++c->live_objects;
    ++c->allocs;
    ++c->miss_allocs;
    c->footprint += std::size_t(n) * kPageSize;
    c->changed = true;
    // Counted under the cache's lock: a collection (which takes it) never counts more than the
    // inboxes hold. An awake mapper collects the miss before it looks at its queue again.
    mapper_may_sleep = misses.note_unlocked();
  }
  ++t_background_misses;
  if (mapper_may_sleep) {
    // Its wake needs the heap lock (MissMapper::note_unlocked): the submit wakes it. Rare: a
    // sleeping mapper holds no lock, so the holder that sent this allocation here was another.
    std::lock_guard lock(mu);
    collect_unlocked_misses();
  }
  return Handle{index, gen, tag};
}

void HeapCore::collect_from(ThreadCache& c) {
  if (c.inbox.empty()) return;
  // The cache's deltas first, so that the live peak noted below has these objects in it.
  fold(c);
  for (const std::uint32_t index : c.inbox) {
    const std::uint32_t n = handles.get(index)->loc.pages;
    const std::size_t used_before = pool.demand_pages();
    pool.promise_credited(n);
    // What allocate_locked notes for a miss: its pages, and the live peak (demand.h).
    if (Demand::ordinary(n, used_before)) {
      demand.large_pages.note(n, now_ns());
      demand.live_peak.note(live_bytes_known(), now_ns());
    }
    PendingMiss m;
    m.index = index;
    m.step = PendingMiss::Step::place;
    misses.submit(std::move(m));
    ++ops.unlocked_misses;
  }
  misses.took_unlocked(std::uint32_t(c.inbox.size()));
  c.inbox.clear();
  want_refill();
}

void HeapCore::collect_unlocked_misses() {
  mu.assert_held();
  if (misses.unlocked_waiting() == 0) return;
  caches.for_each([&](ThreadCache& c) { collect_from(c); });
}

void HeapCore::top_up_unlocked(std::size_t pages) {
  mu.assert_held();
  if (!config.unlocked_misses || !config.background_misses || !config.mapper_places_misses || !caches.enabled() ||
      !misses.running() || unlocked_closed.load(std::memory_order_relaxed) != 0)
    return;
  // Near the capacity every credit comes back and none is given: the pages are the keeper's
  // reserve's and the misses' (credits withheld there leave the reserve empty); every large
  // allocation then takes the lock, as without these misses. A credit is given again only
  // where the capacity keeps its margin beyond it (below): no credit given and taken by turns.
  const std::size_t margin = capacity_pages / 8;
  if (pool.creatable_pages() < margin) {
    if (pool.credited_pages() > 0) caches.for_each([&](ThreadCache& c) { give_back_unlocked(c); });
    return;
  }
  // A thread whose objects no credit would hold gets none (nor spare handles).
  const std::size_t want = credit_target(capacity_pages);
  if (pages > want) return;
  ThreadCache& c = *caches.mine_or_make();
  // Its credit changes only under the heap lock (held here) and on this thread's own
  // allocations (this thread is here): read once, it holds.
  const std::size_t have = [&] {
    std::lock_guard cl(c.mu);
    return c.credit_pages;
  }();
  if (have >= want) return;
  const std::size_t more = want - have;
  // Within the total: what caches of exited threads hold comes back first (their threads can
  // use it no more; a drain would give it back, but may be far off), as a drain does it (this
  // thread's cache is no orphan: `c` stays). One cache lock at a time.
  if (pool.credited_pages() + more > credit_total(capacity_pages))
    caches.drop_orphans([&](ThreadCache& o) { give_back_unlocked(o); });
  if (pool.credited_pages() + more > credit_total(capacity_pages) || pool.creatable_pages() < more + margin ||
      !pool.credit(more))
    return;
  std::lock_guard cl(c.mu);
  c.credit_pages += more;
  while (c.spare_handles.size() < ThreadCache::kSpareHandles) {
    std::uint32_t index = 0;
    if (!handles.acquire(index)) break;
    c.spare_handles.push_back(index);
  }
}

void HeapCore::give_back_unlocked(ThreadCache& c) {
  mu.assert_held();
  collect_from(c);
  for (const std::uint32_t index : c.spare_handles) handles.release(index);
  c.spare_handles.clear();
  pool.uncredit(c.credit_pages);
  c.credit_pages = 0;
}

HeapCore::UnlockedMissesClosed::UnlockedMissesClosed(HeapCore& c) : c_(c) {
  c_.mu.assert_held();
  c_.unlocked_closed.fetch_add(1, std::memory_order_acq_rel);
  {
    // A barrier: a miss being made now finishes before it, and none begins after it.
    const FastPathGate gate(c_.caches);
  }
  c_.collect_unlocked_misses();
}

}  // namespace valet::detail
