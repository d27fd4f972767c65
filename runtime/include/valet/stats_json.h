// The JSON form of HeapStats and CompactionRecord (valet/stats.h), as valetctl, the control server
// and the tools print them. Part of the runtime: the heap links no JSON library.
#pragma once

#include <nlohmann/json.hpp>

#include "valet/stats.h"

namespace valet {

nlohmann::json to_json(const CompactionRecord& record);
nlohmann::json to_json(const HeapStats& stats);
// {"callers": {...}, "mapper": ..., "keeper": ..., "compaction": ...}, each with holds, total_ns,
// p50_ns, p99_ns, longest_ns, over_8us.
nlohmann::json lock_holds_json(const HeapStats::LockHoldsByRole& holds);

}  // namespace valet
