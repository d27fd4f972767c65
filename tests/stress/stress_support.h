// Small pieces every part of valet-stress shares: what a test object is, how its pattern seed and
// size are drawn, the run's counters, and the error sink that turns any surprise into a failure.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>

#include "valet/handle.h"
#include "valet/types.h"
#include "valet/kernels/pattern.h"
#include "valet/result.h"

namespace valet::stress {

using Rng = std::mt19937_64;

// An object the test owns: its handle and what its bytes must be. Byte i of the object is
// kernels::pattern_byte(seed, i) for i < size (the whole object, always).
struct TrackedObject {
  Handle handle;
  std::uint64_t seed = 0;
  std::size_t size = 0;
  DevicePtr fixed_at = 0;  // a fixed object's address (Heap::allocate_fixed): it must never change
};

// The pattern seed of an object: a function of a run-unique id and the size, so two objects (or
// one object before and after a resize) never share a pattern by accident.
inline std::uint64_t pattern_seed(std::uint64_t object_id, std::size_t size) {
  return kernels::pattern_mix(object_id * 0x9e3779b97f4a7c15ull ^ (std::uint64_t(size) << 1));
}

inline std::size_t log_uniform_size(Rng& rng, std::size_t lo, std::size_t hi) {
  std::uniform_real_distribution<double> bits(std::log2(double(lo)), std::log2(double(hi)));
  const auto bytes = static_cast<std::size_t>(std::exp2(bits(rng)));
  return bytes < lo ? lo : (bytes > hi ? hi : bytes);
}

// Sizes from 1 byte to `max_bytes`, skewed small, each band log-uniform: 25% from 1 B to 4 KiB,
// 72% from 4 KiB to 1 MiB (slab objects), 3% from 1 MiB up (large objects; `large_share`). Evacuation only finds
// work where one size class fills several 2 MiB pages, hence the weight of the middle band (a
// 2 MiB page holds 8192 objects of 256 B but only 2 of 1 MiB).
inline std::size_t random_object_size(Rng& rng, std::size_t max_bytes, double large_share = 0.03) {
  constexpr std::size_t kSmall = std::size_t{4} << 10, kSlabMax = std::size_t{1} << 20;
  const double band = std::uniform_real_distribution<double>(0, 1)(rng);
  if (band < 0.25 || max_bytes <= kSmall) return log_uniform_size(rng, 1, std::min(max_bytes, kSmall));
  if (band < 1.0 - large_share || max_bytes <= kSlabMax) return log_uniform_size(rng, kSmall, std::min(max_bytes, kSlabMax));
  return log_uniform_size(rng, kSlabMax, max_bytes);
}

inline constexpr std::size_t kLargeObject = std::size_t{1} << 20;  // larger: whole pages

inline bool chance(Rng& rng, double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

// Totals of the run (relaxed atomics: they are only read once the threads are done or parked).
struct StressCounters {
  std::atomic<std::uint64_t> ops{0};
  std::atomic<std::uint64_t> allocations{0};
  std::atomic<std::uint64_t> frees{0};
  std::atomic<std::uint64_t> resizes{0};
  std::atomic<std::uint64_t> host_pins{0};
  std::atomic<std::uint64_t> stream_pins{0};
  std::atomic<std::uint64_t> exchanges{0};          // handles passed to another thread
  std::atomic<std::uint64_t> cross_thread_pins{0};  // pins of an object parked in the exchange
  std::atomic<std::uint64_t> out_of_memory{0};      // clean out_of_memory from allocate/resize
  std::atomic<std::uint64_t> fault_errors{0};       // clean driver_error surfaced by a call
  std::atomic<std::uint64_t> refusals_checked{0};   // wrong calls that got their documented code
  std::atomic<std::uint64_t> compact_calls{0};
  std::atomic<std::uint64_t> bytes_verified{0};
  std::atomic<std::uint64_t> objects_verified{0};
  std::atomic<std::uint64_t> checkpoints{0};
  std::atomic<std::uint64_t> validations{0};  // --lock-holder's walks

  void add(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

  // The first out-of-memory's message (what the heap held, of what capacity): why a run that
  // should fit reported it.
  void out_of_memory_seen(const std::string& message) {
    if (out_of_memory.fetch_add(1, std::memory_order_relaxed) != 0) return;
    std::lock_guard lock(first_mu);
    first_out_of_memory = message;
  }
  std::string first_out_of_memory_message() const {
    std::lock_guard lock(first_mu);
    return first_out_of_memory;
  }

 private:
  mutable std::mutex first_mu;
  std::string first_out_of_memory;
};

// Collects failures: counts them all and prints the first few (the run goes on, so one report
// shows how widespread a problem is).
class ErrorSink {
 public:
  void report(const std::string& what) {
    const std::uint64_t n = count_.fetch_add(1, std::memory_order_relaxed);
    if (n < kPrinted) {
      std::lock_guard lock(mu_);
      std::fprintf(stderr, "valet-stress: ERROR: %s\n", what.c_str());
    } else if (n == kPrinted) {
      std::fprintf(stderr, "valet-stress: further errors are counted, not printed\n");
    }
  }
  void report(const std::string& what, const Error& e) { report(what + ": " + e.to_string()); }
  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  static constexpr std::uint64_t kPrinted = 25;
  std::atomic<std::uint64_t> count_{0};
  std::mutex mu_;
};

inline std::string describe(const TrackedObject& o) {
  return "object {index " + std::to_string(o.handle.index) + ", generation " + std::to_string(o.handle.generation) +
         ", size " + std::to_string(o.size) + ", seed " + std::to_string(o.seed) + "}";
}

}  // namespace valet::stress
