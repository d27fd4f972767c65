// The one base of every backend decorator (RMM's resource adaptors in spirit): it forwards every
// call to an inner Backend, and calls one hook, before(op), ahead of each door call, and for a
// decorator that asks for it (time_calls()) a second, after(op, took), once the call returned.
// A decorator overrides these only, so the door's operations are spelled out here and nowhere
// else: FaultInjectingBackend (runtime/) fails and delays calls from before(), CountingBackend
// (valet/counting_backend.h) counts them there and times them in after().
//
// before() runs on the calling thread, with no lock of the adaptor held. An error it returns
// fails the call without forwarding it, exactly as if the driver had refused it. The device
// tools (DeviceTools) are forwarded with no hook: they are not driver calls of the heap.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "valet/backend.h"
#include "valet/driver_op.h"

namespace valet {

class BackendAdaptor : public Backend {
 public:
  explicit BackendAdaptor(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  Backend& inner() { return *inner_; }
  const Backend& inner() const { return *inner_; }

  // The door: the hook, then the inner backend.
  std::string name() const override { return inner_->name(); }
  std::size_t granularity() const final { return inner_->granularity(); }
  Capabilities capabilities() const final { return inner_->capabilities(); }
  Result<MemoryInfo> memory_info() final {
    return guarded(DriverOp::memory_info, [&] { return inner_->memory_info(); });
  }
  Result<DevicePtr> reserve(std::size_t bytes) final {
    return guarded(DriverOp::reserve, [&] { return inner_->reserve(bytes); });
  }
  Status unreserve(DevicePtr va, std::size_t bytes) final {
    return guarded(DriverOp::unreserve, [&] { return inner_->unreserve(va, bytes); });
  }
  Result<PhysicalPage> create_page() final {
    return guarded(DriverOp::create_page, [&] { return inner_->create_page(); });
  }
  Result<PhysicalPage> create_chunk(std::size_t pages) final {
    return guarded(DriverOp::create_page, [&] { return inner_->create_chunk(pages); });
  }
  Status release_page(PhysicalPage p) final {
    return guarded(DriverOp::release_page, [&] { return inner_->release_page(p); });
  }
  Status map(DevicePtr va, PhysicalPage p) final {
    return guarded(DriverOp::map, [&] { return inner_->map(va, p); });
  }
  Status unmap(DevicePtr va, std::size_t bytes) final {
    return guarded(DriverOp::unmap, [&] { return inner_->unmap(va, bytes); });
  }
  Status set_access(DevicePtr va, std::size_t bytes) final {
    return guarded(DriverOp::set_access, [&] { return inner_->set_access(va, bytes); });
  }
  Result<Stream> create_stream() final {
    return guarded(DriverOp::create_stream, [&] { return inner_->create_stream(); });
  }
  Status destroy_stream(Stream s) final {
    return guarded(DriverOp::destroy_stream, [&] { return inner_->destroy_stream(s); });
  }
  Status synchronize_stream(Stream s) final {
    return guarded(DriverOp::synchronize_stream, [&] { return inner_->synchronize_stream(s); });
  }
  Result<Event> create_event() final {
    return guarded(DriverOp::create_event, [&] { return inner_->create_event(); });
  }
  Status destroy_event(Event e) final {
    return guarded(DriverOp::destroy_event, [&] { return inner_->destroy_event(e); });
  }
  Status record_event(Event e, Stream s) final {
    return guarded(DriverOp::record_event, [&] { return inner_->record_event(e, s); });
  }
  Result<bool> query_event(Event e) final {
    return guarded(DriverOp::query_event, [&] { return inner_->query_event(e); });
  }
  Status synchronize_event(Event e) final {
    return guarded(DriverOp::synchronize_event, [&] { return inner_->synchronize_event(e); });
  }
  Status copy(std::span<const CopyRange> r, Stream s) final {
    return guarded(DriverOp::copy, [&] { return inner_->copy(r, s); });
  }
  Status write(DevicePtr dst, const void* src, std::size_t n) final {
    return guarded(DriverOp::write, [&] { return inner_->write(dst, src, n); });
  }

  // The tools: forwarded as they are.
  BackendKind kind() const final { return inner_->kind(); }
  Status stream_wait_event(Stream s, Event e) final { return inner_->stream_wait_event(s, e); }
  Status fill_pattern(std::span<const PatternRange> r, Stream s) final { return inner_->fill_pattern(r, s); }
  Result<std::uint64_t> verify_pattern(std::span<const PatternRange> r, Stream s) final {
    return inner_->verify_pattern(r, s);
  }
  Status read(void* dst, DevicePtr src, std::size_t n) final { return inner_->read(dst, src, n); }

 protected:
  // Called once ahead of every door call, on the caller's thread. The default lets every call
  // through. An error fails the call with that error, and the inner backend never sees it.
  virtual Status before(DriverOp op) {
    (void)op;
    return {};
  }
  // Called once a door call that before() let through returned (whatever it returned), with the
  // time the inner backend took, on the caller's thread; only for a decorator that called
  // time_calls() in its constructor (the clock is read for no other).
  virtual void after(DriverOp op, std::chrono::nanoseconds took) {
    (void)op;
    (void)took;
  }
  void time_calls() { times_calls_ = true; }

 private:
  template <class Call>
  auto guarded(DriverOp op, Call&& call) -> decltype(call()) {
    if (Status st = before(op); !st.ok()) return st.error();
    if (!times_calls_) return call();
    const auto t0 = std::chrono::steady_clock::now();
    auto r = call();
    after(op, std::chrono::steady_clock::now() - t0);
    return r;
  }

  std::unique_ptr<Backend> inner_;
  bool times_calls_ = false;
};

}  // namespace valet
