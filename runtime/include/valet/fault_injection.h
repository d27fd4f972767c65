// A backend adaptor that fails chosen calls, for tests of every error path (RMM's
// failure_callback_resource_adaptor in spirit). It wraps any Backend and forwards everything
// (BackendAdaptor); an armed fault makes one door call fail with Errc::driver_error ("injected
// fault") without forwarding it, exactly as if the driver had refused it. Any door operation
// (DriverOp) can be failed, delayed and counted; the device tools are never failed.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>

#include "valet/backend_adaptor.h"
#include "valet/driver_op.h"

namespace valet {

// The operations a fault can be armed on: the door's.
using FaultOp = DriverOp;

inline const char* fault_op_name(FaultOp op) { return driver_op_name(op); }

class FaultInjectingBackend final : public BackendAdaptor {
 public:
  explicit FaultInjectingBackend(std::unique_ptr<Backend> inner);

  // The k-th call of `op` from now (k >= 1) fails. One armed fault per op; 0 disarms.
  void fail_nth(FaultOp op, std::uint64_t k);
  // Every call of `op` fails with probability p (0 disables), drawn from a seeded generator.
  void fail_randomly(FaultOp op, double p, std::uint64_t seed);
  void disarm_all();
  // Every call of `op` from now sleeps `delay` before it is forwarded (a slow driver call; tests
  // of what waits for what). Zero removes the delay; disarm_all() removes every delay.
  void delay_calls(FaultOp op, std::chrono::microseconds delay);
  // delay_calls for every page call (create, map, set_access, unmap, release): the GPU driver's
  // pace, in order of magnitude, on the host backend (valet-stress and valet-replay
  // --driver-delay-us).
  void delay_page_calls(std::chrono::microseconds delay);
  // Calls of `op` seen and faults injected so far.
  std::uint64_t calls(FaultOp op) const;
  std::uint64_t faults(FaultOp op) const;
  std::uint64_t total_faults() const;

  std::string name() const override { return "fault-injecting " + inner().name(); }

 protected:
  // Counts the call, sleeps its delay, and returns an error if a fault fires.
  Status before(DriverOp op) override;

 private:
  struct Slot {
    std::uint64_t calls = 0;
    std::uint64_t faults = 0;
    std::uint64_t fire_at = 0;  // absolute call number that fails; 0: none
    double probability = 0;
    std::chrono::microseconds delay{0};
  };
  mutable std::mutex mu_;
  std::array<Slot, kDriverOpCount> slots_{};
  std::mt19937_64 rng_{0};
};

}  // namespace valet
