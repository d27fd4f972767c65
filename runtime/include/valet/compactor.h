// The background compactor and the policy engine that chooses its moments.
//
// A Compactor owns one thread that executes compaction cycles on a heap, and a policy engine
// that decides when and how much: on a near-failing allocation, when fragmentation passes a
// threshold, when free pages fall under a watermark, in idle windows, at safepoints, and on
// explicit request. The engine plans in its own bounded tbb::task_arena (never the service's
// threads). Budgets bound the bytes moved per second and the pages of one cycle; every setting
// can be read and changed at run time (by key, for the control server and CLI), with validation.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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
  std::uint64_t max_pause_us = 1000;    // longest pause one cycle may impose on a pin
  double idle_allocs_per_second = 50;   // below this allocation rate the heap counts as idle
  std::uint64_t interval_ms = 10;       // how often the engine looks at the heap
  std::uint64_t min_reclaim_pages = 2;  // a plan must free at least this many pages to run
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
  // A service's known-good moment: runs a cycle here if the policy wants one.
  void safepoint();
  // Stops the thread (idempotent).
  void stop();

  struct Counters {
    std::uint64_t cycles = 0, fragmentation = 0, reserve_low = 0, idle = 0, explicit_requests = 0, safepoints = 0;
  };
  Counters counters() const;

 private:
  struct Impl;
  explicit Compactor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace valet
