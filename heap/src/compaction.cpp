// Evacuation: empty the sparsest slab pages of each class by moving their objects into the free
// slots of denser pages of the same class, in batched copies, then give the emptied pages back.
// The move-safety protocol (docs/move-safety.md), per batch:
//   1. under the heap lock, each object to move is marked MOVING by CAS from "unpinned, settled,
//      no stream-ordered unpin pending"; objects that refuse are skipped (their page stays);
//   2. one batched copy is queued on the heap's work stream and a fence event recorded after it;
//   3. each handle is repointed to its new place and marked IN_FLIGHT with the fence: from here a
//      host pin waits for the fence, a stream pin makes its stream wait on it, a free waits;
//   4. the lock is released while the copy runs; then the old slots are freed and IN_FLIGHT is
//      cleared.
// A batch holds at most move_batch_bytes (a whole cycle could be hundreds of MiB): a pin waits
// for one batch's copy at most, since objects of later batches are not claimed yet. Emptied pages
// go back to the reserve (trimmed to the backend above the high watermark) when the cycle ends.
#include <algorithm>

#include "heap_core.h"
#include "size_classes.h"

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
  const std::uint64_t t0 = now_ns();
  cycle_pin_wait_ns.store(0, std::memory_order_relaxed);
  CompactionRecord rec;
  rec.trigger = req.trigger;
  reap_deferred();
  // Kernels may be resolving handles through the device table: nothing moves until they are done.
  if (table_blocks_moves()) {
    rec.duration_ns = now_ns() - t0;
    return rec;
  }
  std::uint64_t bytes_left = req.max_bytes;
  std::uint64_t pages_left = req.max_pages;
  // Meshing first: it frees pages without changing any address.
  const Status meshed = req.mesh ? mesh_locked(lock, pages_left, bytes_left, rec) : Status{};
  std::vector<SlabPage*> sources;
  if (req.evacuate) sources = choose_sources(req.max_occupancy, pages_left, bytes_left);
  const Status evacuated = evacuate(lock, sources, rec);
  for (SlabPage* p : sources) {
    if (p->used == 0 && retire_slab(p))
      ++rec.pages_freed;
    else
      slabs.attach(p);
  }
  after_release();
  if (!evacuated.ok()) return evacuated.error();
  rec.duration_ns = now_ns() - t0;
  rec.longest_pin_wait_ns = cycle_pin_wait_ns.load(std::memory_order_relaxed);
  record_cycle(rec);
  if (!meshed.ok()) return meshed.error();
  return rec;
}

std::vector<SlabPage*> HeapCore::choose_sources(double max_occupancy, std::uint64_t& pages_left,
                                                std::uint64_t& bytes_left) {
  std::vector<SlabPage*> sources, candidates;
  for (std::uint32_t cls = 0; cls < kClassCount && pages_left > 0; ++cls) {
    candidates.clear();
    std::uint64_t free_slots = 0;
    for (std::size_t b = 0; b < kBuckets; ++b)
      for (auto& p : slabs.bucket(cls, b)) {
        free_slots += p.capacity - p.used;
        if (double(p.used) <= max_occupancy * p.capacity) candidates.push_back(const_cast<SlabPage*>(&p));
      }
    if (candidates.size() < 2) continue;
    std::sort(candidates.begin(), candidates.end(),
              [](const SlabPage* a, const SlabPage* b) { return a->used < b->used; });
    // Sparsest first, while the pages left behind have room for everything moved so far.
    std::uint64_t moving = 0, dest_free = free_slots;
    const std::size_t chosen_begin = sources.size();
    for (SlabPage* p : candidates) {
      const std::uint64_t page_bytes = std::uint64_t(p->used) * class_size(cls);
      if (pages_left == 0 || page_bytes > bytes_left) break;
      if (moving + p->used > dest_free - (p->capacity - p->used)) break;
      moving += p->used;
      dest_free -= p->capacity - p->used;
      bytes_left -= page_bytes;
      --pages_left;
      sources.push_back(p);
    }
    for (std::size_t k = chosen_begin; k < sources.size(); ++k) slabs.detach(sources[k]);
  }
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
      if (!try_begin_move(e)) {
        ++rec.objects_skipped;
        continue;
      }
      SlabPage* dst = slabs.densest_with_room(src->cls);
      if (!dst) {
        end_move(e);
        ++rec.objects_skipped;
        continue;
      }
      const std::uint32_t j = slabs.take_slot(dst, owner);
      batch.push_back({e, e->loc, Location{ObjectKind::slab, dst->slot, j, 0}, e->size});
      batch_bytes += e->size;
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
  std::vector<CopyRange> copies;
  copies.reserve(moves.size());
  for (const Move& m : moves) copies.push_back({address_of(m.from), address_of(m.to), m.bytes});
  auto ev = backend->create_event();
  Status st = ev.ok() ? backend->copy(copies, work_stream) : Status(ev.error());
  if (st.ok()) st = backend->record_event(*ev, work_stream);
  if (!st.ok()) {
    // Nothing was repointed: give the destination slots back and let the objects be.
    for (const Move& m : moves) {
      slabs.free_slot(slabs.page(pool.slot(m.to.page).owner), m.to.index);
      end_move(m.entry);
    }
    if (ev.ok()) (void)backend->destroy_event(*ev);
    (void)backend->synchronize_stream(work_stream);
    return st;
  }
  auto fence = std::make_shared<MoveFence>(backend.get(), *ev);
  for (const Move& m : moves) {
    m.entry->loc = m.to;
    m.entry->address.store(address_of(m.to), std::memory_order_relaxed);
    m.entry->fence.store(fence, std::memory_order_release);
    const std::uint64_t s = m.entry->state.load(std::memory_order_relaxed);
    m.entry->state.store((s | state::kInFlight) & ~state::kMoving, std::memory_order_release);
    m.entry->state.notify_all();
    // The old slot stays taken (in transit) until the copy is done, but belongs to nobody.
    slabs.set_owner(slabs.page(pool.slot(m.from.page).owner), m.from.index, kNoOwner);
  }
  in_transit += moves.size();
  ++table_version;
  lock.unlock();
  const Status synced = backend->synchronize_event(fence->event);
  lock.lock();
  in_transit -= moves.size();
  for (const Move& m : moves) {
    free_slab_slot(m.from);
    if (m.entry->fence.load() == fence) {
      m.entry->fence.store(nullptr);
      m.entry->state.fetch_and(~state::kInFlight, std::memory_order_acq_rel);
    }
    rec.bytes_moved += m.bytes;
  }
  rec.objects_moved += moves.size();
  return synced;
}

}  // namespace valet::detail
