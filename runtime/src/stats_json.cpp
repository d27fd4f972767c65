// The JSON form of a heap's stats (valet/stats_json.h): the heap itself reports plain structures
// and links no JSON library; the runtime, its control server and its tools speak JSON.
#include "valet/stats_json.h"

namespace valet {

nlohmann::json to_json(const CompactionRecord& r) {
  return {{"trigger", trigger_name(r.trigger)},     {"objects_moved", r.objects_moved},
          {"bytes_moved", r.bytes_moved},           {"pages_freed", r.pages_freed},
          {"pages_meshed", r.pages_meshed},         {"bytes_meshed", r.bytes_meshed},
          {"objects_skipped", r.objects_skipped},
          {"duration_ns", r.duration_ns},           {"longest_pin_wait_ns", r.longest_pin_wait_ns}};
}

nlohmann::json lock_holds_json(const HeapStats::LockHoldsByRole& holds) {
  const auto one = [](const HeapStats::LockHolds& h) -> nlohmann::json {
    return {{"holds", h.holds},   {"total_ns", h.total_ns},     {"p50_ns", h.p50_ns},
            {"p99_ns", h.p99_ns}, {"longest_ns", h.longest_ns}, {"over_8us", h.over_8us}};
  };
  return {{"callers", one(holds.callers)},
          {"mapper", one(holds.mapper)},
          {"keeper", one(holds.keeper)},
          {"compaction", one(holds.compaction)}};
}

nlohmann::json to_json(const HeapStats& s) {
  nlohmann::json cycles = nlohmann::json::array();
  for (const auto& r : s.recent_cycles) cycles.push_back(to_json(r));
  return {
      {"backend", s.backend},
      {"capacity_bytes", s.capacity_bytes},
      {"live_bytes", s.live_bytes},
      {"live_objects", s.live_objects},
      {"footprint_bytes", s.footprint_bytes},
      {"mapped_bytes", s.mapped_bytes},
      {"peak_mapped_bytes", s.peak_mapped_bytes},
      {"reserved_bytes", s.reserved_bytes},
      {"reserve_bytes", s.reserve_bytes},
      {"fragmentation", s.fragmentation},
      {"largest_allocatable_bytes", s.largest_allocatable_bytes},
      {"fixed_objects", s.fixed_objects},
      {"fixed_bytes", s.fixed_bytes},
      {"stream_cached_bytes", s.stream_cached_bytes},
      {"stream_deferred_bytes", s.stream_deferred_bytes},
      {"pages",
       {{"slab", s.pages.slab}, {"large", s.pages.large}, {"reserve", s.pages.reserve}, {"meshed", s.pages.meshed},
        {"idle", s.pages.idle}, {"shared_tails", s.pages.shared_tails}, {"releasing", s.pages.releasing}, {"moving", s.pages.moving},
        {"chunked", s.pages.chunked}, {"chunks", s.pages.chunks}, {"chunk_reserve", s.pages.chunk_reserve},
        {"chunks_created", s.pages.chunks_created}, {"region", s.pages.region}}},
      {"copy_region",
       {{"mapped_bytes", s.copy_region.mapped_bytes}, {"top_bytes", s.copy_region.top_bytes},
        {"hole_bytes", s.copy_region.hole_bytes}, {"objects", s.copy_region.objects}, {"placed", s.copy_region.placed},
        {"fell_back", s.copy_region.fell_back}, {"rounds", s.copy_region.rounds}, {"moves", s.copy_region.moves},
        {"moves_cancelled", s.copy_region.moves_cancelled}, {"bytes_moved", s.copy_region.bytes_moved},
        {"chunks_mapped", s.copy_region.chunks_mapped}, {"chunks_unmapped", s.copy_region.chunks_unmapped}}},
      {"occupancy_histogram", s.occupancy_histogram},
      {"ops",
       {{"allocate", s.ops.allocate}, {"free", s.ops.free}, {"resize", s.ops.resize}, {"pin", s.ops.pin},
        {"failed_allocations", s.ops.failed_allocations}, {"background_misses", s.ops.background_misses},
        {"lost_allocations", s.ops.lost_allocations}, {"misses_placed_by_mapper", s.ops.misses_placed_by_mapper},
        {"small_misses_placed_by_mapper", s.ops.small_misses_placed_by_mapper},
        {"misses_served_by_pins", s.ops.misses_served_by_pins}, {"unlocked_misses", s.ops.unlocked_misses}, {"mapper_wakes", s.ops.mapper_wakes}}},
      {"driver_calls",
       {{"create", s.driver_calls.create}, {"release", s.driver_calls.release}, {"map", s.driver_calls.map},
        {"unmap", s.driver_calls.unmap}, {"set_access", s.driver_calls.set_access}, {"copy", s.driver_calls.copy},
        {"under_heap_lock", s.driver_calls.under_heap_lock},
        {"time_ns",
         {{"total", s.driver_calls.time.total_ns}, {"callers", s.driver_calls.time.callers_ns},
          {"mapper", s.driver_calls.time.mapper_ns}, {"keeper", s.driver_calls.time.keeper_ns},
          {"compaction", s.driver_calls.time.compaction_ns}}}}},
      {"keeper",
       {{"batches", s.keeper.batches}, {"yields", s.keeper.yields}, {"lock_wait_ns", s.keeper.lock_wait_ns},
        {"longest_lock_wait_ns", s.keeper.longest_lock_wait_ns}, {"lock_waits_over_1ms", s.keeper.lock_waits_over_1ms}}},
      {"lock_holds", lock_holds_json(s.lock_holds)},
      {"compaction",
       {{"cycles", s.compaction.cycles}, {"emergency_cycles", s.compaction.emergency_cycles},
        {"bytes_moved", s.compaction.bytes_moved}, {"objects_moved", s.compaction.objects_moved},
        {"pages_meshed", s.compaction.pages_meshed}, {"bytes_meshed", s.compaction.bytes_meshed},
        {"pages_freed", s.compaction.pages_freed}}},
      {"recent_cycles", cycles},
  };
}

}  // namespace valet
