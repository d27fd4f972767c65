// The evacuation planning rule, written once, over plain data: which slab pages a compaction
// cycle empties, and what that copies. The heap runs it on its live pages to pick the pages it
// evacuates (heap/src/compaction.cpp, heap/src/tails.cpp); the policy engine runs it on a
// snapshot (Heap::occupancy(), Heap::open_tail_bytes()) to predict what a cycle would free, so
// the prediction is the heap's own choice, not a second opinion. Pure: no heap, no lock.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "valet/stats.h"

namespace valet::planner {

// What a cycle may still spend: pages given back, bytes copied. Default: unbounded.
struct Budget {
  std::uint64_t pages = ~std::uint64_t{0};
  std::uint64_t bytes = ~std::uint64_t{0};
};

// Sparse pages of one class to empty into the free slots of the class's other pages.
struct SparseChoice {
  std::vector<std::uint32_t> pages;  // indices into ClassOccupancy::used, in the order chosen
  std::uint64_t slots_moved = 0;     // objects the chosen pages hold
  std::uint64_t bytes_moved = 0;     // slots_moved * class_size
};

// The greedy rule for one class: among the pages of occupancy <= max_occupancy (`used[k] <=
// max_occupancy * slots_per_page`), sparsest first, take pages while the pages left behind (the
// class's other pages, and its pages on tails: `tail_free_slots`) have room for every object
// taken so far, and while the budget lasts (the first page over it ends the class). Fewer than
// two such pages: none (one sparse page among dense ones is not worth a cycle). Empty pages in
// `used` are taken like any other, at no byte cost; the heap gives empty pages back before it
// plans, so the pages it passes hold objects. Spends `budget`.
SparseChoice choose_sparse_pages(const ClassOccupancy& c, double max_occupancy, Budget& budget);

// What a cycle without meshing and without budgets frees in one class at `max_occupancy`:
// every empty page (given back without a move), then choose_sparse_pages over the rest.
struct ClassPrediction {
  std::uint64_t pages_freed = 0;
  std::uint64_t bytes_moved = 0;
};
ClassPrediction predict_class(const ClassOccupancy& c, double max_occupancy);

// One open tail (the unused bytes of a large object's last page) matched with a slab page whose
// objects fit the slots a slab page built on that tail would have: emptying the page frees it.
struct TailMatch {
  std::uint32_t tail = 0;   // index into the tails' bytes
  std::uint32_t cls = 0;    // index into the classes
  std::uint32_t page = 0;   // index into classes[cls].used
  std::uint64_t bytes = 0;  // the page's objects' slot bytes
};
struct TailChoice {
  std::vector<TailMatch> matches;  // in the order chosen
  std::uint64_t bytes_moved = 0;
};

// The greedy tail rule: the fullest tails first (ties: the later tail first), each taking, over
// all classes, the cheapest page to empty (fewest slot bytes; ties: the lower class, then the
// earlier page) whose objects fit the slots left above the tail's bytes (the slots those bytes
// overlap are blocked). Empty pages are not candidates (nothing to move). A tail with no page
// that fits, or whose page is over the byte budget, is passed over; no page is taken twice.
// `accept`, when given, is asked before a match is taken (the heap builds the slab page on the
// tail there); false: the tail is passed over and the page stays a candidate. Spends `budget`.
// tail_bytes: the bytes each large object uses of its last page.
TailChoice choose_tail_pages(const std::vector<ClassOccupancy>& classes, const std::vector<std::uint32_t>& tail_bytes,
                             Budget& budget, const std::function<bool(const TailMatch&)>& accept = nullptr);

}  // namespace valet::planner
