// Slabs::validate: the slab pages' own invariants (slabs.h), checked from scratch.
#include <algorithm>
#include <bit>
#include <string>
#include <utility>
#include <vector>

#include "slabs.h"

namespace valet::detail {

namespace {

Error bad(const std::string& what) { return make_error(Errc::internal, "slabs: " + what); }

Error bad_page(const SlabPage& p, const std::string& what) {
  return bad("page " + std::to_string(p.id) + " (slot " + std::to_string(p.slot) + "): " + what);
}

std::string s(std::uint64_t v) { return std::to_string(v); }

// Sizes and class: everything the bit-level checks below index by.
Status check_shape(const SlabPage& p) {
  if (p.cls >= kClassCount) return bad_page(p, "class " + s(p.cls) + " out of range");
  if (p.capacity != class_slots(p.cls))
    return bad_page(p, "capacity " + s(p.capacity) + ", but class " + s(p.cls) + " has " + s(class_slots(p.cls)) + " slots");
  if (p.bitmap.size() != (p.capacity + 63) / 64 || p.owners.size() != p.capacity)
    return bad_page(p, "bitmap or owner table sized for another capacity");
  if (p.used > p.capacity) return bad_page(p, "used count " + s(p.used) + " above the capacity");
  return {};
}

// Bitmap, count, padding, owners, blocked slots.
Status check_slots(const SlabPage& p) {
  const std::uint32_t tail_bits = p.capacity % 64;
  if (tail_bits && (p.bitmap.back() >> tail_bits) != (~0ull >> tail_bits))
    return bad_page(p, "bitmap padding bits past the capacity were cleared");
  std::uint64_t taken = 0;
  for (std::uint64_t w : p.bitmap) taken += std::uint64_t(std::popcount(w));
  if (tail_bits) taken -= 64 - tail_bits;
  if (taken != p.used) return bad_page(p, "used count " + s(p.used) + " disagrees with its bitmap (" + s(taken) + " taken)");
  for (std::uint32_t i = 0; i < p.capacity; ++i)
    if (!p.test(i) && p.owners[i] != kNoOwner)
      return bad_page(p, "free slot " + s(i) + " has owner " + s(p.owners[i]));
  if (p.lowest != Slabs::lowest_taken(p, 0))
    return bad_page(p, "lowest taken slot " + s(p.lowest) + " disagrees with its bitmap (" + s(Slabs::lowest_taken(p, 0)) + ")");
  if (!p.on_tail() && p.blocked != 0) return bad_page(p, "blocks " + s(p.blocked) + " slots without a tail");
  if (p.blocked >= p.capacity) return bad_page(p, "blocks " + s(p.blocked) + " slots, all of its " + s(p.capacity));
  for (std::uint32_t i = 0; i < p.blocked; ++i)
    if (!p.test(i) || p.owners[i] != kNoOwner) return bad_page(p, "blocked slot " + s(i) + " is free or owned");
  return {};
}

// The fill hint: an ascending page has no free slot in a word below `hint`, a descending one
// none above it (take_slot scans from the hint and must not skip a free slot).
Status check_hint(const SlabPage& p) {
  if (p.hint >= p.bitmap.size()) return bad_page(p, "fill hint " + s(p.hint) + " past the bitmap");
  const std::size_t from = p.descending ? p.hint + 1 : 0, to = p.descending ? p.bitmap.size() : p.hint;
  for (std::size_t w = from; w < to; ++w)
    if (~p.bitmap[w] != 0)
      return bad_page(p, "a free slot in word " + s(w) + " lies behind the fill hint " + s(p.hint) +
                             (p.descending ? " (descending)" : " (ascending)"));
  return {};
}

Status check_sharers(const SlabPage& p) {
  if (p.sharers() > kMaxSharers) return bad_page(p, "has " + s(p.sharers()) + " sharers, at most " + s(kMaxSharers));
  for (std::size_t k = 0; k < p.aliases.size(); ++k) {
    if (p.aliases[k].slot == p.slot) return bad_page(p, "its own slot is listed as an alias");
    for (std::size_t j = 0; j < k; ++j)
      if (p.aliases[j].slot == p.aliases[k].slot) return bad_page(p, "alias slot " + s(p.aliases[k].slot) + " listed twice");
  }
  return {};
}

}  // namespace

Status Slabs::validate_page(const SlabPage& p) {
  if (!p.live) return bad_page(p, "is not live");
  VALET_TRY(check_shape(p));
  VALET_TRY(check_slots(p));
  VALET_TRY(check_hint(p));
  VALET_TRY(check_sharers(p));
  if (p.evacuating) {
    if (p.hook.is_linked()) return bad_page(p, "is being evacuated but sits in a bucket");
  } else {
    if (!p.hook.is_linked()) return bad_page(p, "is in no bucket and not being evacuated");
    if (p.bucket != bucket_of(p))
      return bad_page(p, "sits in bucket " + s(p.bucket) + ", but its occupancy " + s(p.used) + "/" + s(p.capacity) +
                             " belongs in bucket " + s(bucket_of(p)));
  }
  return {};
}

Status Slabs::validate() const {
  // The page table: ids, liveness, free ids.
  std::size_t live = 0, linked_pages = 0;
  std::vector<bool> free_id(pages_.size(), false);
  for (std::uint32_t id : free_ids_) {
    if (id >= pages_.size()) return bad("free id " + s(id) + " is past the page table (" + s(pages_.size()) + ")");
    if (free_id[id]) return bad("free id " + s(id) + " is listed twice");
    free_id[id] = true;
    if (pages_[id]->live) return bad("free id " + s(id) + " names a live page");
  }
  std::vector<std::pair<std::uint32_t, std::uint64_t>> owned;  // owner -> (page id << 32 | slot)
  for (std::uint32_t id = 0; id < pages_.size(); ++id) {
    const SlabPage& p = *pages_[id];
    if (p.id != id) return bad("page table entry " + s(id) + " holds page " + s(p.id));
    if (!p.live) {
      if (!free_id[id]) return bad("dead page " + s(id) + " is not among the free ids");
      if (p.hook.is_linked()) return bad("dead page " + s(id) + " sits in a bucket");
      continue;
    }
    ++live;
    VALET_TRY(validate_page(p));
    linked_pages += p.hook.is_linked();
    for (std::uint32_t i = 0; i < p.capacity; ++i)
      if (p.owners[i] != kNoOwner) owned.emplace_back(p.owners[i], (std::uint64_t(id) << 32) | i);
  }
  if (live != live_pages_) return bad("live page count " + s(live_pages_) + ", but " + s(live) + " pages are live");
  // One object, one slot.
  std::sort(owned.begin(), owned.end());
  for (std::size_t k = 1; k < owned.size(); ++k)
    if (owned[k].first == owned[k - 1].first)
      return bad("object " + s(owned[k].first) + " owns slot " + s(owned[k - 1].second & 0xffffffffu) + " of page " +
                 s(owned[k - 1].second >> 32) + " and slot " + s(owned[k].second & 0xffffffffu) + " of page " +
                 s(owned[k].second >> 32));
  // Every listed page is in the list of its class and bucket; with the count, every bucketed
  // page is listed exactly where its fields say.
  std::size_t listed = 0;
  for (std::uint32_t cls = 0; cls < kClassCount; ++cls)
    for (std::size_t b = 0; b < kBuckets; ++b)
      for (const SlabPage& p : buckets_[cls][b]) {
        ++listed;
        if (p.id >= pages_.size() || pages_[p.id].get() != &p || !p.live)
          return bad("bucket " + s(b) + " of class " + s(cls) + " lists a page not in the page table");
        if (p.cls != cls || p.bucket != b)
          return bad("bucket " + s(b) + " of class " + s(cls) + " lists page " + s(p.id) + " of class " + s(p.cls) +
                     ", bucket " + s(p.bucket));
      }
  if (listed != linked_pages) return bad(s(listed) + " pages in the buckets, " + s(linked_pages) + " pages linked");
  // The hosts' index: every page listed that should be, under its current room, and no other.
  std::size_t hosts = 0;
  for (const auto& p : pages_) {
    const std::uint64_t room = host_room(*p);
    if (p->host_hook.is_linked() != (room > 0) || (room > 0 && p->host_room != room))
      return bad("page " + s(p->id) + " is listed among the tails' hosts with room " +
                 s(p->host_hook.is_linked() ? p->host_room : 0) + ", its room is " + s(room));
    hosts += room > 0;
  }
  if (hosts != hosts_.size()) return bad(s(hosts_.size()) + " tails' hosts listed, " + s(hosts) + " pages are hosts");
  return {};
}

}  // namespace valet::detail
