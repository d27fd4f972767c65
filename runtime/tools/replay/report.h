// What one replay measured, and its two printed forms: one JSON object (--json; the keys of the
// PyTorch baseline replayer that gpu_session.sh runs beside it, with the same meanings) and one
// summary line.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "valet/counting_backend.h"
#include "valet/stats.h"

namespace valet::replay {

// Who held the heap lock when a wait began (Heap::this_thread_lock_wait_by_holder), in this
// order wherever the replay keeps waits by holder: its JSON keys.
inline constexpr std::array<const char*, 4> kLockHolders = {"callers", "mapper", "keeper", "compaction"};
using HolderWaitsNs = std::array<std::uint64_t, kLockHolders.size()>;

struct ReplayReport {
  // The run.
  std::string trace;
  std::string backend;  // the backend's name()
  std::uint64_t capacity_bytes = 0;
  bool compaction = true;
  bool share_tails = true;
  bool fixed = false;         // --fixed: every object a fixed object (the PyTorch path)
  bool stream_frees = false;  // --stream-frees: frees ordered on the default stream
  bool verify = false;
  int pinners = 0;

  // Allocations of `a` lines.
  std::uint64_t ops = 0;              // allocations replayed (refused ones included)
  std::uint64_t ooms = 0;             // allocations refused with out_of_memory
  std::uint64_t allocated_bytes = 0;  // bytes of the allocations that succeeded
  double wall_s = 0;                  // the replay of the trace's lines, pinners running
  // Of wall_s, the sleeps after step lines (--think-us); think_us the asked time per step.
  double think_s = 0;
  std::uint64_t think_us = 0;
  double alloc_ns_median = 0;         // heap.allocate() of `a` lines (steady_clock around the call)
  double alloc_ns_p90 = 0;
  double alloc_ns_p95 = 0;
  double alloc_ns_p99 = 0;
  double alloc_ns_p999 = 0;
  // Allocations and frees that made at least one driver call on the replaying thread.
  std::uint64_t allocs_with_calls = 0;
  std::uint64_t frees_with_calls = 0;
  double alloc_ns_max = 0;
  // The slowest allocations (at most kSlowestKept, slowest first): where the max and the tail
  // come from (the trace line, its size, its wait for the heap lock, whether it returned pending,
  // driver calls it made on the replaying thread).
  struct SlowAllocation {
    std::uint64_t line = 0, bytes = 0, ns = 0, lock_wait_ns = 0, driver_calls = 0;
    bool pending = false;
    // The thread's CPU time across the call (and two clock reads): well under `ns`, the call
    // waited off the CPU for the difference (descheduled, or asleep on a lock).
    std::uint64_t cpu_ns = 0;
  };
  static constexpr std::size_t kSlowestKept = 8;
  std::vector<SlowAllocation> slowest_allocations;
  // Frees of `f` lines, timed as the caller sees them: from the first heap.free() to the one that
  // succeeds, retries included (a pinner may hold the object: free_retries counts those).
  double free_ns_median = 0;
  double free_ns_p99 = 0;
  double free_ns_max = 0;
  // Allocations by size: under one page (slab objects and small large ones) and of a page or
  // more (runs of pages), each with its count, median, p99 and max; and, across sizes, those that
  // returned pending (background misses: Heap::this_thread_background_misses) and the other
  // allocations of a page or more (a mapped run found, or mapped on the caller's thread).
  struct SizeClassLatency {
    std::uint64_t count = 0;
    double median = 0, p99 = 0, max = 0;
  } alloc_ns_under_page, alloc_ns_pages, alloc_ns_pending, alloc_ns_pages_not_pending;
  // Of each allocation's and free's time, the wait for the heap lock while another thread held
  // it (Heap::this_thread_lock_wait_ns): how many waited, the total, p99 and max over all calls.
  // `by_holder_s`: the total by who held the lock when each wait began (other callers, the
  // mapper, the keeper, compaction: Heap::this_thread_lock_wait_by_holder).
  struct LockWait {
    std::uint64_t waited = 0;
    double total_s = 0, p99_ns = 0, max_ns = 0;
    std::array<double, kLockHolders.size()> by_holder_s{};
  } alloc_lock_wait, free_lock_wait;
  // The allocations at or over alloc_ns_p99 (AllocTail): how many, how many returned pending,
  // waited for the heap lock (and that wait's share of their summed time), made driver calls on
  // the replaying thread, were under a page; their median time, with and without the lock wait.
  // `waited_on`: of those that waited, how many waited longest behind each holder (as by_holder_s).
  struct AllocTail {
    double over_ns = 0;
    std::uint64_t count = 0, pending = 0, waited = 0, with_driver_calls = 0, under_page = 0;
    std::array<std::uint64_t, kLockHolders.size()> waited_on{};
    double lock_wait_share = 0, median_ns = 0, median_ns_without_wait = 0;
  } alloc_tail;
  // Where the replaying thread's wall_s went: the heap calls of `a` and `f` lines, the probes
  // (`p` lines, whole), the step lines (stats() and safepoint(), not the think sleeps), the
  // signatures (--verify: writes and checks) and the stats() readings at live peaks; `other`
  // is the rest (the loop, the live set the pinners read).
  struct WallParts {
    double allocate = 0, free = 0, probe = 0, step = 0, signatures = 0, peak_samples = 0;
  } wall_parts_s;
  // Driver calls made on the replaying thread inside heap.allocate() and heap.free() of `a` and
  // `f` lines, counted at the heap's counting door in the window of each call only: not stats(),
  // safepoint(), signature writes, pinner threads, the heap's background threads, nor the frees
  // of the objects left live at the end. A probe's (`p` line's allocate and free) are apart.
  DriverCallCounts alloc_path_driver_calls;
  DriverCallCounts probe_driver_calls;
  // Driver calls any thread made while holding the heap lock, over the whole replay (callers'
  // placements, compaction, the keeper's locked steps): each one stalls every thread that
  // wants the lock meanwhile.
  DriverCallCounts under_heap_lock_driver_calls;
  // Every driver call of the heap, any thread, over the whole replay (the door's totals): the
  // load the driver serializes (docs/speed.md, session 21).
  DriverCallCounts total_driver_calls;
  // How long those calls took, by operation and by the role of the thread that made them (the
  // heap's roles: callers, its mapper, its keeper, compaction): set beside wall_s, how much of the
  // run the driver's serialized work was.
  DriverCallTimes driver_times;

