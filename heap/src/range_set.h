// A set of free ranges of page slots, coalesced: Boost.Intrusive trees keyed by start (to merge
// neighbours and find the range holding a slot) and by length (best fit in O(log n)).
// The heap keeps two: virtual slots with nothing mapped, and slots mapped to a reserve page.
#pragma once

#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <optional>

namespace valet::detail {

class RangeSet {
 public:
  struct Range {
    std::uint32_t start;
    std::uint32_t length;
  };

  RangeSet() = default;
  ~RangeSet();
  RangeSet(const RangeSet&) = delete;
  RangeSet& operator=(const RangeSet&) = delete;

  // Adds [start, start+length), merging with neighbours. Precondition: disjoint from the set.
  void insert(std::uint32_t start, std::uint32_t length);
  // Removes and returns the start of `length` slots taken from the smallest range that holds
  // them (from that range's start), or nullopt.
  std::optional<std::uint32_t> take_best_fit(std::uint32_t length);
  // The range take_best_fit(length) would carve from, left in the set.
  std::optional<Range> best_fit(std::uint32_t length) const;
  // Removes [start, start+length) if the set holds all of it; false (nothing changed) otherwise.
  bool take_exact(std::uint32_t start, std::uint32_t length);
  // The range holding `slot`, if any.
  std::optional<Range> find(std::uint32_t slot) const;
  // Removes and returns the smallest range (nullopt when empty).
  std::optional<Range> take_smallest();

  std::uint64_t total() const { return total_; }
  std::uint32_t largest() const;
  // The longest range (the lowest-starting of the longest), if any.
  std::optional<Range> largest_range() const;
  std::size_t range_count() const { return by_start_.size(); }
  bool empty() const { return by_start_.empty(); }

  // Calls f(range) for the ranges from the longest down, until f returns false.
  template <class F>
  void for_each_longest(F&& f) const {
    for (auto it = by_size_.rbegin(); it != by_size_.rend(); ++it)
      if (!f(Range{it->start, it->length})) return;
  }
  template <class F>
  void for_each(F&& f) const {
    for (const auto& n : by_start_) f(Range{n.start, n.length});
  }

 private:
  using StartHook = boost::intrusive::set_member_hook<>;
  using SizeHook = boost::intrusive::set_member_hook<>;
  struct Node {
    std::uint32_t start = 0;
    std::uint32_t length = 0;
    StartHook by_start;
    SizeHook by_size;
  };
  struct ByStart {
    bool operator()(const Node& a, const Node& b) const { return a.start < b.start; }
  };
  struct BySize {
    bool operator()(const Node& a, const Node& b) const {
      return a.length != b.length ? a.length < b.length : a.start < b.start;
    }
  };
  using StartSet = boost::intrusive::set<Node, boost::intrusive::member_hook<Node, StartHook, &Node::by_start>,
                                         boost::intrusive::compare<ByStart>>;
  using SizeSet = boost::intrusive::set<Node, boost::intrusive::member_hook<Node, SizeHook, &Node::by_size>,
                                        boost::intrusive::compare<BySize>>;

  void link(Node* n);
  void unlink(Node* n);
  // Shrinks or splits node `n` to remove [start, start+length) (which it must contain).
  void carve(Node* n, std::uint32_t start, std::uint32_t length);
  // The shortest range of at least `length` (the lowest-starting of those), or null.
  Node* best_fit_node(std::uint32_t length) const;

  StartSet by_start_;
  SizeSet by_size_;
  std::uint64_t total_ = 0;
};

}  // namespace valet::detail
