// A set of free ranges of page slots, coalesced. A bitmap of the slots in the set, with each
// range's other end recorded at its first and last slot, finds the range holding a slot and the
// neighbours to merge with in a few word operations; where the set is ordered by length, a sorted
// array of (length, start) keys gives best fit by binary search.
// (Until session 46 a tree keyed by start did the former; until session 47 a Boost.Intrusive tree
// the latter: its relinks were a fifth of the mapper's holds of the heap lock, which every caller
// that wants the lock waits for. The sets hold tens to hundreds of ranges, so the array's
// contiguous search and short moves beat the tree's pointer chases: docs/speed.md, "Session 47".)
// The page pool keeps several: virtual slots with nothing mapped, slots mapped to a reserve page,
// slots being provisioned or released, and so on. Host memory: 4 bytes and a bit per slot up to
// the highest the set has held, and 8 bytes per range where ordered.
#pragma once

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
  // Whether the set answers by length (best fit, smallest, longest) or only by slot (find,
  // take_exact): the latter skips the length order's upkeep.
  enum class Order { by_length, by_slot_only };

  explicit RangeSet(Order order = Order::by_length) : by_length_wanted_(order == Order::by_length) {}
  RangeSet(const RangeSet&) = delete;
  RangeSet& operator=(const RangeSet&) = delete;

  // Adds [start, start+length), merging with neighbours. Precondition: disjoint from the set.
  void insert(std::uint32_t start, std::uint32_t length);
  // Removes and returns the start of `length` slots taken from the smallest range that holds
  // them (from that range's start), or nullopt. Ordered by length only (so are the next four).
  std::optional<std::uint32_t> take_best_fit(std::uint32_t length);
  // The range take_best_fit(length) would carve from, left in the set.
  std::optional<Range> best_fit(std::uint32_t length) const;
  // Removes and returns the smallest range, the lowest-starting of those (nullopt when empty).
  std::optional<Range> take_smallest();
  std::uint32_t largest() const;
  // The longest range (the highest-starting of the longest), if any.
  std::optional<Range> largest_range() const;
  // Removes [start, start+length) if the set holds all of it; false (nothing changed) otherwise.
  bool take_exact(std::uint32_t start, std::uint32_t length);
  // The range holding `slot`, if any.
  std::optional<Range> find(std::uint32_t slot) const;
  bool contains(std::uint32_t slot) const { return member(slot); }
  // How many slots of [lo, hi) are in the set (a popcount of the bitmap's words).
  std::uint32_t count_within(std::uint32_t lo, std::uint32_t hi) const;
  // The part within [lo, hi) of the range holding `slot`, found in the bitmap alone (no edge
  // record: placement's window search asks this of many slots, and the bitmap's words stay in
  // cache where the edge records do not). Precondition: contains(slot), lo <= slot < hi.
  Range piece_within(std::uint32_t slot, std::uint32_t lo, std::uint32_t hi) const;

  std::uint64_t total() const { return total_; }
  std::size_t range_count() const { return ranges_; }
  bool empty() const { return ranges_ == 0; }

  // Calls f(range) for the ranges from the longest down (the highest-starting first among equal
  // lengths), until f returns false. Ordered by length only.
  template <class F>
  void for_each_longest(F&& f) const {
    for (auto it = by_length_.rbegin(); it != by_length_.rend(); ++it)
      if (!f(range_of(*it))) return;
  }
  // Calls f(range) for the ranges in address order.
  template <class F>
  void for_each(F&& f) const {
    for (std::uint32_t s = next_member(0); s != kNone; s = next_member(s)) {
      const std::uint32_t last = edge_[s];
      f(Range{s, last - s + 1});
      s = last + 1;
    }
  }

 private:
  static constexpr std::uint32_t kNone = ~std::uint32_t{0};

  // The length order's key: by length, then by start.
  static std::uint64_t key(std::uint32_t start, std::uint32_t length) {
    return std::uint64_t(length) << 32 | start;
  }
  static Range range_of(std::uint64_t k) { return Range{std::uint32_t(k), std::uint32_t(k >> 32)}; }

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
  // A range joins or leaves the set's records (its edges; its key where ordered by length).
  void add_range(std::uint32_t start, std::uint32_t length);
  void drop_range(std::uint32_t start, std::uint32_t length);
  // Removes [start, start+length) from the range [r_start, r_start+r_length) that holds it.
  void carve(std::uint32_t r_start, std::uint32_t r_length, std::uint32_t start, std::uint32_t length);
  // The key of the shortest range of at least `length` (the lowest-starting of those), if any.
  std::optional<std::uint64_t> best_fit_key(std::uint32_t length) const;

  std::vector<std::uint64_t> bits_;  // slot s is in the set: bit s % 64 of word s / 64
  // Bit w % 64 of full_[w / 64]: every slot of bits_[w] is in the set. A range's first slot is
  // then found 4,096 slots a step where ranges are long (the unmapped slots' are thousands).
  std::vector<std::uint64_t> full_;
  // Bit w % 64 of any_[w / 64]: some slot of bits_[w] is in the set. The next member is then
  // found 4,096 slots a step where the set is sparse (the chunk reserve's walks, asked on every
  // large free and placement).
  std::vector<std::uint64_t> any_;
  // At a range's first slot, its last; at its last, its first (one slot: itself). Other entries
  // are stale and never read (a merge reads the slot just before or after a range only where it
  // is an edge).
  std::vector<std::uint32_t> edge_;
  std::uint32_t slots_ = 0;  // slots the bitmap covers
  bool by_length_wanted_;
  std::vector<std::uint64_t> by_length_;  // key() of every range, ascending (where wanted)
  std::size_t ranges_ = 0;
  std::uint64_t total_ = 0;
};

}  // namespace valet::detail
