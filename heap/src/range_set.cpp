#include "range_set.h"

namespace valet::detail {

RangeSet::~RangeSet() {
  by_size_.clear();
  by_start_.clear_and_dispose([](Node* n) { delete n; });
}

void RangeSet::link(Node* n) {
  by_start_.insert(*n);
  by_size_.insert(*n);
}

void RangeSet::unlink(Node* n) {
  by_start_.erase(by_start_.iterator_to(*n));
  by_size_.erase(by_size_.iterator_to(*n));
}

void RangeSet::insert(std::uint32_t start, std::uint32_t length) {
  if (length == 0) return;
  total_ += length;
  Node key;
  key.start = start;
  auto next = by_start_.lower_bound(key);
  Node* prev_node = nullptr;
  if (next != by_start_.begin()) {
    auto prev = std::prev(next);
    if (prev->start + prev->length == start) prev_node = &*prev;
  }
  Node* next_node = (next != by_start_.end() && next->start == start + length) ? &*next : nullptr;
  if (prev_node && next_node) {
    unlink(prev_node);
    unlink(next_node);
    prev_node->length += length + next_node->length;
    delete next_node;
    link(prev_node);
  } else if (prev_node) {
    unlink(prev_node);
    prev_node->length += length;
    link(prev_node);
  } else if (next_node) {
    unlink(next_node);
    next_node->start = start;
    next_node->length += length;
    link(next_node);
  } else {
    auto* n = new Node;
    n->start = start;
    n->length = length;
    link(n);
  }
}

void RangeSet::carve(Node* n, std::uint32_t start, std::uint32_t length) {
  const std::uint32_t end = start + length, n_end = n->start + n->length;
  unlink(n);
  total_ -= length;
  if (n->start == start && n_end == end) {
    delete n;
    return;
  }
  if (n->start == start) {
    n->start = end;
    n->length = n_end - end;
    link(n);
  } else if (n_end == end) {
    n->length = start - n->start;
    link(n);
  } else {
    auto* tail = new Node;
    tail->start = end;
    tail->length = n_end - end;
    n->length = start - n->start;
    link(n);
    link(tail);
  }
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
  Node key;
  key.start = start;
  auto it = by_start_.upper_bound(key);
  if (it == by_start_.begin()) return false;
  --it;
  if (std::uint64_t(it->start) + it->length < std::uint64_t(start) + length) return false;
  carve(&*it, start, length);
  return true;
}

std::optional<RangeSet::Range> RangeSet::find(std::uint32_t slot) const {
  Node key;
  key.start = slot;
  auto it = by_start_.upper_bound(key);
  if (it == by_start_.begin()) return std::nullopt;
  --it;
  if (slot >= it->start + it->length) return std::nullopt;
  return Range{it->start, it->length};
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
