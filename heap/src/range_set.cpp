#include "range_set.h"

#include <algorithm>
#include <bit>

#include "invariants.h"

namespace valet::detail {

namespace {

constexpr std::uint64_t kAll = ~std::uint64_t{0};

// The bits [lo, hi] of a word (0 <= lo <= hi < 64).
std::uint64_t bits_between(unsigned lo, unsigned hi) {
  const std::uint64_t upto_hi = hi == 63 ? kAll : (std::uint64_t{1} << (hi + 1)) - 1;
  return upto_hi & (kAll << lo);
}

// Calls f(w, mask) for each word w of the bitmap that [start, start+length) touches, with the
// range's bits in it, until f returns false; false if one did.
template <class F>
bool for_each_word(std::uint32_t start, std::uint32_t length, F&& f) {
  const std::uint64_t end = std::uint64_t(start) + length;
  for (std::uint64_t s = start; s < end;) {
    const std::size_t w = s / 64;
    const auto lo = unsigned(s % 64);
    const auto hi = unsigned(std::min<std::uint64_t>(end - std::uint64_t(w) * 64, 64) - 1);
    if (!f(w, bits_between(lo, hi))) return false;
    s = std::uint64_t(w) * 64 + hi + 1;
  }
  return true;
}

}  // namespace

void RangeSet::reserve_slots(std::uint32_t end) {
  if (end <= slots_) return;
  const std::uint32_t grown = std::max<std::uint32_t>(end, std::min<std::uint64_t>(2 * std::uint64_t(slots_), ~std::uint32_t{0}));
  slots_ = grown;
  bits_.resize((std::uint64_t(grown) + 63) / 64, 0);
  full_.resize((bits_.size() + 63) / 64, 0);
  any_.resize(full_.size(), 0);
  edge_.resize(grown, 0);
}

std::uint32_t RangeSet::next_member(std::uint32_t from) const {
  if (from >= slots_) return kNone;
  std::size_t w = from / 64;
  std::uint64_t word = bits_[w] & (kAll << (from % 64));
  if (word == 0) {
    // The next word with a member, through the summary: 64 words a step.
    if (++w == bits_.size()) return kNone;
    std::size_t a = w / 64;
    std::uint64_t any = any_[a] & (kAll << (w % 64));
    while (any == 0) {
      if (++a == any_.size()) return kNone;
      any = any_[a];
    }
    w = a * 64 + unsigned(std::countr_zero(any));
    word = bits_[w];
  }
  const auto s = std::uint32_t(w * 64 + unsigned(std::countr_zero(word)));
  return s < slots_ ? s : kNone;
}

RangeSet::Range RangeSet::piece_within(std::uint32_t slot, std::uint32_t lo, std::uint32_t hi) const {
  const std::uint32_t first = std::max(range_start(slot), lo);
  // Up from `slot` to the first slot not in the set (or hi), word by word.
  std::size_t w = slot / 64;
  std::uint64_t outside = ~bits_[w] & (kAll << (slot % 64));
  while (outside == 0 && (w + 1) * 64 < hi) outside = ++w < bits_.size() ? ~bits_[w] : kAll;
  const std::uint64_t end = outside == 0 ? hi : std::uint64_t(w) * 64 + unsigned(std::countr_zero(outside));
  const auto last_end = std::uint32_t(std::min<std::uint64_t>(end, hi));
  return Range{first, last_end - first};
}

std::uint32_t RangeSet::range_start(std::uint32_t s) const {
  std::size_t w = s / 64;
  // The slots not in the set at or below s in its word; s itself is in it.
  std::uint64_t outside = ~bits_[w] & bits_between(0, s % 64);
  if (outside == 0) {
    // The nearest word below that is not full, through the summary: 64 words a step.
    if (w == 0) return 0;
    std::size_t f = (w - 1) / 64;
    std::uint64_t not_full = ~full_[f] & bits_between(0, unsigned((w - 1) % 64));
    while (not_full == 0) {
      if (f == 0) return 0;  // every slot below s is in the set
      not_full = ~full_[--f];
    }
    w = f * 64 + 63 - unsigned(std::countl_zero(not_full));
    outside = ~bits_[w];
  }
  return std::uint32_t(w * 64 + 64 - unsigned(std::countl_zero(outside)));
}

std::uint32_t RangeSet::count_within(std::uint32_t lo, std::uint32_t hi) const {
  hi = std::min(hi, slots_);
  if (lo >= hi) return 0;
  std::uint32_t n = 0;
  for_each_word(lo, hi - lo, [&](std::size_t w, std::uint64_t mask) {
    n += unsigned(std::popcount(bits_[w] & mask));
    return true;
  });
  return n;
}

bool RangeSet::all_members(std::uint32_t start, std::uint32_t length) const {
  if (std::uint64_t(start) + length > slots_) return length == 0;
  return for_each_word(start, length, [&](std::size_t w, std::uint64_t mask) { return (bits_[w] & mask) == mask; });
}

void RangeSet::set_members(std::uint32_t start, std::uint32_t length, bool in) {
  for_each_word(start, length, [&](std::size_t w, std::uint64_t mask) {
    bits_[w] = in ? bits_[w] | mask : bits_[w] & ~mask;
    const std::uint64_t full_bit = std::uint64_t{1} << (w % 64);
    full_[w / 64] = bits_[w] == kAll ? full_[w / 64] | full_bit : full_[w / 64] & ~full_bit;
    any_[w / 64] = bits_[w] != 0 ? any_[w / 64] | full_bit : any_[w / 64] & ~full_bit;
    return true;
  });
}

void RangeSet::add_range(std::uint32_t start, std::uint32_t length) {
  const std::uint32_t last = start + length - 1;
  edge_[start] = last;
  edge_[last] = start;
  ++ranges_;
  if (!by_length_wanted_) return;
  const std::uint64_t k = key(start, length);
  by_length_.insert(std::lower_bound(by_length_.begin(), by_length_.end(), k), k);
}

void RangeSet::drop_range(std::uint32_t start, std::uint32_t length) {
  --ranges_;
  if (!by_length_wanted_) return;
  const auto it = std::lower_bound(by_length_.begin(), by_length_.end(), key(start, length));
  VALET_ASSERT(it != by_length_.end() && *it == key(start, length));
  by_length_.erase(it);
}

void RangeSet::insert(std::uint32_t start, std::uint32_t length) {
  if (length == 0) return;
  const std::uint32_t end = start + length;
  reserve_slots(end + 1);  // the slot after it is read for a neighbour
  total_ += length;
  // A neighbour is a range that ends just before or begins just after: its edge is that slot.
  std::uint32_t first = start, last = end - 1;
  if (start > 0 && member(start - 1)) {
    first = edge_[start - 1];
    drop_range(first, start - first);
  }
  if (member(end)) {
    last = edge_[end];
    drop_range(end, last - end + 1);
  }
  set_members(start, length, true);
  add_range(first, last - first + 1);
}

void RangeSet::carve(std::uint32_t r_start, std::uint32_t r_length, std::uint32_t start, std::uint32_t length) {
  const std::uint32_t end = start + length, r_end = r_start + r_length;
  drop_range(r_start, r_length);
  set_members(start, length, false);
  total_ -= length;
  if (r_start < start) add_range(r_start, start - r_start);
  if (end < r_end) add_range(end, r_end - end);
}

std::optional<std::uint64_t> RangeSet::best_fit_key(std::uint32_t length) const {
  VALET_ASSERT(by_length_wanted_);
  if (length == 0) return std::nullopt;
  const auto it = std::lower_bound(by_length_.begin(), by_length_.end(), key(0, length));
  if (it == by_length_.end()) return std::nullopt;
  return *it;
}

std::optional<std::uint32_t> RangeSet::take_best_fit(std::uint32_t length) {
  const auto k = best_fit_key(length);
  if (!k) return std::nullopt;
  const Range r = range_of(*k);
  carve(r.start, r.length, r.start, length);
  return r.start;
}

std::optional<RangeSet::Range> RangeSet::best_fit(std::uint32_t length) const {
  const auto k = best_fit_key(length);
  if (!k) return std::nullopt;
  return range_of(*k);
}

bool RangeSet::take_exact(std::uint32_t start, std::uint32_t length) {
  if (length == 0) return member(start) || (start > 0 && member(start - 1));
  if (!all_members(start, length)) return false;
  const std::uint32_t first = range_start(start);
  carve(first, edge_[first] - first + 1, start, length);
  return true;
}

std::optional<RangeSet::Range> RangeSet::find(std::uint32_t slot) const {
  if (!member(slot)) return std::nullopt;
  const std::uint32_t first = range_start(slot);
  return Range{first, edge_[first] - first + 1};
}

std::optional<RangeSet::Range> RangeSet::take_smallest() {
  VALET_ASSERT(by_length_wanted_);
  if (by_length_.empty()) return std::nullopt;
  const Range r = range_of(by_length_.front());
  carve(r.start, r.length, r.start, r.length);
  return r;
}

std::uint32_t RangeSet::largest() const {
  VALET_ASSERT(by_length_wanted_);
  return by_length_.empty() ? 0 : range_of(by_length_.back()).length;
}

std::optional<RangeSet::Range> RangeSet::largest_range() const {
  VALET_ASSERT(by_length_wanted_);
  if (by_length_.empty()) return std::nullopt;
  return range_of(by_length_.back());
}

}  // namespace valet::detail
