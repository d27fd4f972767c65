// Prepared tail aliases (page_pool.h): a large object's last page mapped a second time at a free
// slot, made without the heap lock, for a slab page that a compaction cycle will build on that
// tail. Until it is used the slot is a dropping slot on the retargeting list (as begin_retarget's
// are), not queued: no placement claims it (only queued drops are claimable), and the page it
// maps is never released while a dropping slot maps it (begin_release), so the page stays the
// pool's whatever happens to the tail meanwhile. It is not `provisioning`: nothing waits for it
// (batch_in_flight, the out-of-memory path), since it holds no page in flight.
#include "page_pool.h"

namespace valet::detail {

std::optional<PagePool::TailAlias> PagePool::begin_tail_alias(std::uint32_t tail) {
  if (tail >= slots_.size() || slots_[tail].phys == kNoPhys || in_chunk(tail)) return std::nullopt;
  auto s = unmapped_.take_best_fit(1);
  if (!s) return std::nullopt;
  TailAlias a;
  a.tail = tail;
  a.slot = *s;
  a.phys = slots_[tail].phys;
  a.page = phys_[a.phys].page;
  slots_[a.slot].phys = a.phys;
  ++phys_[a.phys].mappings;
  ++phys_[a.phys].dropping;
  set_kind(a.slot, 1, SlotKind::dropping, 0);
  retargeting_.push_back(a.slot);
  return a;
}

void PagePool::tail_alias_calls(TailAlias& a) const { a.status = map_accessible(address(a.slot), a.page, a.mapped); }

bool PagePool::finish_tail_alias(TailAlias& a) {
  if (a.status.ok()) return true;  // prepared: a dropping slot being retargeted until used or discarded
  unlist_retargeting(a.slot);
  if (a.mapped) {  // mapped without access, and the unmap failed too: the keeper unmaps it
    queue_drop(a.slot);
    return false;
  }
  book_dropped(a.slot);  // the page loses the booked mapping
  unmapped_.insert(a.slot, 1);
  return false;
}

bool PagePool::use_tail_alias(std::uint32_t slot, std::uint32_t tail, SlotKind kind, std::uint32_t owner) {
  if (slots_[slot].phys != slots_[tail].phys) return false;  // the tail's page changed meanwhile
  unlist_retargeting(slot);
  --phys_[slots_[slot].phys].dropping;
  set_kind(slot, 1, kind, owner);
  return true;
}

void PagePool::discard_tail_alias(std::uint32_t slot) {
  unlist_retargeting(slot);
  queue_drop(slot);
}

}  // namespace valet::detail
