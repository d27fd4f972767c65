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
// Counting costs two uncontended increments per call; the device tools are not counted.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include "valet/backend_adaptor.h"
#include "valet/driver_op.h"

namespace valet {

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

 protected:
  Status before(DriverOp op) override;

 private:
  // Distinguishes this backend in each thread's counts; never reused, unlike addresses.
  const std::uint64_t id_;
  std::array<std::atomic<std::uint64_t>, kDriverOpCount> totals_{};
  std::array<std::atomic<std::uint64_t>, kDriverOpCount> under_lock_{};
  LockProbe probe_ = nullptr;
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
