// Meshing: two slab pages of one class whose taken slots do not overlap share one physical page.
// The source page's objects are copied to the same offsets of the destination's physical page,
// then the source's virtual page is remapped onto that physical page and its own page released.
// No address changes, so no handle is repointed and a kernel holding an address is unaffected
// once the remap is done (docs/meshing.md).
//
// Safety (docs/move-safety.md, rule 8): every object of the source page is claimed MOVING, as for
// a move, from before the copy until its slot maps memory again after the remap, because between
// unmap and map an access would fault and a late write to the source would be lost. During the
// copy the claims are cancelable: a pin takes its object at once and the pair is not meshed.
// From the commit to the end of the remap (three driver calls) a pin waits. A source with a
// pinned object, a pending stream-ordered unpin, or a deferred free is skipped.
// The destination's objects are not disturbed (their bytes and mapping never change); the
// destination only leaves the allocation buckets, so nothing new lands on the slots being filled.
#include <algorithm>
#include <random>

#include "heap_core.h"
#include "mesh_search.h"
#include "size_classes.h"

namespace valet::detail {

std::vector<MeshPair> HeapCore::find_mesh_pairs_locked(std::uint64_t& pages_left, std::uint64_t& bytes_left) {
  std::vector<MeshPair> pairs;
  std::vector<SlabPage*> pages;
  std::vector<MeshCandidate> candidates;
  // Slab pages onto large objects' tails first: each pair frees a page without needing a
  // second sparse page of the class.
  if (config.share_tails) pair_with_tails(pairs, pages_left, bytes_left);
  // Deterministic per cycle, different across cycles.
  std::mt19937 rng(std::uint32_t(compaction.cycles * 2654435761u + 12345u));
  planner::Budget budget{pages_left, bytes_left};
  for (std::uint32_t cls = 0; cls < kClassCount && budget.pages > 0; ++cls) {
    pages.clear();
    candidates.clear();
    for (std::size_t b = 1; b + 1 < kBuckets; ++b)  // partly used pages only
      for (auto& p : slabs.bucket(cls, b)) {
        pages.push_back(const_cast<SlabPage*>(&p));
        const bool movable = p.aliases.empty() && !p.on_tail() && (p.fixed == 0 || safe_point_cycle);
        candidates.push_back({p.used, std::uint32_t(p.sharers()), p.descending, movable, p.bitmap});
      }
    const auto found = find_mesh_pairs(candidates, class_slots(cls), class_size(cls), kMaxSharers, rng, budget);
    for (const MeshMatch& m : found) {
      slabs.detach(pages[m.dst]);
      slabs.detach(pages[m.src]);
      pairs.push_back(MeshPair{.dst = pages[m.dst], .src = pages[m.src]});
    }
  }
  pages_left = budget.pages;
  bytes_left = budget.bytes;
  return pairs;
}

void HeapCore::release_pair(MeshPair& pair) {
  for (HandleEntry* e : pair.objects) drop_claim(e);
  pair.objects.clear();
  slabs.attach(pair.dst);
  slabs.attach(pair.src);
}

Status HeapCore::mesh_locked(std::unique_lock<HeapMutex>& lock, std::uint64_t& pages_left,
                             std::uint64_t& bytes_left, CompactionRecord& rec) {
  std::vector<MeshPair> pairs = find_mesh_pairs_locked(pages_left, bytes_left);
  // Batches of at most move_batch_bytes: a source's objects are claimed only when its batch
  // starts, so a pin waits for one batch at most. Between batches the lock is released; the
  // detached pages only lose objects meanwhile (frees), so the pairs stay disjoint.
  Status first;
  std::vector<MeshPair*> batch;
  for (std::size_t next = 0; next < pairs.size();) {
    batch.clear();
    std::uint64_t batch_bytes = 0;
    for (; next < pairs.size() && batch_bytes < move_batch_bytes; ++next) {
      MeshPair& pr = pairs[next];
      if (claim_source(pr)) {
        batch.push_back(&pr);
        batch_bytes += pr.bytes;
      } else {
        ++rec.objects_skipped;
        release_pair(pr);
      }
    }
    if (batch.empty()) continue;
    const Status st = mesh_batch(lock, batch, rec, first);
    if (!st.ok()) {
      for (; next < pairs.size(); ++next) release_pair(pairs[next]);
      after_release();
      return st;
    }
  }
  after_release();
  return first;
}

Status HeapCore::mesh_batch(std::unique_lock<HeapMutex>& lock, const std::vector<MeshPair*>& batch,
                            CompactionRecord& rec, Status& first) {
  // One batched copy of the batch's source objects to the same offsets of their destinations.
  CopyBatch copy;
  for (MeshPair* pr : batch) {
    const std::size_t size = class_size(pr->dst->cls);
    for (HandleEntry* e : pr->objects)
      copy.copies.push_back({address_of(e->loc), pool.address(pr->dst->slot) + DevicePtr(e->loc.index) * size, e->size()});
    pr->plan = pool.plan_remap(pr->src->slot, pr->dst->slot);
    copy.slots.push_back(pr->src->slot);
    copy.slots.push_back(pr->dst->slot);
  }
  // Without the heap lock: the copy, then the remaps (the sources are detached and their objects
  // claimed, so nothing else touches their slots). During the copy a pin cancels its object's
  // claim and so its pair; a pair still whole is committed with each object's alias, its
  // complete copy in the destination page: during the remap a pin takes the alias at once, so no
  // pin waits for a driver call (a VMM call can take milliseconds). The claims end when the slot
  // maps the shared page; if the remap fails they end after the objects are repointed to their
  // aliases (book_pair), where pins may have written.
  const Status st = mover.run(lock, copy, [&] {
    for (MeshPair* pr : batch) commit_and_remap(*pr);
  });
  if (!st.ok()) {
    for (MeshPair* pr : batch) release_pair(*pr);
    return st;
  }
  for (MeshPair* pr : batch) book_pair(*pr, rec, first);
  return {};
}

void HeapCore::commit_and_remap(MeshPair& pr) {
  auto& objects = pr.objects;
  const DevicePtr dst_base = pool.address(pr.dst->slot);
  const std::size_t size = class_size(pr.dst->cls);
  // Commit every claim first (pins wait meanwhile: a few CASes), and publish aliases only once
  // the whole pair is committed: an alias of a pair that is then dropped would point at a free
  // slot of the destination.
  std::size_t committed = 0;
  while (committed < objects.size() && commit_move(objects[committed])) ++committed;
  if (committed < objects.size()) {
    // The source keeps its page: end the committed claims, drop the rest (the cancelled one is
    // no longer ours).
    for (std::size_t i = 0; i < objects.size(); ++i)
      if (i < committed) end_move(objects[i]);
      else if (i > committed) drop_claim(objects[i]);
    objects.clear();
    pr.cancelled = true;
    return;
  }
  for (HandleEntry* e : objects) publish_alias(e, dst_base + DevicePtr(e->loc.index) * size);
  pr.remapped = pool.remap_calls(pr.plan);
  if (pr.remapped.ok())
    for (HandleEntry* e : objects) end_move(e);
}

void HeapCore::book_pair(MeshPair& pr, CompactionRecord& rec, Status& first) {
  SlabPage* src = pr.src;
  SlabPage* dst = pr.dst;
  if (pr.cancelled) {
    // A pin took one of the source's objects during the copy: the pair stays as it was (the
    // copies landed on free slots of the destination).
    ++rec.objects_skipped;
    release_pair(pr);
    return;
  }
  if (!pr.remapped.ok() && !pr.plan.lost && src->fixed > 0) {
    // The remap failed and the source's slot maps its own page again. Fixed objects must keep
    // their addresses, and at a safe point nobody wrote their aliases: they stay where they
    // were, with the bytes they had; the copies in the destination were on free slots.
    for (HandleEntry* e : pr.objects) end_move(e);
    pr.objects.clear();
    slabs.attach(dst);
    slabs.attach(src);
    if (first.ok()) first = pr.remapped;
    return;
  }
  if (!pr.remapped.ok()) {
    // The remap failed. The objects' complete bytes are in the destination's page at the same
    // offsets, and pins during the remap used them there: they become the destination's
    // objects, repointed like an evacuation (pins already hold the alias). The source slot maps
    // its own page again (it goes back to the reserve with the source page's record), or, if
    // even that failed, nothing.
    if (pr.plan.lost)
      pool.forget_slot(pr.plan);
    else
      pool.give_back(src->slot, 1);
    const std::uint32_t moved = src->used;
    slabs.fold(dst, src);
    for (HandleEntry* e : pr.objects) {
      e->loc.page = dst->slot;
      e->address.store(address_of(e->loc), std::memory_order_release);
      end_move(e);
    }
    table.changed();
    rec.objects_moved += moved;
    rec.bytes_moved += pr.bytes;
    ++rec.pages_freed;
    if (first.ok()) first = pr.remapped;
    return;
  }
  pool.commit_remap(pr.plan);
  // Frees while the lock was released may have emptied the source: then nothing is addressed
  // through its slot and the alias goes at once (or with the page, if it fails).
  if (src->used > 0 || !pool.drop_alias(src->slot).ok()) {
    dst->aliases.push_back({src->slot, src->used});
    slabs.aliases_changed(dst);
  }
  if (pool.slot(src->slot).kind == SlotKind::slab) pool.slot(src->slot).owner = dst->id;
  slabs.fold(dst, src);
  ++rec.pages_meshed;
  rec.bytes_meshed += pr.bytes;
}

bool HeapCore::claim_source(MeshPair& pair) {
  // A deferred or in-transit slot (taken, no owner: queued work may touch it) or an object that
  // refuses (pinned, unpin pending, moving) leaves the pair alone; so does a source emptied by
  // frees since the pair was found (nothing to mesh).
  SlabPage* src = pair.src;
  pair.objects.clear();
  pair.bytes = 0;
  if (src->used == 0) return false;
  for (std::uint32_t k = 0; k < src->capacity; ++k) {
    if (!src->test(k)) continue;
    const std::uint32_t owner = src->owners[k];
    HandleEntry* e = owner == kNoOwner ? nullptr : handles.get(owner);
    if (!e || !try_begin_move(e, /*cancelable=*/true, /*fixed_ok=*/safe_point_cycle)) {
      for (HandleEntry* c : pair.objects) drop_claim(c);
      pair.objects.clear();
      return false;
    }
    pair.objects.push_back(e);
    pair.bytes += e->size();
  }
  return true;
}

}  // namespace valet::detail
