#pragma once

#include <nlohmann/json.hpp>

#include "valet/stats.h"

namespace valet {

nlohmann::json to_json(const CompactionRecord& record);
nlohmann::json to_json(const HeapStats& stats);

}  // namespace valet
