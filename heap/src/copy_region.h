// The copying region's bookkeeping (docs/copying_placement.md): one virtual range whose mapped
// extent changes only at its top, by whole physical chunks. Large movable objects are byte ranges
// in it; freed ranges are holes, reused best fit; holes are closed by copying objects, never by
// moving pages. This class decides where objects go and which to move. It makes no driver call
// and no copy: the heap makes them with its answers and reports back (grow, shrink, commit,
// cancel). Not thread-safe: the heap lock guards it.
//
// Compaction works in rounds. A round's moves are begun together: each destination is reserved
// (an arriving object) while its source stays in place (a leaving object) until the heap commits
// the move after its copy, or cancels it (a pin came first). No destination overlaps any source,
// so one batch of copies may carry a whole round. A round takes the highest movable objects into
// the best-fitting holes below them. Where the highest has none, it copies the cheapest run of
// objects between two holes to the top instead, so that after the commits the run's space and
// the holes around it are one hole; sliding the run down would overlap its own sources (session
// 51's model: a third of the bytes of a staged slide).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "valet/result.h"

namespace valet::detail {

class CopyRegion {
 public:
  using Offset = std::uint64_t;

  struct Shape {
    std::uint64_t capacity = 0;        // bytes the region may map at most: a whole number of chunks
    std::uint64_t chunk = 64ull << 20;  // the unit of growth and trims: one physical allocation
    std::uint64_t align = 512;          // of every object's offset and footprint: a power of two
  };

  // One object's copy from `from` to `to` (both its footprint of `bytes`). `owner` is what the
  // heap placed it for (a handle index).
  struct Move {
    Offset from;
    Offset to;
    std::uint64_t bytes;
    std::uint32_t owner;
  };

  struct RoundLimits {
    std::uint64_t target_hole_bytes = 0;  // plan no further once the holes are down to this
    // The round begins no move once it has planned this many bytes (its last move may pass it).
    std::uint64_t budget_bytes = 0;
    std::size_t scan = 200;  // objects looked at below the top, and holes for a run
    // No object, and no run of objects, larger than this moves (a batch's bound).
    std::uint64_t max_move_bytes = ~std::uint64_t{0};
    std::size_t hole_scan = 200;  // hole sizes looked at, from the tightest, for one below an object
  };

  struct Round {
    std::vector<Move> moves;  // begun: commit or cancel each
    // A run chosen for evacuation did not fit the mapped top: map this many bytes (whole chunks)
    // and plan again. 0 otherwise.
    std::uint64_t growth_wanted = 0;
  };

  // Precondition: the shape's sizes are as documented (checked; a bad one is an invalid_argument
  // error from create).
  static Result<CopyRegion> create(const Shape& shape);

  // --- placement ---
  // `bytes` rounded up to the alignment: what an object of `bytes` occupies.
  std::uint64_t footprint(std::uint64_t bytes) const { return (bytes + shape_.align - 1) & ~(shape_.align - 1); }
  // A place for an object of `bytes` (0 < bytes): the best-fitting hole (the lowest of the
  // tightest), else the top if the mapped extent holds it; nullopt otherwise (nothing changed;
  // growth_for says what to map).
  std::optional<Offset> place(std::uint64_t bytes, std::uint32_t owner);
  // The bytes to map at the top (whole chunks) before place(bytes) can succeed; 0 when it can
  // now; nullopt when the capacity cannot hold it at the top.
  std::optional<std::uint64_t> growth_for(std::uint64_t bytes) const;
  // Gives back the object at `at` (its range joins the neighbouring holes, or lowers the top).
  // An object being moved may be freed too (a pin cancelled its move and it was freed before the
  // heap took the lock back): its source goes now, and its move can then only be cancelled, which
  // gives back the destination. An error, nothing changed: no object (or only a move's
  // destination) starts there.
  Status free(Offset at);
  // Names `owner` as the owner of the placed object at `at` (the heap places before it has a
  // handle). An error, nothing changed: no placed object starts there.
  Status set_owner(Offset at, std::uint32_t owner);
  // The object at `at`: its footprint and owner (nullopt: none starts there).
  std::optional<std::pair<std::uint64_t, std::uint32_t>> object_at(Offset at) const;