  // Probes: a real allocate followed by free.
  std::uint64_t probes = 0;
  std::uint64_t probes_failed = 0;

  // Memory. Live: the replayer's own running sum of the sizes the trace asked for (allocations
  // that succeeded; probes excluded). Mapped: stats().mapped_bytes (pages held at the backend,
  // reserve included), sampled at every step line and before every probe.
  std::uint64_t peak_live_bytes = 0;
  std::uint64_t peak_mapped_bytes = 0;
  std::uint64_t peak_mapped_line = 0;        // trace line where the mapped peak was sampled
  // What the mapped pages were at that sample (HeapStats::pages; live in pages, rounded up).
  struct PeakPages {
    std::uint64_t live = 0, large = 0, slab_own = 0, reserve = 0, releasing = 0, moving = 0;
  } peak_mapped_pages;
  double mean_fragmentation = 0;             // 1 - Σ live / Σ mapped over step lines
  double mean_fragmentation_unweighted = 0;  // mean over step lines of 1 - live / mapped (mapped > 0)
  // Diagnostics: the heap's page reserve (created pages nobody uses) at step lines, and the
  // fragmentation left when it is not counted (what slab slack and page rounding cost).
  double mean_reserve_bytes = 0;
  double mean_fragmentation_without_reserve = 0;

  // Compaction (heap totals at the end, every trigger).
  std::uint64_t compactions = 0;  // cycles (stats().compaction.cycles): compactor + emergency
  std::uint64_t emergency_compactions = 0;
  std::uint64_t bytes_moved = 0;   // evacuation: bytes copied to new places (handles repointed)
  std::uint64_t objects_moved = 0;
  std::uint64_t pages_freed = 0;
  std::uint64_t chunks_created = 0;  // physical chunks the heap made (Config::chunk_min_pages)
  // The copying region's counters at the end (Config::copy_region_min_bytes; all 0 when off).
  HeapStats::CopyRegion copy_region{};
  // Config::background_misses: allocations whose run the heap's thread mapped; objects lost;
  // misses whose run the heap's thread also chose (Config::mapper_places_misses).
  std::uint64_t background_misses = 0, lost_allocations = 0, misses_placed_by_mapper = 0, small_misses_placed_by_mapper = 0;
  std::uint64_t misses_served_by_pins = 0, mapper_wakes = 0;
  std::uint64_t unlocked_misses = 0;  // misses made without the heap lock (Config::unlocked_misses)
  std::uint64_t cached_allocations = 0, cached_run_allocations = 0;
  HeapStats::Keeper keeper;          // the reserve keeper's waits for the heap lock (stats().keeper)
  HeapStats::LockHoldsByRole lock_holds;  // how long each role held the heap lock (stats().lock_holds)
  std::uint64_t pages_meshed = 0;  // meshing: pages folded onto another's physical page
  std::uint64_t bytes_meshed = 0;  // bytes meshing copied (addresses unchanged)

