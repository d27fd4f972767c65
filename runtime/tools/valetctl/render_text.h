// Human-readable forms of the control server's replies (stats, compaction records, policy).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace valetctl {

// "180.2 MiB"
std::string bytes_text(double bytes);
// The `stats` reply as a multi-line summary.
std::string stats_text(const nlohmann::json& stats);
// One compaction record: "moved 120 objects (1.2 MiB), freed 4 pages, ...".
std::string record_text(const nlohmann::json& record);
// The reply of a waited `compact`.
std::string compact_text(const nlohmann::json& reply);
// Rows as aligned columns: each column as wide as its widest cell, two spaces between columns,
// the last column not padded.
std::string table_text(const std::vector<std::vector<std::string>>& rows);
// `policy get`: one "key = value" line each.
std::string policy_text(const nlohmann::json& policy);

}  // namespace valetctl
