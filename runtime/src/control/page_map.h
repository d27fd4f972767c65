// The `pages` command's page map: one entry per 2 MiB virtual page slot in use (Heap::page_map()),
// in address order, with its kind and occupancy, and two summaries that add up:
//   virtual slots in use  = slab + meshed + large + reserve
//   physical pages        = (slab - shared_tails) + large + reserve + idle
// Meshed slots and slab slots on a large object's last page (shared tails) map another slot's
// physical page; idle pages are created pages mapped at no slot. Capacity = physical + not created.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <vector>

#include "valet/stats.h"

namespace valet::control {

// `stats` supplies the capacity and the idle pages (which no slot maps); every other figure is
// counted from `pages`, so the reply's figures agree with its entries.
nlohmann::json page_map_json(const HeapStats& stats, const std::vector<PageInfo>& pages, std::size_t page_bytes);

}  // namespace valet::control
