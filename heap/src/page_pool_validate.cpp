// PagePool::validate: the pool's own invariants (page_pool.h), checked from scratch.
#include <mutex>
#include <string>

#include "page_pool.h"

namespace valet::detail {

namespace {
Error bad(const std::string& what) { return make_error(Errc::internal, "page pool: " + what); }
std::string s(std::uint64_t v) { return std::to_string(v); }
}  // namespace

// Every slot is in exactly one state, and the range sets list exactly the slots of theirs:
// unmapped slots map nothing and are in `unmapped_`; reserve slots map a live page and are in
// `reserve_` or (being released without the lock) in `releasing_`; slab, large and dropping
// slots map a live page and are in no set, and the dropping ones are exactly the queued drops and
// those in flight. Counts each page's mappings into `maps`.
Status PagePool::validate_slots(std::vector<std::uint32_t>& maps, std::vector<std::uint32_t>& dropping) const {
  std::uint64_t reserve_slots = 0, chunk_reserve_slots = 0, unmapped_slots = 0, releasing_slots = 0, provisioning_slots = 0;
  std::size_t kinds[kSlotKinds] = {};
  for (std::uint32_t i = 0; i < slots_.size(); ++i) {
    const auto& r = slots_[i];
    ++kinds[std::size_t(r.kind)];
    if (r.kind == SlotKind::unmapped) {
      if (r.phys != kNoPhys) return bad("unmapped slot " + s(i) + " has a page");
      if (provisioning_.contains(i)) {  // a provision batch maps it without the lock
        if (unmapped_.contains(i)) return bad("unmapped slot " + s(i) + " both free and being provisioned");
        ++provisioning_slots;
        continue;
      }
      if (!unmapped_.contains(i)) return bad("unmapped slot " + s(i) + " missing from the free set");
      if (reserve_.contains(i) || chunk_reserve_.contains(i) || releasing_.contains(i))
        return bad("unmapped slot " + s(i) + " listed in the reserve");
      ++unmapped_slots;
      continue;
    }
    if (r.phys == kNoPhys || r.phys >= phys_.size() || !phys_[r.phys].in_use)
      return bad("slot " + s(i) + " in use without a live page");
    if (r.kind == SlotKind::dropping && provisioning_.contains(i)) ++provisioning_slots;  // a claimed drop
    ++maps[r.phys];
    if (r.kind == SlotKind::dropping) ++dropping[r.phys];
    if (r.kind == SlotKind::reserve) {
      if (releasing_.contains(i)) {  // being released without the lock
        if (reserve_.contains(i)) return bad("reserve slot " + s(i) + " both in the reserve and being released");
        ++releasing_slots;
        continue;
      }
      if (phys_[r.phys].chunk()) {
        if (!chunk_reserve_.contains(i)) return bad("chunk reserve slot " + s(i) + " missing from the chunk reserve");
        ++chunk_reserve_slots;
        continue;
      }
      if (!reserve_.contains(i)) return bad("reserve slot " + s(i) + " missing from the reserve set");
      ++reserve_slots;
    } else if (reserve_.contains(i) || chunk_reserve_.contains(i) || unmapped_.contains(i) || releasing_.contains(i)) {
      return bad("used slot " + s(i) + " listed as free");
    }
  }
  if (reserve_slots != reserve_.total()) return bad("reserve set and slot table disagree");
  if (chunk_reserve_slots != chunk_reserve_.total()) return bad("chunk reserve set and slot table disagree");
  if (unmapped_slots != unmapped_.total()) return bad("unmapped set and slot table disagree");
  if (releasing_slots != releasing_.total()) return bad("releasing set and slot table disagree");
  if (provisioning_slots != provisioning_.total()) return bad("provisioning set and slot table disagree");
  if (kinds[std::size_t(SlotKind::dropping)] != drops_.size() + drops_in_flight_.size() + retargeting_.size())
    return bad(s(kinds[std::size_t(SlotKind::dropping)]) + " dropping slots, " + s(drops_.size()) + " queued, " +
               s(drops_in_flight_.size()) + " in flight and " + s(retargeting_.size()) + " being retargeted");
  if (dropped_.total() != drops_.size()) return bad("the queued drops' set and list disagree");
  for (std::uint32_t d : drops_)
    if (!dropped_.contains(d)) return bad("queued drop " + s(d) + " missing from its set");
  for (const auto* list : {&drops_, &drops_in_flight_, &retargeting_})
    for (std::uint32_t d : *list)
      if (d >= slots_.size() || slots_[d].kind != SlotKind::dropping) return bad("a drop names a slot that is not dropping");
  for (std::size_t k = 0; k < kSlotKinds; ++k)
    if (kinds[k] != kind_counts_[k])
      return bad("slot kind " + s(k) + " counted " + s(kind_counts_[k]) + " times, the slot table has " + s(kinds[k]));
  return {};
}

// Page records: mapping counts as counted from the slots, idle pages exactly the live ones mapped
// nowhere, unused records really unused, and the created count.
Status PagePool::validate_pages(const std::vector<std::uint32_t>& maps, const std::vector<std::uint32_t>& dropping) const {
  std::size_t in_use = 0, unmapped_live = 0;
  for (std::uint32_t p = 0; p < phys_.size(); ++p) {
    if (!phys_[p].in_use) continue;
    in_use += phys_[p].pages;
    if (phys_[p].mappings != maps[p])
      return bad("page " + s(p) + " mapping count is wrong (" + s(phys_[p].mappings) + ", slots map it " + s(maps[p]) + " times)");
    if (phys_[p].dropping != dropping[p])
      return bad("page " + s(p) + " dropping count is wrong (" + s(phys_[p].dropping) + ", dropping slots map it " + s(dropping[p]) + " times)");
    unmapped_live += phys_[p].mappings == 0 && !phys_[p].chunk();  // idle chunks: validate_chunks
  }
  std::vector<bool> idle(phys_.size(), false);
  for (std::uint32_t p : idle_) {
    if (p >= phys_.size() || !phys_[p].in_use || phys_[p].mappings != 0 || phys_[p].chunk())
      return bad("idle page is mapped or dead, or is a chunk");
    if (idle[p]) return bad("idle page " + s(p) + " listed twice");
    idle[p] = true;
  }
  // Idle pages a batch took (in flight without the lock) are mapped nowhere and listed nowhere.
  if (unmapped_live != idle_.size() + in_flight_idle_) return bad("a created page is mapped nowhere and not idle (leak)");
  for (std::uint32_t p : free_phys_)
    if (p >= phys_.size() || phys_[p].in_use) return bad("unused page record " + s(p) + " is in use");
  // Pages a provision batch is creating count as created before they have records.
  // Free chunks a place batch is releasing count as released before their calls.
  if (in_use + fresh_in_flight_ != created_ + freed_in_flight_)
    return bad("created page count is wrong (" + s(created_) + ", " + s(in_use) + " pages live, " +
               s(fresh_in_flight_) + " being created)");
  if (created_ + lent_ > capacity_pages_) return bad("more pages than the capacity");
  if (peak_created_ < created_ + lent_) return bad("the peak of created pages (" + s(peak_created_) + ") is below the count");
  return {};
}

Status PagePool::validate() const {
  std::vector<std::uint32_t> maps(phys_.size(), 0), dropping(phys_.size(), 0);
  VALET_TRY(validate_slots(maps, dropping));
  VALET_TRY(validate_pages(maps, dropping));
  VALET_TRY(validate_chunks());
  std::lock_guard lock(holds_mu_);
  for (const auto& [slot, count] : holds_)
    if (slot >= slots_.size() || slots_[slot].phys == kNoPhys ||
        (slots_[slot].kind != SlotKind::slab && slots_[slot].kind != SlotKind::large &&
         slots_[slot].kind != SlotKind::dropping))  // a dropping slot stays mapped while held
      return bad("slot " + s(slot) + " is held by queued work but maps no page in use");
  return {};
}

}  // namespace valet::detail
