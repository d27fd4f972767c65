// The slab lifecycle: a slab page is made for a class (on a large object's tail, or from the
// page pool: HeapCore::place), takes and frees slots, gains aliases by meshing, loses them as the
// objects addressed through them go, and is retired once empty: its aliases unmapped, its page
// back to the reserve (or, on a tail, left to the large object). One empty page per class is
// kept against allocate/free ping-pong until a compaction cycle, maintain() or the out-of-memory
// path gives it back. Every function here requires the heap lock.
#include "heap_core.h"

namespace valet::detail {

SlabPage* HeapCore::free_slab_slot(const Location& loc) {
  SlabPage* p = slabs.page(pool.slot(loc.page).owner);
  slabs.free_slot(p, loc.index);
  if (loc.page != p->slot) {
    SlabAlias* a = p->alias(loc.page);
    // Nothing is addressed through the alias any more, and a user's stream work on it has
    // completed (frees with pending stream-ordered unpins are deferred). A compaction copy may
    // still be reading the object from it, though (a pin cancelled its move, then it was freed):
    // then the alias stays, unused, until the copy's batch ends (drop_unused_aliases).
    --a->users;
    try_drop_alias(p, std::size_t(a - p->aliases.data()));
  }
  return p;
}

bool HeapCore::try_drop_alias(SlabPage* p, std::size_t k) {
  const SlabAlias a = p->aliases[k];
  if (a.users != 0 || pool.held(a.slot) || !pool.drop_alias(a.slot).ok()) return false;
  p->aliases[k] = p->aliases.back();
  p->aliases.pop_back();
  slabs.aliases_changed(p);
  return true;
}

void HeapCore::drop_unused_aliases(SlabPage* p) {
  for (std::size_t k = 0; k < p->aliases.size();)
    if (!try_drop_alias(p, k)) ++k;
}

bool HeapCore::retire_slab(SlabPage* p) {
  // Aliases left with no users (an earlier unmap failed, or queued work held them) go first;
  // the page stays if one cannot.
  drop_unused_aliases(p);
  if (!p->aliases.empty()) return false;
  // On a large object's tail, the physical page stays with the object.
  if (p->on_tail()) {
    if (!release_tail_page(p)) return false;
    slabs.destroy(p);
    return true;
  }
  const std::uint32_t slot = p->slot;
  slabs.destroy(p);
  pool.give_back(slot, 1);
  return true;
}

std::size_t HeapCore::retire_empty_slabs(std::uint64_t max_pages) {
  std::vector<SlabPage*> empty;
  slabs.for_each_page([&](const SlabPage& p) {
    if (p.holds_no_object() && !p.evacuating) empty.push_back(const_cast<SlabPage*>(&p));
  });
  std::size_t freed = 0;
  for (SlabPage* p : empty) {
    if (freed == max_pages) break;
    const bool frees_a_page = !p->on_tail();  // a tail's page stays with its large object
    if (retire_slab(p) && frees_a_page) ++freed;
  }
  return freed;
}

std::size_t HeapCore::meshed_slots() const {
  std::size_t n = 0;
  slabs.for_each_page([&](const SlabPage& p) { n += p.aliases.size(); });
  return n;
}

}  // namespace valet::detail
