// The `pages` command's page map: one entry per 2 MiB page slot in use (Heap::page_map()), in
// address order, with its kind and occupancy, and a summary by kind.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <vector>

#include "valet/stats.h"

namespace valet::control {

nlohmann::json page_map_json(const HeapStats& stats, const std::vector<PageInfo>& pages, std::size_t page_bytes);

}  // namespace valet::control
