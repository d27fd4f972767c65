// A door whose calls of one kind stop at a gate while it is armed, until the test opens it: a
// test can then look at a heap while a driver call is under way on another thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "heap_test_util.h"
#include "valet/backend_adaptor.h"

namespace valet::test {

class GatedBackend final : public BackendAdaptor {
 public:
  explicit GatedBackend(std::unique_ptr<Backend> inner, DriverOp gated = DriverOp::map)
      : BackendAdaptor(std::move(inner)), gated_(gated) {}
  void arm() { armed_ = true; }
  // Only calls made by `thread` stop (a heap's keeper thread may call meanwhile), after the first
  // `pass` of them went through.
  void arm_for(std::thread::id thread, int pass = 0) {
    {
      std::lock_guard lock(mu_);
      only_ = thread;
      pass_ = pass;
    }
    armed_ = true;
  }
  // Calls made by `thread` stop too (after arm_for: two threads held at once).
  void also_for(std::thread::id thread) {
    std::lock_guard lock(mu_);
    also_ = thread;
  }
  // Whether `n` calls are held at the gate at once within 10 s.
  bool wait_held(int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return held_ >= n; });
  }
  // Whether a call reached the gate within 10 s.
  bool wait_entered() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return entered_; });
  }
  void open() {
    std::lock_guard lock(mu_);
    armed_ = false;
    cv_.notify_all();
  }
  // Opens the gate with the call waiting there failing (driver_error), as a driver's would.
  void open_failing() {
    std::lock_guard lock(mu_);
    fail_waiting_ = true;
    armed_ = false;
    cv_.notify_all();
  }

 protected:
  Status before(DriverOp op) override {
    if (op != gated_ || !armed_) return {};
    std::unique_lock lock(mu_);
    const auto me = std::this_thread::get_id();
    if (only_ != std::thread::id{} && only_ != me && also_ != me) return {};
    if (pass_ > 0) {
      --pass_;
      return {};
    }
    entered_ = true;
    ++held_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !armed_.load(); });
    --held_;
    if (fail_waiting_) {
      fail_waiting_ = false;
      return make_error(Errc::driver_error, "the call at the gate failed");
    }
    return {};
  }

 private:
  const DriverOp gated_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> armed_{false};
  bool entered_ = false;
  bool fail_waiting_ = false;
  std::thread::id only_{}, also_{};
  int held_ = 0;  // calls waiting at the gate
  int pass_ = 0;
};

// A host heap whose door is a GatedBackend stopping calls of `gated` (null heap if creation failed).
struct GatedHeap {
  GatedBackend* gate = nullptr;
  std::unique_ptr<Heap> heap;
  explicit GatedHeap(Config c, DriverOp gated = DriverOp::map) {
    auto door = std::make_unique<GatedBackend>(open_host_backend(c.capacity), gated);
    gate = door.get();
    auto h = Heap::create(std::move(door), c);
    EXPECT_TRUE(h.ok()) << h.error().to_string();
    if (h.ok()) heap = std::move(h).value();
  }
};

}  // namespace valet::test
