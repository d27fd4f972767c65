// A backend adaptor that fails chosen calls, for tests of every error path (RMM's
// failure_callback_resource_adaptor in spirit). It wraps any Backend and forwards everything;
// an armed fault makes one call fail with Errc::driver_error ("injected fault") without
// forwarding it, exactly as if the driver had refused it.
#pragma once

#include <array>
#include <chrono>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>

#include "valet/backend.h"

namespace valet {

enum class FaultOp : std::uint8_t { reserve, create_page, release_page, map, unmap, set_access, copy, count };

const char* fault_op_name(FaultOp op);

class FaultInjectingBackend final : public Backend {
 public:
  explicit FaultInjectingBackend(std::unique_ptr<Backend> inner);

  Backend& inner() { return *inner_; }

  // The k-th call of `op` from now (k >= 1) fails. One armed fault per op; 0 disarms.
  void fail_nth(FaultOp op, std::uint64_t k);
  // Every call of `op` fails with probability p (0 disables), drawn from a seeded generator.
  void fail_randomly(FaultOp op, double p, std::uint64_t seed);
  void disarm_all();
  // Every call of `op` from now sleeps `delay` before it is forwarded (a slow driver call; tests
  // of what waits for what). Zero removes the delay; disarm_all() removes every delay.
  void delay_calls(FaultOp op, std::chrono::microseconds delay);
  // Calls of `op` seen and faults injected so far.
  std::uint64_t calls(FaultOp op) const;
  std::uint64_t faults(FaultOp op) const;
  std::uint64_t total_faults() const;

  BackendKind kind() const override { return inner_->kind(); }
  std::string name() const override { return "fault-injecting " + inner_->name(); }
  std::size_t granularity() const override { return inner_->granularity(); }
  Capabilities capabilities() const override { return inner_->capabilities(); }
  Result<MemoryInfo> memory_info() override { return inner_->memory_info(); }
  Result<DevicePtr> reserve(std::size_t bytes) override;
  Status unreserve(DevicePtr va, std::size_t bytes) override { return inner_->unreserve(va, bytes); }
  Result<PhysicalPage> create_page() override;
  Status release_page(PhysicalPage p) override;
  Status map(DevicePtr va, PhysicalPage p) override;
  Status unmap(DevicePtr va, std::size_t bytes) override;
  Status set_access(DevicePtr va, std::size_t bytes) override;
  Result<Stream> create_stream() override { return inner_->create_stream(); }
  Status destroy_stream(Stream s) override { return inner_->destroy_stream(s); }
  Result<Event> create_event() override { return inner_->create_event(); }
  Status destroy_event(Event e) override { return inner_->destroy_event(e); }
  Status record_event(Event e, Stream s) override { return inner_->record_event(e, s); }
  Result<bool> query_event(Event e) override { return inner_->query_event(e); }
  Status synchronize_event(Event e) override { return inner_->synchronize_event(e); }
  Status stream_wait_event(Stream s, Event e) override { return inner_->stream_wait_event(s, e); }
  Status synchronize_stream(Stream s) override { return inner_->synchronize_stream(s); }
  Status copy(std::span<const CopyRange> r, Stream s) override;
  Status fill_pattern(std::span<const PatternRange> r, Stream s) override { return inner_->fill_pattern(r, s); }
  Result<std::uint64_t> verify_pattern(std::span<const PatternRange> r, Stream s) override {
    return inner_->verify_pattern(r, s);
  }
  Status read(void* dst, DevicePtr src, std::size_t n) override { return inner_->read(dst, src, n); }
  Status write(DevicePtr dst, const void* src, std::size_t n) override { return inner_->write(dst, src, n); }

 private:
  // Counts the call; returns an error if a fault fires.
  Status should_fail(FaultOp op);

  struct Slot {
    std::uint64_t calls = 0;
    std::uint64_t faults = 0;
    std::uint64_t fire_at = 0;  // absolute call number that fails; 0: none
    double probability = 0;
    std::chrono::microseconds delay{0};
  };
  std::unique_ptr<Backend> inner_;
  mutable std::mutex mu_;
  std::array<Slot, std::size_t(FaultOp::count)> slots_{};
  std::mt19937_64 rng_{0};
};

}  // namespace valet
