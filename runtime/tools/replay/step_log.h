// --step-log FILE: one CSV row per step line, for diagnosing the figures: what the heap holds at
// each step (live, footprint, mapped, the page reserve, slab and large pages), what the cycle the
// compactor ran at the step's safepoint did (if one ran) and how long it took, and how long
// stats() waited for the heap lock. Background cycles show in the `cycles` column.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "valet/stats.h"

namespace valet::replay {

class StepLog {
 public:
  // Opens `path` and writes the header row; false when the file cannot be written.
  bool open(const std::string& path);
  bool is_open() const { return out_.is_open(); }

  // `live_bytes`: the replayer's own sum; `s`: the heap sampled at the step, before its
  // safepoint; `cycle`: the record of the cycle the safepoint ran, or null when none ran.
  void row(std::uint32_t line, std::uint64_t live_bytes, const HeapStats& s, std::uint64_t stats_ns,
           const CompactionRecord* cycle);

 private:
  std::ofstream out_;
  std::uint64_t step_ = 0;
};

}  // namespace valet::replay
