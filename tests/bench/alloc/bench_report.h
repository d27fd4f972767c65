// What valet-bench-alloc measured on the fast path and in the cold run, and its two printed forms:
// text tables, row by row as the figures come, and one JSON object (--json) with every figure the
// tables hold.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "pair_run.h"

namespace valet::bench {

// Allocate+free pairs of one size: the heap on one thread and on N, and on a GPU the driver's
// stream-ordered pool the same way (each thread on its own stream).
struct SizeFigures {
  std::size_t bytes = 0;
  PairRun one, many;
  std::optional<PairRun> pool_one, pool_many;
  // Of the heap's allocations in each run (warm-up included), the share a thread cache served.
  double cached_share_one = 0, cached_share_many = 0;
};

// One large allocation from an empty reserve: the heap's median over the tries, and cuMemAlloc's
// on a GPU (nullopt where it failed or there is no GPU).
struct ColdFigures {
  std::size_t bytes = 0;
  int tries = 0;
  int failed = 0;  // heap allocations that failed
  double median_ns = 0;               // each try after the heap settled
  double back_to_back_median_ns = 0;  // each try right after the last one's free
  std::optional<double> mem_alloc_median_ns;               // cuMemAlloc, each after the same pause
  std::optional<double> mem_alloc_back_to_back_median_ns;  // cuMemAlloc back to back
};

struct BenchReport {
  std::string backend;  // the heap's backend name()
  int threads = 8;      // N
  int pairs = 0;        // --pairs
  bool gpu = false;     // the driver's baselines run beside the heap
  std::vector<SizeFigures> sizes;
  std::vector<ColdFigures> cold;
};

void print_fast_header(const BenchReport& report);
void print_fast_row(const BenchReport& report, const SizeFigures& row);
void print_cold_header(const BenchReport& report);
void print_cold_row(const BenchReport& report, const ColdFigures& row);
nlohmann::ordered_json to_json(const BenchReport& report);

}  // namespace valet::bench
