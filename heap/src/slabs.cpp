#include "slabs.h"

#include <algorithm>

#include "invariants.h"

namespace valet::detail {

Slabs::Slabs() = default;

Slabs::~Slabs() {
  hosts_.clear();
  for (auto& cls : buckets_)
    for (auto& list : cls) list.clear();
}

std::uint8_t Slabs::bucket_of(const SlabPage& p) {
  if (p.used == 0) return 0;
  if (p.used == p.capacity) return kBuckets - 1;
  // Partly used pages spread over buckets 1 .. kBuckets-2 by occupancy.
  return std::uint8_t(1 + (std::uint64_t(p.used) * (kBuckets - 2)) / p.capacity);
}

void Slabs::rebucket(SlabPage* p) {
  if (!p->evacuating) {
    const std::uint8_t b = bucket_of(*p);
    if (b != p->bucket || !p->hook.is_linked()) {
      if (p->hook.is_linked()) buckets_[p->cls][p->bucket].erase(buckets_[p->cls][p->bucket].iterator_to(*p));
      p->bucket = b;
      buckets_[p->cls][b].push_back(*p);
    }
  }
  index_host(p);  // its lowest taken slot may have moved within the bucket
}

std::uint32_t Slabs::low_free_bytes(const SlabPage& p) {
  if (p.on_tail() || !p.aliases.empty() || p.used == 0) return 0;
  return std::uint32_t(std::size_t(p.lowest) * class_size(p.cls));
}

std::uint64_t Slabs::host_room(const SlabPage& p) {
  if (!p.live || p.evacuating || !p.hook.is_linked() || p.on_tail() || p.used == p.capacity) return 0;
  return p.used == 0 ? std::uint64_t(p.capacity) * class_size(p.cls) : low_free_bytes(p);
}

void Slabs::index_host(SlabPage* p) {
  const std::uint64_t room = host_room(*p);
  if (p->host_hook.is_linked()) {
    if (room == p->host_room) return;
    hosts_.erase(hosts_.iterator_to(*p));
  }
  p->host_room = room;
  if (room > 0) hosts_.insert(*p);
}

SlabPage* Slabs::densest_with_room(std::uint32_t cls) {
  for (std::size_t b = kBuckets - 1; b-- > 0;) {
    auto& list = buckets_[cls][b];
    if (!list.empty()) return &list.front();
  }
  return nullptr;
}

SlabPage* Slabs::create(std::uint32_t cls, std::uint32_t slot) {
  std::uint32_t id;
  if (!free_ids_.empty()) {
    id = free_ids_.back();
    free_ids_.pop_back();
  } else {
    id = std::uint32_t(pages_.size());
    pages_.push_back(std::make_unique<SlabPage>());
  }
  SlabPage* p = pages_[id].get();
  p->id = id;
  p->slot = slot;
  p->cls = cls;
  p->capacity = class_slots(cls);
  p->used = 0;
  p->live = true;
  p->evacuating = false;
  p->descending = (id & 1u) != 0;
  p->aliases.clear();
  p->tail_slot = kNoTail;
  p->blocked = 0;
  p->bitmap.assign((p->capacity + 63) / 64, 0);
  // Bits past the capacity read as taken, so the search for a free slot never reaches them.
  if (p->capacity % 64) p->bitmap.back() = ~0ull << (p->capacity % 64);
  p->owners.assign(p->capacity, kNoOwner);
  p->hint = p->descending ? std::uint32_t(p->bitmap.size() - 1) : 0;
  p->lowest = p->capacity;
  ++live_pages_;
  rebucket(p);
  return p;
}

void Slabs::detach(SlabPage* p) {
  if (p->hook.is_linked()) buckets_[p->cls][p->bucket].erase(buckets_[p->cls][p->bucket].iterator_to(*p));
  p->evacuating = true;
  index_host(p);
}

void Slabs::destroy(SlabPage* p) {
  VALET_ASSERT(p->live);
  detach(p);
  p->evacuating = false;
  p->live = false;
  p->bitmap.clear();
  p->bitmap.shrink_to_fit();
  p->owners.clear();
  p->owners.shrink_to_fit();
  p->aliases.clear();
  free_ids_.push_back(p->id);
  --live_pages_;
}

std::uint32_t Slabs::lowest_taken(const SlabPage& p, std::uint32_t from) {
  // Bits past the capacity read as taken: a page with none below them gives its capacity.
  std::uint32_t w = from >> 6;
  if (w >= p.bitmap.size()) return p.capacity;
  std::uint64_t bits = p.bitmap[w] & (~0ull << (from & 63));
  while (bits == 0) {
    if (++w == p.bitmap.size()) return p.capacity;
    bits = p.bitmap[w];
  }
  return std::min(p.capacity, w * 64 + std::uint32_t(__builtin_ctzll(bits)));
}

std::uint32_t Slabs::take_slot(SlabPage* p, std::uint32_t owner) {
  // A free slot exists, so either scan stops inside the bitmap.
  VALET_ASSERT(p->used < p->capacity);
  std::uint32_t w = p->hint, i;
  if (p->descending) {
    while (~p->bitmap[w] == 0) --w;
    i = w * 64 + 63u - std::uint32_t(__builtin_clzll(~p->bitmap[w]));
  } else {
    while (~p->bitmap[w] == 0) ++w;
    i = w * 64 + std::uint32_t(__builtin_ctzll(~p->bitmap[w]));
  }
  p->hint = w;
  take_slot_at(p, i, owner);
  return i;
}

void Slabs::take_slot_at(SlabPage* p, std::uint32_t i, std::uint32_t owner) {
  VALET_ASSERT(i < p->capacity && !p->test(i));
  p->bitmap[i >> 6] |= 1ull << (i & 63);
  p->owners[i] = owner;
  ++p->used;
  p->lowest = std::min(p->lowest, i);
  rebucket(p);
}

void Slabs::fold(SlabPage* dst, SlabPage* src) {
  VALET_ASSERT(dst != src && dst->cls == src->cls);
  VALET_EXPENSIVE_ASSERT(disjoint(*dst, *src));
  for (std::uint32_t i = 0; i < src->capacity; ++i)
    if (src->test(i)) take_slot_at(dst, i, src->owners[i]);
  dst->fixed += src->fixed;
  src->fixed = 0;
  destroy(src);
  attach(dst);
  VALET_EXPENSIVE_ASSERT(validate_page(*dst).ok());
}

void Slabs::free_slot(SlabPage* p, std::uint32_t i) {
  VALET_ASSERT(i < p->capacity && p->test(i));
  p->bitmap[i >> 6] &= ~(1ull << (i & 63));
  p->owners[i] = kNoOwner;
  --p->used;
  if (i == p->lowest) p->lowest = lowest_taken(*p, i + 1);
  if (p->descending ? (i >> 6) > p->hint : (i >> 6) < p->hint) p->hint = i >> 6;
  rebucket(p);
}

namespace {

// Sets or clears bits [0, n) of a page's bitmap, a word at a time.
void set_low_bits(std::vector<std::uint64_t>& bitmap, std::uint32_t n, bool taken) {
  for (std::uint32_t w = 0; w * 64 < n; ++w) {
    const std::uint32_t bits = std::min<std::uint32_t>(64, n - w * 64);
    const std::uint64_t mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
    bitmap[w] = taken ? bitmap[w] | mask : bitmap[w] & ~mask;
  }
}

}  // namespace

// Both leave the page as take_slot_at / free_slot slot by slot would (its bucket moves one way
// only, as `used` does, so one rebucket puts it where the last of theirs would), in one pass.
void Slabs::block_tail(SlabPage* p, std::uint32_t tail_slot, std::uint32_t n) {
  VALET_ASSERT(!p->on_tail() && n < p->capacity);
  VALET_ASSERT(n == 0 || lowest_taken(*p, 0) >= n);  // the slots are free
  set_low_bits(p->bitmap, n, true);  // their owners are kNoOwner already (free slots)
  p->used += n;
  if (n > 0) p->lowest = 0;
  p->tail_slot = tail_slot;
  p->blocked = n;
  rebucket(p);
}

void Slabs::unblock_tail(SlabPage* p) {
  const std::uint32_t n = p->blocked;
  set_low_bits(p->bitmap, n, false);
  p->used -= n;
  if (n > 0) {
    p->lowest = lowest_taken(*p, n);
    // As free_slot keeps it: no free slot below word `hint` (ascending), above it (descending).
    p->hint = p->descending ? std::max(p->hint, (n - 1) >> 6) : 0;
  }
  p->tail_slot = kNoTail;
  p->blocked = 0;
  rebucket(p);
}

bool disjoint(const SlabPage& a, const SlabPage& b) {
  const std::size_t words = a.bitmap.size();
  for (std::size_t w = 0; w + 1 < words; ++w)
    if (a.bitmap[w] & b.bitmap[w]) return false;
  std::uint64_t last = a.bitmap[words - 1] & b.bitmap[words - 1];
  if (a.capacity % 64) last &= ~(~0ull << (a.capacity % 64));
  return last == 0;
}

std::size_t Slabs::pages_of(std::uint32_t cls) const {
  std::size_t n = 0;
  for (const auto& list : buckets_[cls]) n += list.size();
  return n;
}

}  // namespace valet::detail