  // --- the mapped extent [0, mapped()) ---
  // `bytes` (whole chunks, within the capacity) were mapped at the top.
  Status grow(std::uint64_t bytes);
  // The bytes at the top to unmap so that `headroom` bytes stay mapped above the top (rounded up
  // to whole chunks), once that surplus is at least `hysteresis` chunks; 0 otherwise.
  std::uint64_t surplus(std::uint64_t headroom, std::uint32_t hysteresis) const;
  // Takes `bytes` (whole chunks, all above the top) off the extent, before the heap unmaps them:
  // nothing is placed there any more.
  Status shrink(std::uint64_t bytes);

  // --- compaction ---
  // Plans and begins one round within `limits`. `may_move(owner)` says whether an object may
  // move now (not pinned, not fixed); it may be asked of objects the round then does not move.
  Round plan_round(const RoundLimits& limits, const std::function<bool(std::uint32_t)>& may_move);
  // A begun move's copy completed and the heap repointed its owner: the source becomes a hole.
  // An error, nothing changed: no such move in flight, or its object was freed.
  Status commit(const Move& m);
  // A begun move given up: the destination becomes a hole, the object stays at its source (if it
  // was not freed meanwhile).
  Status cancel(const Move& m);

  // --- figures ---
  std::uint64_t top() const { return top_; }
  std::uint64_t mapped() const { return mapped_; }
  std::uint64_t capacity() const { return shape_.capacity; }
  std::uint64_t chunk() const { return shape_.chunk; }
  std::uint64_t hole_bytes() const { return hole_bytes_; }
  std::uint64_t largest_hole() const { return by_size_.empty() ? 0 : by_size_.rbegin()->first; }
  std::size_t hole_count() const { return holes_.size(); }
  // Objects placed (moving ones once, at their source) and their footprints.
  std::size_t object_count() const { return objects_.size() - moves_in_flight_; }
  std::uint64_t object_bytes() const { return object_bytes_; }
  std::size_t moves_in_flight() const { return moves_in_flight_; }

  // Checks every invariant from scratch: objects and holes tile [0, top) exactly, holes are
  // merged and indexed by size, the totals agree, each leaving object has one arriving copy,
  // and top <= mapped <= capacity in whole chunks.
  Status validate() const;

 private:
  enum class Use : std::uint8_t { placed, leaving, arriving };
  static constexpr Offset kNoPartner = ~Offset{0};
  struct Object {
    std::uint64_t bytes;
    std::uint32_t owner;
    Use use;
    // A leaving object's destination, an arriving one's source (kNoPartner: the source was freed
    // while the move was in flight).
    Offset partner = kNoPartner;
  };
  // The move `m` names, if it is in flight: its arriving destination (and its leaving source,
  // objects_.end() when that was freed).
  std::optional<std::pair<std::map<Offset, Object>::iterator, std::map<Offset, Object>::iterator>> in_flight(
      const Move& m);

  explicit CopyRegion(const Shape& shape) : shape_(shape) {}

  // Adds [at, at+bytes) to the holes, merged with its neighbours; a hole reaching the top lowers
  // the top instead.
  void add_hole(Offset at, std::uint64_t bytes);
  // Takes `bytes` from the start of hole `at` (of `size`); the rest stays a hole.
  void take_hole(Offset at, std::uint64_t size, std::uint64_t bytes);
  // The start of the best-fitting hole for `bytes` that ends at or below `below`, looking at
  // holes of up to `scan` sizes from the tightest.
  std::optional<Offset> best_hole(std::uint64_t bytes, Offset below, std::size_t scan) const;
  // Begins a move of the placed object at `from` to `to` (reserved by the caller).
  Move begin(Offset from, Offset to);
  // The cheapest run of movable placed objects between a hole and the next hole (or the top),
  // among the lowest `scan` holes, of at most `budget` bytes: its objects' offsets and bytes.
  // (Its budget is RoundLimits::max_move_bytes.)
  std::optional<std::pair<std::vector<Offset>, std::uint64_t>> cheapest_run(
      std::size_t scan, std::uint64_t budget, const std::function<bool(std::uint32_t)>& may_move) const;

  Shape shape_;
  std::uint64_t top_ = 0;
  std::uint64_t mapped_ = 0;
  std::map<Offset, Object> objects_;                       // by offset; arriving copies too
  std::map<Offset, std::uint64_t> holes_;                  // start -> bytes
  std::set<std::pair<std::uint64_t, Offset>> by_size_;     // (bytes, start) of every hole
  std::uint64_t hole_bytes_ = 0;
  std::uint64_t object_bytes_ = 0;  // placed and leaving objects' footprints
  std::size_t moves_in_flight_ = 0;
};

}  // namespace valet::detail
