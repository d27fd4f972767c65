// The replayer's compaction rule at step lines (see step_compaction.h).
#include "step_compaction.h"

#include <algorithm>

namespace valet::replay {

namespace {

constexpr std::size_t kMinWaste = std::size_t{32} << 20;
constexpr double kWasteFraction = 0.05;
constexpr std::uint64_t kMinSparsePages = 2;

}  // namespace

bool StepCompaction::wants_cycle(const HeapStats& s) const {
  if (s.mapped_bytes <= s.live_bytes) return false;
  const std::size_t waste = s.mapped_bytes - s.live_bytes;
  if (double(waste) <= std::max(double(kMinWaste), kWasteFraction * double(s.mapped_bytes))) return false;
  // Histogram bins 0..7 hold slab pages under 80% occupancy: evacuation candidates.
  std::uint64_t sparse = 0;
  for (std::size_t bin = 0; bin < 8; ++bin) sparse += s.occupancy_histogram[bin];
  return sparse >= kMinSparsePages;
}

std::optional<Result<CompactionRecord>> StepCompaction::maybe_compact_at_step(Heap& heap, const HeapStats& at_step) {
  const std::uint64_t step = step_++;
  if (!enabled_ || step < resting_until_ || !wants_cycle(at_step)) return std::nullopt;
  CompactRequest request;
  request.max_occupancy = kMaxOccupancy;
  request.trigger = CompactionTrigger::fragmentation;
  auto record = heap.compact(request);
  ++cycles_;
  if (!record.ok() || record->pages_freed == 0) resting_until_ = step + 1 + kRestSteps;
  return record;
}

}  // namespace valet::replay
