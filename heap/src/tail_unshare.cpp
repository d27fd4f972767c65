// Unsharing a tail: before a large object whose last page hosts a slab page is resized, the slab
// page's objects move to a page of its own at the same addresses (a copy to a spare page, then
// the slab page's slot is remapped onto it), through the move executor: neither the copy nor
// the remap runs under the heap lock.
#include "heap_core.h"
#include "size_classes.h"

namespace valet::detail {

Status HeapCore::unshare_tail(std::unique_lock<HeapMutex>& lock, std::uint32_t tail) {
  mu.assert_held();
  // Cached slots on the page could not be claimed: they go back first (which may empty the page
  // and end the sharing), and no thread caches a slot of it until its objects are claimed.
  std::optional<FastPathGate> gate(std::in_place, caches);
  drain_caches();
  if (!tails.is_shared(tail)) return {};
  SlabPage* p = slabs.page(*tails.shared_page(tail));
  if (!p->aliases.empty() || p->evacuating)
    return make_error(Errc::unsupported, "unshare: the slab page on the tail is meshed or being compacted");
  if (table_blocks_moves()) return make_error(Errc::pinned, "unshare: the device handle table is pinned");
  // The page's objects are claimed for the whole operation (a pin waits: one page's copy and a
  // remap, as for meshing; this runs only when a large object with a shared tail is resized).
  std::vector<HandleEntry*> objects;
  std::vector<std::uint32_t> index;
  for (std::uint32_t i = p->blocked; i < p->capacity; ++i) {
    if (!p->test(i)) continue;
    HandleEntry* e = p->owners[i] == kNoOwner ? nullptr : handles.get(p->owners[i]);
    if (!e || !try_begin_move(e)) {
      for (HandleEntry* c : objects) end_move(c);
      return make_error(Errc::pinned, "unshare: an object of the slab page on the tail is pinned or in use");
    }
    objects.push_back(e);
    index.push_back(i);
  }
  gate.reset();
  auto end_all = [&] {
    for (HandleEntry* e : objects) end_move(e);
  };
  auto spare = pool.take_page(SlotKind::slab, p->id);
  if (!spare.ok()) {
    end_all();
    return spare.error();
  }
  // Copy the objects to the same offsets of a page of their own, then map that page at the slab
  // page's slot in place of the shared one: addresses do not change. The page leaves its bucket
  // meanwhile, so that nothing new lands on it and nothing else retires it.
  const std::size_t size = class_size(p->cls);
  CopyBatch batch;
  for (std::size_t k = 0; k < objects.size(); ++k)
    batch.copies.push_back({pool.address(p->slot) + DevicePtr(index[k]) * size,
                            pool.address(*spare) + DevicePtr(index[k]) * size, objects[k]->size()});
  batch.slots = {p->slot, *spare};
  slabs.detach(p);
  auto plan = pool.plan_remap(p->slot, *spare);
  Status remapped;
  ++moving_pages;
  const Status copied = mover.run(lock, batch, [&] { remapped = pool.remap_calls(plan); });
  --moving_pages;
  slabs.attach(p);
  const Status failed = !copied.ok() ? copied : (!remapped.ok() && !plan.lost) ? remapped : Status{};
  if (!failed.ok()) {
    pool.give_back(*spare, 1);
    end_all();
    return failed;
  }
  if (plan.lost) {
    // The slot maps nothing now; the objects' bytes are in the spare page at the same offsets:
    // it becomes the page's slot and the objects are repointed (nobody holds a pin).
    pool.forget_slot(plan);
    p->slot = *spare;
    for (HandleEntry* e : objects) {
      e->loc.page = *spare;
      e->address.store(address_of(e->loc), std::memory_order_release);
    }
    table.changed();
  } else {
    pool.commit_remap(plan);
    // The spare slot maps the new page too: unmapped now, or kept as an alias with no users.
    if (!pool.drop_alias(*spare).ok()) {
      p->aliases.push_back({*spare, 0});
      slabs.aliases_changed(p);
    }
  }
  tails.unshare(tail);
  slabs.unblock_tail(p);
  end_all();
  return {};
}

}  // namespace valet::detail
