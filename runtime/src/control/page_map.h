// The `pages` command's page map: one entry per 2 MiB page slot in use, with its kind and
// occupancy.
//
// The heap does not expose its page table yet, so the map is *derived*: large and reserve page
// counts from HeapStats, and each slab page's size class and used slots from Heap::occupancy().
// Counts and occupancies are right; slot numbers and order are not known, nor meshing, nor how
// full the last page of a large object is. The reply says so ("exact": false) and names the API
// that would make it exact:
//   struct PageInfo { std::uint32_t slot; PageKind kind; std::uint32_t size_class_bytes;
//                     std::uint32_t used_slots, total_slots; std::uint32_t owner_count;
//                     bool meshed; };
//   std::vector<PageInfo> Heap::page_map() const;   // one entry per slot not unmapped
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>

#include <vector>

#include "valet/stats.h"

namespace valet::control {

inline constexpr const char* kPageMapApiNeeded = "std::vector<PageInfo> Heap::page_map() const";

nlohmann::json derived_page_map(const HeapStats& stats, const std::vector<ClassOccupancy>& slabs,
                                std::size_t page_bytes);

}  // namespace valet::control
