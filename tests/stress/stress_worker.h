// One worker thread of valet-stress: a seeded random mix of allocate, free, resize, host and
// stream-ordered pins, long-held pins, and hand-offs through the exchange board, checking every
// object's pattern as it goes and every refusal's error code.
#pragma once

#include <atomic>
#include <optional>
#include <vector>

#include "checkpoint_gate.h"
#include "exchange_board.h"
#include "stress_support.h"
#include "valet/heap.h"

namespace valet::stress {

// What every worker shares.
struct WorkerShared {
  Heap& heap;
  StressCounters& counters;
  ErrorSink& errors;
  ExchangeBoard& board;
  CheckpointGate& gate;
  const std::atomic<bool>& stop;
  std::atomic<std::uint64_t>& next_object_id;
  bool faults_armed = false;
};

struct WorkerLimits {
  std::size_t max_object_bytes = std::size_t{64} << 20;
  std::size_t byte_budget = std::size_t{128} << 20;  // live bytes this worker aims to stay under
  std::size_t max_objects = 256;
  std::uint64_t ops = 0;  // operations to run; 0: until `stop`
  std::size_t max_held_pins = 4;
  double large_share = 0.03;  // of the random sizes, objects of 1 MiB and more
};

class StressWorker {
 public:
  StressWorker(WorkerShared shared, WorkerLimits limits, std::uint64_t seed);
  StressWorker(const StressWorker&) = delete;
  StressWorker& operator=(const StressWorker&) = delete;

  // The thread's body. Returns once its operations are done or `stop` is set, holding no pins,
  // with its stream drained and destroyed; it has left the gate.
  void run();

  // The objects it owns. Call only while it is parked at the gate or after run() returned.
  std::vector<TrackedObject> objects() const;

 private:
  struct Owned {
    TrackedObject object;
    std::optional<Pin> held_pin;                // a host pin kept across operations
    std::optional<StreamPin> held_stream_pin;   // a stream pin not yet released
    bool pinned() const { return held_pin.has_value() || held_stream_pin.has_value(); }
  };

  void new_phase();
  void step();
  void op_allocate();
  void op_free();
  void op_resize();
  void op_pin_and_verify();
  void op_purge();
  void op_stream_rewrite();
  void op_hold_or_release_pin();
  void op_exchange();
  void op_visit_board();

  // Checks a refused call got `want`; counts it or reports it.
  void expect_code(Errc got, Errc want, const char* what, const TrackedObject& o);
  // True when a failed allocate/resize failed cleanly (counted); false (reported) otherwise.
  bool clean_failure(const Error& e, const char* what);
  Status drain_stream();
  void park_if_requested();
  std::size_t pick() { return std::uniform_int_distribution<std::size_t>(0, owned_.size() - 1)(rng_); }
  void remove(std::size_t i);
  void account(std::size_t bytes, bool add);  // owned_bytes_ and owned_large_bytes_
  std::uint64_t new_id() { return shared_.next_object_id.fetch_add(1, std::memory_order_relaxed); }

  WorkerShared shared_;
  WorkerLimits limits_;
  Rng rng_;
  Stream stream_{};
  bool stream_dirty_ = false;  // stream-ordered fills queued and not yet known complete
  std::vector<Owned> owned_;
  std::size_t owned_bytes_ = 0;
  std::size_t owned_large_bytes_ = 0;
  std::size_t held_pins_ = 0;
  std::vector<std::size_t> popular_;  // the phase's popular sizes
  std::uint64_t ops_left_in_phase_ = 0;
};

}  // namespace valet::stress
