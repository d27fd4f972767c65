// Evacuation: empty the sparsest slab pages of each class by moving their objects into the free
// slots of denser pages of the same class, in batched copies, then give the emptied pages back.
// The move-safety protocol (docs/move-safety.md), per batch:
//   1. under the heap lock, each object to move is claimed MOVING and CANCELABLE by CAS from
//      "unpinned, not moving, no stream-ordered unpin pending" (objects that refuse are skipped,
//      their page stays), and a new slot is taken for it, owned by nobody (in transit);
//   2. one batched copy is queued on the heap's work stream, and the lock is released until the
//      copy has completed. Meanwhile a pin (host or stream) takes its object at the old place at
//      once and cancels its move: no pin waits for a copy;
//   3. under the lock, each move no pin cancelled is committed (CANCELABLE cleared by CAS; from
//      here a pin waits a few stores), the handle repointed and the old slot freed; a cancelled
//      move gives its new slot back.
// A handle is never repointed before its bytes are in place, so no later use, host or stream,
// needs to wait on the copy. A batch holds at most move_batch_bytes. Emptied pages go back to the
// reserve (trimmed to the backend above the high watermark) when the cycle ends.
#include <algorithm>

#include "heap_core.h"
#include "size_classes.h"
#include "valet/evacuation_plan.h"

