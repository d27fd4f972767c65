// --pinners N: threads that pin random live objects for a few microseconds during the replay, the
// way a service's kernels hold objects while they run, so that compaction meets pinned objects
// and pins meet moves. Each pin's wait is measured around heap.pin().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "live_set.h"
#include "valet/heap.h"

namespace valet::replay {

struct PinnerOptions {
  int threads = 1;
  std::chrono::microseconds hold{5};   // how long a pin is held (busy wait: sleeps are too coarse)
  std::chrono::microseconds gap{100};  // pause between pins (sleep: leaves the cores to the replay)
  std::uint64_t seed = 1;
  // Check the first bytes of the object's --verify signature through the pin (host-accessible
  // backends only): a pin must see the object's bytes wherever compaction has put it.
  bool check_signature = false;
  // The trace line the replayer is on (it stores it before each op), so that the longest wait
  // can be placed in the trace: a wait behind a probe's allocation is not one behind a move.
  const std::atomic<std::uint32_t>* replay_line = nullptr;
};

struct PinnerCounters {
  std::uint64_t pins = 0;               // pins taken
  std::uint64_t stale = 0;              // pins refused with stale_handle (object freed meanwhile)
  std::uint64_t errors = 0;             // pins refused for any other reason
  std::uint64_t signature_errors = 0;   // pins that saw a damaged signature head
  std::uint64_t max_wait_ns = 0;        // longest heap.pin() call
  std::uint32_t max_wait_line = 0;      // trace line being replayed when that call began
  std::uint32_t max_wait_end_line = 0;  // ... and when it returned
  std::uint64_t waits_over_100us = 0;   // heap.pin() calls longer than 100 µs
  std::uint64_t waits_over_1ms = 0;
  // The scheduler's share of those waits: heap.pin() calls during which the pinner thread was
  // preempted (an involuntary context switch, getrusage(RUSAGE_THREAD)), and the longest call
  // that was not: on a loaded host the longest waits are often a thread waiting for a core, not
  // for the heap.
  std::uint64_t preempted = 0;
  std::uint64_t max_wait_unpreempted_ns = 0;
  std::string first_error;
};

class Pinners {
 public:
  Pinners(Heap& heap, const LiveSet& live, const PinnerOptions& options);
  ~Pinners() { stop(); }
  Pinners(const Pinners&) = delete;
  Pinners& operator=(const Pinners&) = delete;

  // Stops and joins the threads (idempotent). No pin is held afterwards.
  void stop();
  // Totals over every thread; complete once stop() has returned.
  PinnerCounters counters() const;

 private:
  void run(std::uint64_t seed);
  void note_error(const std::string& message);
  void note_wait(std::uint64_t wait_ns, std::uint32_t line, std::uint32_t end_line, bool preempted);

  Heap& heap_;
  const LiveSet& live_;
  PinnerOptions options_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> pins_{0}, stale_{0}, errors_{0}, signature_errors_{0}, max_wait_ns_{0};
  std::atomic<std::uint64_t> waits_over_100us_{0}, waits_over_1ms_{0}, preempted_{0}, max_wait_unpreempted_ns_{0};
  mutable std::mutex error_mu_;
  std::string first_error_;
  std::uint32_t max_wait_line_ = 0, max_wait_end_line_ = 0;  // under error_mu_
  std::vector<std::thread> threads_;
};

}  // namespace valet::replay
