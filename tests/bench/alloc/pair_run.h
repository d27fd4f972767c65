// Timed runs of allocate+free pairs for valet-bench-alloc, on one thread or several started
// together: the percentiles of the pairs and the aggregate rate. The same harness times the heap
// and the driver's pool, so their figures compare.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

namespace valet::bench {

using Clock = std::chrono::steady_clock;

inline double ns_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

struct Percentiles {
  double median_ns = 0, p99_ns = 0;
};

// The median (the upper middle element) and p99 (the sorted element at 0.99 n); zeros when empty.
// Sorts `ns`.
Percentiles summarize(std::vector<double>& ns);

// What one thread of a timed run does. prepare() and finish() are untimed (a context, a stream);
// pair() is one allocate+free, timed, and says whether it succeeded.
class PairWorker {
 public:
  virtual ~PairWorker() = default;
  virtual bool prepare() { return true; }
  virtual bool pair() = 0;
  virtual void finish() {}
};

struct PairRun {
  int threads = 0;
  std::uint64_t pairs = 0;         // pairs timed, over every thread
  std::uint64_t failed_pairs = 0;  // ... whose allocation failed
  double median_ns = 0, p99_ns = 0;  // per pair, over every thread's pairs
  double wall_s = 0;               // from the common start to the last thread's last pair
  double pairs_per_s = 0;          // pairs / wall_s: the aggregate throughput
  bool prepared = true;            // false when a worker's prepare() failed (it then timed nothing)
};

// One thread per worker: prepare(), `warmup` untimed pairs, then, once every thread is ready,
// `per_thread` timed pairs, then finish().
PairRun timed_pairs(const std::vector<std::unique_ptr<PairWorker>>& workers, int per_thread, int warmup);

}  // namespace valet::bench
