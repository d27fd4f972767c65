// HostBackendOptions::gpu_pace: each page call of the host backend takes as long as an NVIDIA
// H200's driver took for the same call (session 21's measurements,
// docs/results/2026-12-04-h200-session21/chunk_costs_h200.txt: microseconds per call for
// physical allocations of 2 MiB to 512 MiB; linear in the chunk's size between them), one call
// at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace valet::host {

// Nanoseconds of one call on a physical allocation (or its mapping) of `pages` 2 MiB pages. A
// lone page has its own row; chunks follow the fit of their sizes' rows.
struct GpuPace {
  static std::int64_t mib(std::size_t pages) { return std::int64_t(2 * pages); }
  static std::int64_t create_ns(std::size_t pages) { return pages == 1 ? 13'700 : 8'400 + 23 * mib(pages); }
  static std::int64_t map_ns(std::size_t pages) { return pages == 1 ? 3'200 : 1'500 + 1 * mib(pages); }
  // Access grants and unmaps cost per mapping in their range, however many one call covers.
  static std::int64_t access_ns(std::size_t pages) { return pages == 1 ? 37'300 : 25'000 + 46 * mib(pages); }
  static std::int64_t unmap_ns(std::size_t pages) { return pages == 1 ? 22'500 : 17'500 + 13 * mib(pages); }
  static std::int64_t release_ns(std::size_t pages) { return pages == 1 ? 10'400 : 10'000 + 330 * mib(pages); }
};

// One paced call: takes the pace lock at construction (where pacing is on), and at destruction,
// still holding it, spins until the call's cost has passed since then. Declare it before the
// call's other locks, so that they are let go before the spin.
class PacedCall {
 public:
  PacedCall(bool on, std::mutex& pace_mu) : lock_(pace_mu, std::defer_lock) {
    if (!on) return;
    lock_.lock();
    start_ = std::chrono::steady_clock::now();
  }
  ~PacedCall() {
    if (!lock_.owns_lock()) return;
    const auto until = start_ + std::chrono::nanoseconds(cost_ns_);
    // A spin, not a sleep: the driver's calls keep their thread busy, and a sleep of tens of
    // microseconds lasts several times that with the kernel's timer slack.
    while (std::chrono::steady_clock::now() < until) {
    }
  }
  PacedCall(const PacedCall&) = delete;
  PacedCall& operator=(const PacedCall&) = delete;

  bool on() const { return lock_.owns_lock(); }
  void add(std::int64_t ns) { cost_ns_ += ns; }

 private:
  std::unique_lock<std::mutex> lock_;
  std::chrono::steady_clock::time_point start_{};
  std::int64_t cost_ns_ = 0;
};

}  // namespace valet::host
