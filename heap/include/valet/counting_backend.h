// A backend decorator that counts every door call by operation (DriverOp): in total over every
// thread, and per calling thread. The per-thread counts answer "how many driver calls did this
// thread make during that allocate?" exactly, whatever background threads (compactor, reserve
// keeper) do on the same backend meanwhile:
//
//   ThreadDriverCalls scope(counting);      // on the caller's thread
//   heap.allocate(...);
//   EXPECT_EQ(scope.made().total(), 0u);    // the fast path reached no driver
//
// A call is counted when it is made, before it is forwarded, whether it then succeeds or fails.
// It is also timed (two clock reads; the driver's calls take microseconds), by operation and by
// the kind of thread that made it, as a probe the owner installs names it (the heap's: a caller,
// its mapper, its keeper, compaction), so that a run can say how much of its wall the driver
// took and on whose thread. The device tools are neither counted nor timed.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include "valet/backend_adaptor.h"
#include "valet/driver_op.h"

namespace valet {

// Time spent in the driver's calls, by operation and by the kind of thread that made them.
inline constexpr std::size_t kDriverThreadKinds = 4;
struct DriverCallTimes {
  std::array<std::array<std::uint64_t, kDriverOpCount>, kDriverThreadKinds> ns{};  // [thread kind][op]

  std::uint64_t total_ns() const;
  std::uint64_t op_ns(DriverOp op) const;
  std::uint64_t thread_kind_ns(std::size_t kind) const;
};

// Calls by operation.
struct DriverCallCounts {
  std::array<std::uint64_t, kDriverOpCount> by_op{};

  std::uint64_t operator[](DriverOp op) const { return by_op[std::size_t(op)]; }
  std::uint64_t total() const;
  // What was counted after `earlier` (a reading of the same counts, taken before this one).
  DriverCallCounts since(const DriverCallCounts& earlier) const;
};

class CountingBackend final : public BackendAdaptor {
 public:
  explicit CountingBackend(std::unique_ptr<Backend> inner);
  ~CountingBackend() override;
  CountingBackend(const CountingBackend&) = delete;
  CountingBackend& operator=(const CountingBackend&) = delete;

  // Calls of `op` made through this backend by every thread.
  std::uint64_t calls(DriverOp op) const;
  DriverCallCounts totals() const;
  // Calls made through this backend by the calling thread, since the thread began.
  DriverCallCounts this_thread() const;
  // Calls made by a thread for which `probe` answered true when it made them (the heap installs
  // one that says whether the calling thread holds a heap lock). Install it before any call.
  using LockProbe = bool (*)();
  void set_lock_probe(LockProbe probe) { probe_ = probe; }
  DriverCallCounts under_lock() const;
  // The kind of the calling thread, 0 to kDriverThreadKinds - 1, for the call times; without a
  // probe every call is of kind 0. Install it before any call.
  using ThreadKindProbe = std::size_t (*)();
  void set_thread_kind_probe(ThreadKindProbe probe) { kind_probe_ = probe; }
  DriverCallTimes times() const;

 protected:
  Status before(DriverOp op) override;
  void after(DriverOp op, std::chrono::nanoseconds took) override;

 private:
  // Distinguishes this backend in each thread's counts; never reused, unlike addresses.
  const std::uint64_t id_;
  std::array<std::atomic<std::uint64_t>, kDriverOpCount> totals_{};
  std::array<std::atomic<std::uint64_t>, kDriverOpCount> under_lock_{};
  std::array<std::array<std::atomic<std::uint64_t>, kDriverOpCount>, kDriverThreadKinds> ns_{};
  LockProbe probe_ = nullptr;
  ThreadKindProbe kind_probe_ = nullptr;
};

// The calls the constructing thread makes through one CountingBackend from construction on.
// Read it on the thread that made it; the backend must outlive it.
class ThreadDriverCalls {
 public:
  explicit ThreadDriverCalls(const CountingBackend& backend)
      : backend_(backend), start_(backend.this_thread()) {}

  DriverCallCounts made() const { return backend_.this_thread().since(start_); }

 private:
  const CountingBackend& backend_;
  DriverCallCounts start_;
};

}  // namespace valet
