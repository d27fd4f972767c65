// valet-stress's command line (knobs in the style of mimalloc's test-stress).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "valet/runtime.h"  // BackendChoice

namespace valet::stress {

struct StressOptions {
  int threads = 0;             // worker threads (the compaction thread comes on top)
  double seconds = 10;         // run time, unless `ops` is set
  std::uint64_t ops = 0;       // total operations over all workers (0: run for `seconds`)
  std::uint64_t seed = 1;
  BackendChoice backend = BackendChoice::automatic;
  int device = 0;
  std::size_t capacity = std::size_t{1} << 30;
  std::size_t max_object = std::size_t{64} << 20;
  double checkpoint_seconds = 1.0;        // time between stop-the-world checks
  std::uint32_t compact_pause_us = 200;   // the compaction thread's pause between cycles
  std::uint32_t host_delay_us = 0;        // host backend: delay before each queued task
  std::uint32_t driver_delay_us = 0;      // every page call (create, map, access, unmap, release) sleeps this long
  bool faults = false;
  double fault_rate = 0.01;              // per call of create_page, map, set_access and copy
  std::size_t chunk_min_pages = Config{}.chunk_min_pages;  // of the heap
  std::size_t chunk_miss_pages = Config{}.chunk_miss_pages;  // of the heap
  std::size_t copy_region_min_bytes = Config{}.copy_region_min_bytes;  // of the heap
  std::size_t copy_region_chunk_bytes = Config{}.copy_region_chunk_bytes;
  bool keeper_defers = Config{}.keeper_defers;  // of the heap
  bool background_misses = Config{}.background_misses;
  std::size_t reserve_hold_ms = Config{}.reserve_hold_ms;
  std::size_t reserve_hold_allocs = Config{}.reserve_hold_allocs;
  std::uint32_t mapper_spin_us = Config{}.miss_mapper_spin_us;
  std::size_t background_miss_limit = Config{}.background_miss_limit;
  std::size_t standby_tail_aliases = Config{}.standby_tail_aliases;
  bool caller_places_misses = false;  // Config::mapper_places_misses off
  bool pins_serve_misses = Config{}.pins_serve_misses;
  bool unlocked_misses = Config{}.unlocked_misses;
  bool create_ahead = Config{}.keeper_creates_ahead;
  std::size_t thread_cache_run_bytes = Config{}.thread_cache_run_bytes;
  // A thread that holds the heap lock for walks of the heap beside the workers (occupancy(), and
  // now and then validate(), which checks the invariants mid-traffic): the workers' large
  // allocations find the lock held (misses made without it, Config::unlocked_misses).
  bool lock_holder = false;
  // The share of the capacity the workers aim their objects at together: just under it (the
  // default), allocations fail now and then and the heap compacts to serve them; further under
  // it, the heap keeps the margin within which it credits threads for misses made without the
  // lock (Config::unlocked_misses gives no credit within an eighth of the capacity).
  double budget = 0.8;
  // Of the workers' random object sizes, the share of large objects (1 MiB and more): 3 % by
  // default (evacuation's work is in the slab classes); more meets the large paths more often.
  double large_share = 0.03;
  bool smoke = false;
  bool json = false;
};

// Parses argv. On --help or a bad command line, prints what CLI11 prints and returns the exit
// code to leave with; otherwise returns nullopt with `out` filled in.
std::optional<int> parse_options(int argc, char** argv, StressOptions& out);

// A one-line description of the run's settings, for the summary.
std::string describe(const StressOptions& o);

}  // namespace valet::stress
