// The policy engine: looks at the heap and decides whether to run a compaction cycle now, why,
// and with which limits. Deterministic: it reads a snapshot and a time supplied by the caller,
// so tests drive it with a controlled clock.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "valet/compactor.h"

namespace valet::policy {

// What the engine sees at one moment.
struct Observation {
  std::uint64_t now_ns = 0;
  std::uint64_t allocations = 0;          // ops.allocate so far
  std::uint64_t failed_allocations = 0;   // ops.failed_allocations so far
  std::uint64_t free_pages = 0;           // pages a large request could get (reserve + uncreated)
  std::vector<ClassOccupancy> classes;    // slab pages per class
  std::vector<std::uint32_t> open_tails;  // Heap::open_tail_bytes()
  // The heap as its stats report it (HeapStats: fragmentation is 1 - live / mapped).
  std::uint64_t live_bytes = 0;
  std::uint64_t mapped_bytes = 0;
  std::uint64_t reserve_bytes = 0;
  // The copying region (HeapStats::copy_region; 0 when off) and the heap's threshold for its
  // holes (Config::copy_region_hole_high): above it a cycle is due for the region alone.
  std::uint64_t region_hole_bytes = 0;
  std::uint64_t region_mapped_bytes = 0;
  double region_hole_high = 1;
  std::uint64_t region_chunk_bytes = 0;  // Config::copy_region_chunk_bytes
};

// One candidate plan: evacuate pages of occupancy <= max_occupancy.
struct Plan {
  double max_occupancy = 0;
  std::uint64_t pages_freed = 0;   // pages the plan empties
  std::uint64_t bytes_moved = 0;   // bytes it copies to do so
};

// Plans for every occupancy level in `levels`, scanning size classes in parallel (in the
// engine's own bounded task arena). The heap's own rule (planner::predict_class in
// valet/evacuation_plan.h): empty pages go back, then the sparsest pages while the class's other
// pages have room for their objects. Without budgets: decide() compares each plan with its own.
std::vector<Plan> plan_levels(const std::vector<ClassOccupancy>& classes, const std::vector<double>& levels);

// Slab pages that can be emptied into slab pages on open tails (the unused bytes of large
// objects' last pages): the heap's own greedy matching (planner::choose_tail_pages) of tails
// (fullest first) to the cheapest page, of any class, whose objects fit the slots a slab page on
// that tail would have, without budgets. pages_freed: the pages that would go; bytes_moved:
// their objects' slot bytes.
Plan plan_tails(const std::vector<ClassOccupancy>& classes, const std::vector<std::uint32_t>& open_tails);

// Fragmentation of the slab pages: 1 - bytes in slots / bytes of slab pages.
double slab_fragmentation(const std::vector<ClassOccupancy>& classes);
// Fragmentation of the whole heap as the stats report it, less the page reserve (the keeper's,
// kept between its watermarks; no cycle gives it back): 1 - live / (mapped - reserve). It sees
// what the slab figure does not: empty pages among many full ones, rounding of large objects.
double heap_fragmentation(const Observation& obs);

struct Decision {
  CompactionTrigger trigger = CompactionTrigger::fragmentation;
  CompactRequest request;
  Plan plan;
};

// State the engine carries between observations (rates, the byte budget).
struct EngineState {
  std::uint64_t last_ns = 0;
  std::uint64_t last_allocations = 0;
  std::uint64_t last_failed = 0;
  double alloc_rate = 0;        // allocations per second, smoothed
  double byte_tokens = 0;       // bytes the budget allows now
  double copy_bytes_per_ns = 0; // measured copy speed of past cycles (0: unknown)
  // The tails trigger's hysteresis: when the last tails decision was made (0: never), and
  // whether the tails are being drained (a tails cycle started and they still free pages).
  std::uint64_t last_tails_ns = 0;
  bool tails_draining = false;
};

// The pages the tails must be able to free before a tails cycle starts (draining aside):
// max(min_reclaim_pages, tails_min_pages, ceil(tails_min_fraction x pages held less the reserve)).
std::uint64_t tails_start_pages(const PolicySettings& settings, const Observation& obs);

// Decides from one observation. Updates `state` (rates, budget, tails hysteresis); returns a
// decision when a trigger holds and a plan reclaims at least settings.min_reclaim_pages within the
// budget. The `tails` trigger holds when the tails free tails_start_pages() and tails_interval_ms
// has passed since the last tails decision, or, while draining, when they free min_reclaim_pages
// (a tails cycle that gives no page back ends the drain: account()). With `background` on, a
// safepoint leaves the tails to the background thread, whose tails cycles may move their whole
// plan on top of the pause budget.
// `safepoint` marks a call from Compactor::safepoint (the trigger is then `safepoint` when the
// condition that fired is fragmentation or idleness).
std::optional<Decision> decide(const PolicySettings& settings, const Observation& obs, EngineState& state,
                               bool safepoint = false);

// After a cycle: charge its bytes to the budget, learn the copy speed, and end the tails' drain
// if it was a tails cycle that gave no page back.
void account(EngineState& state, const CompactionRecord& record);

}  // namespace valet::policy