namespace valet::detail {

void HeapCore::record_cycle(const CompactionRecord& r) {
  ++compaction.cycles;
  if (r.trigger == CompactionTrigger::emergency) ++compaction.emergency_cycles;
  compaction.objects_moved += r.objects_moved;
  compaction.bytes_moved += r.bytes_moved;
  compaction.pages_freed += r.pages_freed;
  compaction.pages_meshed += r.pages_meshed;
  compaction.bytes_meshed += r.bytes_meshed;
  recent_cycles.push_back(r);
  while (recent_cycles.size() > 16) recent_cycles.pop_front();
}

Result<CompactionRecord> HeapCore::compact_locked(std::unique_lock<HeapMutex>& lock, const CompactRequest& req) {
  mu.assert_held();
  // Its relocks (between batches) are compaction's, on whatever thread (an emergency cycle's too).
  const ScopedLockRole role(LockRole::compaction);
  const std::uint64_t t0 = now_ns();
  cycle_pin_wait_ns.store(0, std::memory_order_relaxed);
  CompactionRecord rec;
  rec.trigger = req.trigger;
  // Frees cached for their streams become reusable by every stream once their streams pass
  // them (reaped by a later cycle or allocation). At a safe point no work is queued: they come
  // back now, so their slots do not keep pages out of meshing.
  if (req.safe_point) {
    wait_deferred(lock);
  } else {
    (void)flush_stream_frees(lock);
    reap_deferred();
  }
  // Objects the threads cached go back to their slabs: a cached slot can be neither moved nor
  // meshed, and would keep its page from being emptied.
  drain_caches();
  // Meshing may take fixed objects' pages as sources only at a safe point (docs/pytorch.md).
  safe_point_cycle = req.safe_point;
  struct EndSafePoint {
    bool& flag;
    ~EndSafePoint() { flag = false; }
  } end_safe_point{safe_point_cycle};
  // Kernels may be resolving handles through the device table: nothing moves until they are done.
  if (table_blocks_moves()) {
    rec.duration_ns = now_ns() - t0;
    record_cycle(rec);  // a cycle that could move nothing: its callers count it too
    return rec;
  }
  // Empty slab pages go first: they free pages without moving anything (the page each class
  // keeps against allocate/free ping-pong included: a cycle is a moment of pressure or of
  // tidying, and the next allocation of the class takes a reserve page again).
  rec.pages_freed += retire_empty_slabs(req.max_pages);
  std::uint64_t bytes_left = req.max_bytes;
  std::uint64_t pages_left = req.max_pages - rec.pages_freed;
  // The slab pages this cycle builds on tails get their aliases mapped now, without the lock
  // (tail_aliases.cpp); what the planners below do not take goes back when the cycle ends.
  prepare_tail_aliases(lock, req.mesh, req.evacuate, pages_left, bytes_left);
  struct DiscardTailAliases {
    HeapCore& core;
    ~DiscardTailAliases() { core.discard_tail_aliases(/*keep_standbys=*/true); }
  } discard_unused_aliases{*this};
  // Meshing first: it frees pages without changing any address.
  const Status meshed = req.mesh ? mesh_locked(lock, pages_left, bytes_left, rec) : Status{};
  std::vector<SlabPage*> sources;
  if (req.evacuate) {
    // Pages whose objects fit the unused bytes of large objects' last pages go first: each frees
    // a page whatever its occupancy. Then the sparsest pages of each class.
    if (config.share_tails) choose_tail_sources(sources, pages_left, bytes_left);
    const auto sparse = choose_sources(req.max_occupancy, pages_left, bytes_left);
    sources.insert(sources.end(), sparse.begin(), sparse.end());
  }
  const Status evacuated = evacuate(lock, sources, rec);
  // Objects freed into the threads' caches while the batches copied hold slots of the sources
  // (a cached slot is never moved): they go back now, so that those pages can be retired.
  if (!sources.empty()) drain_caches();
  for (SlabPage* p : sources) {
    if (p->used == 0 && retire_slab(p))
      ++rec.pages_freed;
    else
      slabs.attach(p);
  }
  after_release();
  if (!evacuated.ok()) return evacuated.error();
  // The copying region's holes: closed by copies (heap_region.cpp), past its high threshold, or
  // whatever they are when asked for explicitly or before an out-of-memory.
  const bool asked = req.trigger == CompactionTrigger::explicit_request || req.trigger == CompactionTrigger::emergency;
  const Status copied = req.evacuate ? compact_region(lock, bytes_left, asked, rec) : Status{};
  if (!copied.ok()) return copied.error();
  rec.duration_ns = now_ns() - t0;
  rec.longest_pin_wait_ns = cycle_pin_wait_ns.load(std::memory_order_relaxed);
  record_cycle(rec);
  if (!meshed.ok()) return meshed.error();
  return rec;
}

std::vector<SlabPage*> HeapCore::choose_sources(double max_occupancy, std::uint64_t& pages_left,
                                                std::uint64_t& bytes_left) {
  // The rule is valet/evacuation_plan.h's, the one the policy engine predicts with: here it runs
  // on the pages in the buckets (those of this cycle's tail sources are detached already).
  std::vector<SlabPage*> sources, pages;
  planner::Budget budget{pages_left, bytes_left};
  for (std::uint32_t cls = 0; cls < kClassCount && budget.pages > 0; ++cls) {
    ClassOccupancy occupancy{std::uint32_t(class_size(cls)), class_slots(cls), {}, 0};
    pages.clear();
    for (std::size_t b = 0; b < kBuckets; ++b)
      for (auto& p : slabs.bucket(cls, b)) {
        // Emptying a page on a large object's tail frees no memory: the object keeps the page.
        // Nor does emptying a page that holds fixed objects (they stay): its free slots still
        // take objects, like a tail's.
        if (p.on_tail() || p.fixed > 0) {
          occupancy.tail_free_slots += p.capacity - p.used;
          continue;
        }
        occupancy.used.push_back(p.used);
        pages.push_back(const_cast<SlabPage*>(&p));
      }
    for (std::uint32_t k : planner::choose_sparse_pages(occupancy, max_occupancy, budget).pages) {
      slabs.detach(pages[k]);
      sources.push_back(pages[k]);
    }
  }
  pages_left = budget.pages;
  bytes_left = budget.bytes;
  return sources;
}

Status HeapCore::evacuate(std::unique_lock<HeapMutex>& lock, const std::vector<SlabPage*>& sources,
                          CompactionRecord& rec) {
  std::vector<Move> batch;
  std::uint64_t batch_bytes = 0;
  // Sources stay detached across batches (only this cycle may destroy them, nothing new lands on
  // them), so their slots can be read again after each batch: frees meanwhile just leave fewer.
  for (SlabPage* src : sources) {
    for (std::uint32_t i = 0; i < src->capacity; ++i) {
      const std::uint32_t owner = src->owners[i];
      if (owner == kNoOwner) continue;  // free, or a deferred free still waiting on a stream
      HandleEntry* e = handles.get(owner);
      if (!try_begin_move(e, /*cancelable=*/true)) {
        ++rec.objects_skipped;
        continue;
      }
      SlabPage* dst = slabs.densest_with_room(src->cls);
      if (!dst) {
        drop_claim(e);
        ++rec.objects_skipped;
        continue;
      }
      // The new slot is taken but owned by nobody (in transit) until the move commits.
      const std::uint32_t j = slabs.take_slot(dst, kNoOwner);
      ++in_transit;
      batch.push_back({e, owner, e->loc, Location{ObjectKind::slab, dst->slot, j, 0}, e->size()});
      batch_bytes += e->size();
      if (batch_bytes >= move_batch_bytes) {
        VALET_TRY(run_moves(lock, batch, rec));
        batch.clear();
        batch_bytes = 0;
      }
    }
  }
  return batch.empty() ? Status{} : run_moves(lock, batch, rec);
}

Status HeapCore::run_moves(std::unique_lock<HeapMutex>& lock, const std::vector<Move>& moves, CompactionRecord& rec) {
  // The slots the copy reads and writes stay mapped until it completed, whatever happens to
  // their objects meanwhile (a pin may cancel a move and the object be freed: its alias must
  // not be unmapped under the copy). The source pages are detached: none is destroyed meanwhile.
  CopyBatch batch;
  std::vector<SlabPage*> source_pages;
  for (const Move& m : moves) {
    batch.copies.push_back({address_of(m.from), address_of(m.to), m.bytes});
    batch.slots.push_back(m.from.page);
    batch.slots.push_back(m.to.page);
    SlabPage* src = slabs.page(pool.slot(m.from.page).owner);
    if (source_pages.empty() || source_pages.back() != src) source_pages.push_back(src);
  }
  // The copy runs without the heap lock. The objects stay where they are, claimed cancelable: a
  // pin meanwhile takes its object at the old place at once and cancels that move.
  const Status st = mover.run(lock, batch);
  in_transit -= moves.size();
  bool repointed = false;
  for (const Move& m : moves) {
    SlabPage* dst = slabs.page(pool.slot(m.to.page).owner);
    if (!st.ok()) drop_claim(m.entry);
    // Repoint only now that the copy is complete, and only if no pin cancelled the move: from
    // commit_move to end_move (a few stores) a pin waits.
    if (!st.ok() || !commit_move(m.entry)) {
      slabs.free_slot(dst, m.to.index);
      if (st.ok()) ++rec.objects_skipped;
      continue;
    }
    slabs.set_owner(dst, m.to.index, m.owner);
    m.entry->loc = m.to;
    m.entry->address.store(address_of(m.to), std::memory_order_relaxed);
    end_move(m.entry);  // release: a pin that follows sees the new address
    // The old slot last: freeing it may unmap an alias (a driver call no pin should wait for).
    free_slab_slot(m.from);
    rec.bytes_moved += m.bytes;
    ++rec.objects_moved;
    repointed = true;
  }
  if (repointed) table.changed();
  // Aliases whose last object was freed while the copy read through them go now.
  for (SlabPage* p : source_pages) drop_unused_aliases(p);
  return st;
}

}  // namespace valet::detail
