// The search for meshable pairs, over plain data: two slab pages of one class whose taken slots
// do not overlap can share one physical page (heap/src/mesh.cpp does the copy and the remap).
// Pure: no heap, no lock; the pages are described by value and by their bitmaps.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "valet/evacuation_plan.h"

namespace valet::detail {

// One partly used slab page of the class, as the search sees it.
struct MeshCandidate {
  std::uint32_t used = 0;     // taken slots (all sharers)
  std::uint32_t sharers = 1;  // virtual pages mapping its physical page (its own + aliases)
  bool descending = false;    // fills from the highest slot down
  // May be the source (its virtual page remapped onto the other's physical page): it has no
  // aliases of its own and is not on a large object's tail (whose blocked slots are the object's).
  bool movable = true;
  std::span<const std::uint64_t> bitmap;  // taken slots; bits past the capacity read as taken
};

// A pair found, by index into the candidates: `src`'s objects go to `dst`'s physical page.
struct MeshMatch {
  std::uint32_t dst = 0;
  std::uint32_t src = 0;
  std::uint64_t bytes = 0;  // the source's slot bytes (what meshing copies)
};

// True when no slot below `capacity` is taken in both bitmaps (of equal length).
bool bitmaps_disjoint(std::span<const std::uint64_t> a, std::span<const std::uint64_t> b, std::uint32_t capacity);

// The split matching (Mesh's SplitMesher): ascending pages against descending ones (if one side
// is empty the other is split in random halves), both shuffled with `rng`, each ascending page
// tried against a bounded number of descending ones (probes), so the cost is O(pages x probes x
// bitmap words) instead of all pairs. A pair is taken when the pages' objects fit one page,
// their bitmaps are disjoint, the source (the page that copies less, unless it cannot move) is
// movable, the destination stays within `max_sharers`, and the source's bytes fit the budget;
// each page is in one pair at most. Spends `budget` (a page per pair). Deterministic for a given
// `rng` state; the rng is drawn only when the class has two candidates or more.
std::vector<MeshMatch> find_mesh_pairs(std::span<const MeshCandidate> pages, std::uint32_t capacity,
                                       std::uint64_t class_size, std::size_t max_sharers, std::mt19937& rng,
                                       planner::Budget& budget);

}  // namespace valet::detail