  // The background compactor (Compactor::counters() at the end; all 0 with --no-compact).
  bool compactor = false;
  std::uint64_t compactor_cycles = 0;    // cycles it ran (background thread + safepoints)
  std::uint64_t background_cycles = 0;   // ... on its own thread
  std::uint64_t safepoint_calls = 0;     // safepoint() calls (one per step line)
  std::uint64_t safepoint_cycles = 0;    // ... that ran a cycle in the replayer's thread
  std::uint64_t safepoint_busy = 0;      // ... that found a background cycle running
  std::uint64_t cycles_fragmentation = 0, cycles_reserve_low = 0, cycles_idle = 0, cycles_safepoint_trigger = 0;
  std::uint64_t cycles_tails = 0;
  std::uint64_t failed_cycles = 0;
  std::uint64_t safepoint_ns_total = 0;      // time the replayer spent in safepoint() calls
  std::uint64_t safepoint_ns_max = 0;        // longest safepoint() call (the step's pause)
  std::uint64_t safepoint_cycle_ns_max = 0;  // longest safepoint() call that ran a cycle
  std::vector<std::pair<std::string, std::string>> policy;  // the settings it ran with
  std::uint64_t pin_wait_ns_max = 0;         // max of the pinners' own timing and the cycles' records
  std::uint64_t pin_wait_ns_max_cycles = 0;  // the longest wait the heap's cycle records report
  CompactionRecord pin_wait_max_cycle;       // ... and the record of that cycle
  // Where the pinners' longest wait fell: the trace lines being replayed when it began and ended.
  std::uint64_t pin_wait_max_lines[2] = {0, 0};
  double moved_fraction = 0;   // bytes_moved / allocated_bytes
  double copied_fraction = 0;  // (bytes_moved + bytes_meshed) / allocated_bytes

  // Pins and checks.
  std::uint64_t pins = 0;                  // pins the pinner threads took
  std::uint64_t pins_stale = 0;            // pins of objects freed meanwhile (expected, ignored)
  std::uint64_t pin_errors = 0;            // pins refused for any other reason
  std::uint64_t pin_waits_over_100us = 0;  // pinners' heap.pin() calls longer than 100 µs
  std::uint64_t pin_waits_over_1ms = 0;
  std::uint64_t pins_preempted = 0;               // pin calls during which the pinner lost its core
  std::uint64_t pin_wait_ns_max_unpreempted = 0;  // longest pin call that kept its core throughout
  std::uint64_t free_retries = 0;      // frees refused because a pinner held the object
  std::uint64_t verified_objects = 0;  // signatures checked (at free and at the end)
  std::uint64_t verify_errors = 0;     // objects (or pins) that found a damaged signature
  std::uint64_t heap_errors = 0;       // calls that failed otherwise than the trace allows
  // Set when the trace could not be replayed to its end as it was checked (the file changed or
  // cannot be read): the replay stopped there, and its figures describe part of the trace.
  std::string trace_error;
  std::vector<std::string> problems;   // the first messages, for stderr
  std::uint64_t problems_omitted = 0;  // messages beyond the first kMaxProblems

  static constexpr std::size_t kMaxProblems = 10;
  void note_problem(std::string message) {
    if (problems.size() < kMaxProblems)
      problems.push_back(std::move(message));
    else
      ++problems_omitted;
  }

  bool failed() const {
    return verify_errors > 0 || heap_errors > 0 || pin_errors > 0 || peak_mapped_bytes < peak_live_bytes;
  }
};

nlohmann::ordered_json to_json(const ReplayReport& report);
std::string summary_line(const ReplayReport& report);

}  // namespace valet::replay
