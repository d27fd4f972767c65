// The JSON form of HeapStats and CompactionRecord (valet/stats.h), as valetctl, the control server
// and the tools print them. Part of the runtime: the heap links no JSON library.
#pragma once

#include <nlohmann/json.hpp>

#include "valet/stats.h"

namespace valet {

nlohmann::json to_json(const CompactionRecord& record);
nlohmann::json to_json(const HeapStats& stats);

}  // namespace valet
