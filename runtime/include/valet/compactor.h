// The background compactor and the policy engine that chooses its moments.
//
// A Compactor owns one thread that executes compaction cycles on a heap, and a policy engine
// that decides when and how much: on a near-failing allocation, when fragmentation passes a
// threshold, when free pages fall under a watermark, in idle windows, at safepoints (a service
// loop's known-good moments, where the cycle runs in the caller's thread: see safepoint()), and
// on explicit request. The engine plans in its own bounded tbb::task_arena (never the service's
// threads). Budgets bound the bytes moved per second, the bytes of one cycle (the pause budget)
// and its pages; every setting can be read and changed at run time (by key, for the control
// server and CLI), with validation.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "valet/heap.h"

namespace valet {

struct PolicySettings {
  bool background = true;               // the compactor thread runs cycles on its own triggers
  double fragmentation_threshold = 0.10;  // trigger when 1 - live/mapped of slab pages exceeds it
  double max_occupancy = 0.80;          // pages above this occupancy are never evacuated
  std::uint64_t min_free_pages = 8;     // trigger when free pages (reserve + uncreated) fall under
  std::uint64_t max_bytes_per_second = std::uint64_t{64} << 30;  // moving budget
  std::uint64_t max_pages_per_cycle = 4096;
  // The pause budget: a cycle moves at most what copies in this long at the copy speed measured
  // on past cycles (1 GB/s assumed before the first), never less than one page's worth of
  // objects. It bounds how long a safepoint holds its caller, and a pin's wait for a move (the
  // heap also splits a cycle's moves into batches of Config::move_batch_bytes).
  std::uint64_t max_pause_us = 1000;
  double idle_allocs_per_second = 50;   // below this allocation rate the heap counts as idle
  std::uint64_t interval_ms = 10;       // how often the engine looks at the heap
  std::uint64_t min_reclaim_pages = 2;  // a plan must free at least this many pages to run
  // Hysteresis of the `tails` trigger (slab pages that could move onto large objects' unused
  // last pages). A tails cycle starts once the tails could free at least
  // max(min_reclaim_pages, tails_min_pages, tails_min_fraction x the pages the heap holds less
  // its reserve), and no sooner than tails_interval_ms after the previous one started; once
  // started, tails cycles go on while they free min_reclaim_pages and give pages back (drain).
  // Tails open a page or two at a time: without it the compactor ran a cycle, with its remaps,
  // nearly every step of a serving loop (docs/meshing.md, "When the tails trigger fires").
  std::uint64_t tails_min_pages = 10;
  double tails_min_fraction = 0;
  std::uint64_t tails_interval_ms = 0;
  bool mesh = true;                     // cycles mesh pages first (CompactRequest::mesh)
  bool evacuate = true;                 // cycles evacuate sparse pages (CompactRequest::evacuate)
};

// Keys, their current values and documentation, for the control server.
std::vector<std::string> policy_keys();
std::map<std::string, std::string> policy_values(const PolicySettings& s);
// Sets `key` to `value` in `s`, validating both; invalid_argument names the valid keys or range.
Status set_policy_value(PolicySettings& s, const std::string& key, const std::string& value);

class Compactor {
 public:
  // Starts the compactor thread on `heap` (which must outlive it).
  static Result<std::unique_ptr<Compactor>> start(Heap& heap, const PolicySettings& settings = {});
  ~Compactor();  // stops cleanly (a running cycle finishes its moves; nothing is half-moved)

  PolicySettings settings() const;
  Status update(const PolicySettings& settings);
  Status set(const std::string& key, const std::string& value);

  // Asks for a cycle now. With `wait`, returns its record; without, returns at once (the
  // returned record is empty) and the cycle runs on the compactor thread.
  Result<CompactionRecord> request(const CompactRequest& request, bool wait);
  // A service's known-good moment (between steps of its loop: no pin of its own held, no work
  // queued that it is about to read back) at which it is willing to pay for compaction.
  //
  // Observes the heap and asks the policy engine, exactly as the background thread does each
  // interval, whether a cycle is due (failed or near-failing allocations, slab fragmentation
  // over the threshold, an idle heap: see PolicySettings); if one is, runs that one cycle
  // here, synchronously in the caller's thread, and returns its record. Otherwise, or when a
  // cycle is already running (on the background thread or for request()), it returns an empty
  // optional at once: a safepoint never waits for another cycle. Works with `background` off
  // too; safepoints are then the only moments the policy compacts on its own.
  //
  // Bounded: the cycle moves at most what the pause budget allows (max_pause_us at the copy
  // speed measured on past cycles; before any was measured, a conservative 1 GB/s; never less
  // than one page's worth of objects), within the byte budget (max_bytes_per_second) and
  // max_pages_per_cycle: its copying takes about max_pause_us (or one page's worth), and a pin
  // that meets a moving object waits for one batch of that copy. The call also waits for the
  // heap lock like any heap call (twice per batch), so on a host where other threads hold it
  // long the call lasts longer than the copy. When nothing is due it costs one stats() and one
  // occupancy() snapshot of the heap and the decision.
  //
  // Errors: those of Heap::compact() (the cycle failed; see its record-less error), shut_down
  // once stop() was called.
  Result<std::optional<CompactionRecord>> safepoint();
  // Stops the thread (idempotent).
  void stop();

  struct Counters {
    // cycles: every cycle this compactor ran (policy and requests); then the policy's cycles by
    // trigger (`safepoints`: cycles whose trigger was recorded as `safepoint`, i.e. a
    // fragmentation or idle trigger met at a safepoint; a low-reserve one keeps its trigger;
    // `tails`: slab pages could move onto large objects' last pages, met anywhere).
    std::uint64_t cycles = 0, fragmentation = 0, reserve_low = 0, idle = 0, explicit_requests = 0, safepoints = 0;
    std::uint64_t tails = 0;
    std::uint64_t safepoint_calls = 0;   // safepoint() calls
    std::uint64_t safepoint_cycles = 0;  // cycles run inside safepoint() (any trigger)
    std::uint64_t safepoint_busy = 0;    // safepoint() calls that found a cycle already running
    std::uint64_t failed_cycles = 0;     // policy cycles whose Heap::compact() failed
  };
  Counters counters() const;

 private:
  struct Impl;
  explicit Compactor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace valet
