#include "range_set.h"

#include <algorithm>
#include <bit>

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

RangeSet::~RangeSet() {
  by_size_.clear_and_dispose([](Node* n) { delete n; });
  for (Node* n : spare_) delete n;
}

RangeSet::Node* RangeSet::new_node(std::uint32_t start, std::uint32_t length) {
  Node* n;
  if (spare_.empty()) {
    n = new Node;
  } else {
    n = spare_.back();
    spare_.pop_back();
  }
  n->start = start;
  n->length = length;
  return n;
}

void RangeSet::delete_node(Node* n) {
  if (spare_.size() < 64)
    spare_.push_back(n);
  else
    delete n;
}

void RangeSet::reserve_slots(std::uint32_t end) {
  if (end <= slots_) return;
  const std::uint32_t grown = std::max<std::uint32_t>(end, std::min<std::uint64_t>(2 * std::uint64_t(slots_), ~std::uint32_t{0}));
  slots_ = grown;
  bits_.resize((std::uint64_t(grown) + 63) / 64, 0);
  full_.resize((bits_.size() + 63) / 64, 0);
  edge_.resize(grown, nullptr);
}

std::uint32_t RangeSet::next_member(std::uint32_t from) const {
  if (from >= slots_) return kNone;
  std::size_t w = from / 64;
  std::uint64_t word = bits_[w] & (kAll << (from % 64));
  while (word == 0) {
    if (++w == bits_.size()) return kNone;
    word = bits_[w];
  }
  const auto s = std::uint32_t(w * 64 + unsigned(std::countr_zero(word)));
  return s < slots_ ? s : kNone;
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

bool RangeSet::all_members(std::uint32_t start, std::uint32_t length) const {
  if (std::uint64_t(start) + length > slots_) return length == 0;
  return for_each_word(start, length, [&](std::size_t w, std::uint64_t mask) { return (bits_[w] & mask) == mask; });
}

void RangeSet::set_members(std::uint32_t start, std::uint32_t length, bool in) {
  for_each_word(start, length, [&](std::size_t w, std::uint64_t mask) {
    bits_[w] = in ? bits_[w] | mask : bits_[w] & ~mask;
    const std::uint64_t full_bit = std::uint64_t{1} << (w % 64);
    full_[w / 64] = bits_[w] == kAll ? full_[w / 64] | full_bit : full_[w / 64] & ~full_bit;
    return true;
  });
}

void RangeSet::insert(std::uint32_t start, std::uint32_t length) {
  if (length == 0) return;
  const std::uint32_t end = start + length;
  reserve_slots(end + 1);  // the slot after it is read for a neighbour
  total_ += length;
  // A neighbour is a range that ends just before or begins just after: its edge is that slot.
  Node* prev = start > 0 && member(start - 1) ? edge_[start - 1] : nullptr;
  Node* next = member(end) ? edge_[end] : nullptr;
  set_members(start, length, true);
  if (prev && next) {
    by_size_.erase(by_size_.iterator_to(*prev));
    by_size_.erase(by_size_.iterator_to(*next));
    prev->length += length + next->length;
    delete_node(next);
    record_edges(prev);
    by_size_.insert(*prev);
  } else if (prev) {
    by_size_.erase(by_size_.iterator_to(*prev));
    prev->length += length;
    record_edges(prev);
    by_size_.insert(*prev);
  } else if (next) {
    by_size_.erase(by_size_.iterator_to(*next));
    next->start = start;
    next->length += length;
    record_edges(next);
    by_size_.insert(*next);
  } else {
    Node* n = new_node(start, length);
    record_edges(n);
    by_size_.insert(*n);
  }
}

void RangeSet::carve(Node* n, std::uint32_t start, std::uint32_t length) {
  const std::uint32_t end = start + length, n_end = n->start + n->length;
  by_size_.erase(by_size_.iterator_to(*n));
  set_members(start, length, false);
  total_ -= length;
  if (n->start == start && n_end == end) {
    delete_node(n);
    return;
  }
  if (n->start == start) {
    n->start = end;
    n->length = n_end - end;
  } else if (n_end == end) {
    n->length = start - n->start;
  } else {
    Node* tail = new_node(end, n_end - end);
    record_edges(tail);
    by_size_.insert(*tail);
    n->length = start - n->start;
  }
  record_edges(n);
  by_size_.insert(*n);
}

RangeSet::Node* RangeSet::best_fit_node(std::uint32_t length) const {
  if (length == 0) return nullptr;
  Node key;
  key.length = length;
  key.start = 0;
  auto it = by_size_.lower_bound(key);
  return it == by_size_.end() ? nullptr : const_cast<Node*>(&*it);
}

std::optional<std::uint32_t> RangeSet::take_best_fit(std::uint32_t length) {
  Node* n = best_fit_node(length);
  if (!n) return std::nullopt;
  const std::uint32_t start = n->start;
  carve(n, start, length);
  return start;
}

std::optional<RangeSet::Range> RangeSet::best_fit(std::uint32_t length) const {
  const Node* n = best_fit_node(length);
  if (!n) return std::nullopt;
  return Range{n->start, n->length};
}

bool RangeSet::take_exact(std::uint32_t start, std::uint32_t length) {
  if (length == 0) return member(start) || (start > 0 && member(start - 1));
  if (!all_members(start, length)) return false;
  carve(edge_[range_start(start)], start, length);
  return true;
}

std::optional<RangeSet::Range> RangeSet::find(std::uint32_t slot) const {
  if (!member(slot)) return std::nullopt;
  const Node* n = edge_[range_start(slot)];
  return Range{n->start, n->length};
}

std::optional<RangeSet::Range> RangeSet::take_smallest() {
  if (by_size_.empty()) return std::nullopt;
  Node* n = &*by_size_.begin();
  Range r{n->start, n->length};
  carve(n, r.start, r.length);
  return r;
}

std::uint32_t RangeSet::largest() const { return by_size_.empty() ? 0 : by_size_.rbegin()->length; }

std::optional<RangeSet::Range> RangeSet::largest_range() const {
  if (by_size_.empty()) return std::nullopt;
  const Node& n = *by_size_.rbegin();
  return Range{n.start, n.length};
}

}  // namespace valet::detail
