// A set of free ranges of page slots, coalesced. A bitmap of the slots in the set, with each
// range's node recorded at its first and last slot, finds the range holding a slot and the
// neighbours to merge with in a few word operations; a Boost.Intrusive tree keyed by length gives
// best fit in O(log n). (Until session 46 a second tree keyed by start did the former: its
// searches and relinks were a fifth of the mapper's placements and a third of its bookings, which
// every caller that wants the heap lock waits for: docs/speed.md, "Session 46".)
// The page pool keeps several: virtual slots with nothing mapped, slots mapped to a reserve page,
// slots being provisioned or released, and so on. Host memory: a pointer and a bit per slot up
// to the highest the set has held (about 9 bytes per 2 MiB of address range, per set).
#pragma once

#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <optional>
#include <vector>

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
  std::size_t range_count() const { return by_size_.size(); }
  bool empty() const { return by_size_.empty(); }

  // Calls f(range) for the ranges from the longest down, until f returns false.
  template <class F>
  void for_each_longest(F&& f) const {
    for (auto it = by_size_.rbegin(); it != by_size_.rend(); ++it)
      if (!f(Range{it->start, it->length})) return;
  }
  // Calls f(range) for the ranges in address order.
  template <class F>
  void for_each(F&& f) const {
    for (std::uint32_t s = next_member(0); s != kNone; s = next_member(s)) {
      const Node* n = edge_[s];
      f(Range{n->start, n->length});
      s = n->start + n->length;
    }
  }

 private:
  using SizeHook = boost::intrusive::set_member_hook<>;
  struct Node {
    std::uint32_t start = 0;
    std::uint32_t length = 0;
    SizeHook by_size;
  };
  struct BySize {
    bool operator()(const Node& a, const Node& b) const {
      return a.length != b.length ? a.length < b.length : a.start < b.start;
    }
  };
  using SizeSet = boost::intrusive::set<Node, boost::intrusive::member_hook<Node, SizeHook, &Node::by_size>,
                                        boost::intrusive::compare<BySize>>;

  static constexpr std::uint32_t kNone = ~std::uint32_t{0};

  bool member(std::uint32_t s) const { return s < slots_ && (bits_[s / 64] >> (s % 64)) & 1; }
  // The first slot of the set at or after `from`, or kNone.
  std::uint32_t next_member(std::uint32_t from) const;
  // The first slot of the range holding `s`. Precondition: member(s).
  std::uint32_t range_start(std::uint32_t s) const;
  // Whether every slot of [start, start+length) is in the set.
  bool all_members(std::uint32_t start, std::uint32_t length) const;
  void set_members(std::uint32_t start, std::uint32_t length, bool in);
  // Room for slots below `end` (the bitmap and the edge records grow to it).
  void reserve_slots(std::uint32_t end);
  // A node's first and last slots name it (edge_): what merging and finding read.
  void record_edges(Node* n) {
    edge_[n->start] = n;
    edge_[n->start + n->length - 1] = n;
  }
  Node* new_node(std::uint32_t start, std::uint32_t length);
  void delete_node(Node* n);
  // Shrinks or splits node `n` to remove [start, start+length) (which it must contain).
  void carve(Node* n, std::uint32_t start, std::uint32_t length);
  // The shortest range of at least `length` (the lowest-starting of those), or null.
  Node* best_fit_node(std::uint32_t length) const;

  std::vector<std::uint64_t> bits_;  // slot s is in the set: bit s % 64 of word s / 64
  // Bit w % 64 of full_[w / 64]: every slot of bits_[w] is in the set. A range's first slot is
  // then found 4,096 slots a step where ranges are long (the unmapped slots' are thousands).
  std::vector<std::uint64_t> full_;
  // edge_[s]: the node of the range whose first or last slot is s; other entries are stale and
  // never read (a merge reads the slot just before or after a range only where it is an edge).
  std::vector<Node*> edge_;
  std::uint32_t slots_ = 0;  // slots the bitmap covers
  SizeSet by_size_;
  std::vector<Node*> spare_;  // nodes of ranges that went, reused before new ones
  std::uint64_t total_ = 0;
};

}  // namespace valet::detail
