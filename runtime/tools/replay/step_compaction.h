// When the replayer compacts at a step line. A stand-in for the background compactor: once that
// exists, maybe_compact_at_step() becomes a call of Compactor::safepoint() (a step line is the
// service's known-good moment), and nothing else in the replayer changes.
//
// The rule (simple on purpose, and documented in the replayer's --help):
//   at a step, compact when the heap holds much more than it needs,
//     mapped - live > max(32 MiB, 5% of mapped),
//   and slab pages sparse enough to be evacuated exist (at least 2 slab pages under 80%
//   occupancy: an evacuation needs a source page and a denser page to receive its objects);
//   then run one heap.compact() with max_occupancy 0.8.
// Waste that compaction cannot reclaim (the 2 MiB rounding of large objects, the page reserve,
// pages whose objects are pinned) would otherwise make the rule fire at every step for nothing,
// so after a cycle that freed no page the rule rests for `kRestSteps` steps.
#pragma once

#include <cstdint>
#include <optional>

#include "valet/heap.h"

namespace valet::replay {

class StepCompaction {
 public:
  static constexpr std::uint64_t kRestSteps = 50;
  static constexpr double kMaxOccupancy = 0.8;

  explicit StepCompaction(bool enabled) : enabled_(enabled) {}

  // Called at each step line with the stats sampled there. Returns the cycle's record when one
  // ran (its error when it failed), nothing otherwise.
  std::optional<Result<CompactionRecord>> maybe_compact_at_step(Heap& heap, const HeapStats& at_step);

  std::uint64_t cycles() const { return cycles_; }

 private:
  bool wants_cycle(const HeapStats& s) const;

  bool enabled_;
  std::uint64_t step_ = 0;
  std::uint64_t resting_until_ = 0;
  std::uint64_t cycles_ = 0;
};

}  // namespace valet::replay
