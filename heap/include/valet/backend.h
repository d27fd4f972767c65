// The backend: the heap's only door to memory, and the tools tests use beside it.
//
// Two implementations exist (runtime/): the CUDA driver API and a host emulation of VMM. Each is a
// plain class checked at compile time by the concepts below; programs hold one through the
// type-erased Backend (BackendModel<B> adapts a concrete class), so adaptors such as fault
// injection and call counting (valet/backend_adaptor.h) can wrap any of them. Driver calls cost
// microseconds, so one virtual call on top of them costs nothing that matters.
//
// The interface has two halves:
// - VmmDoor: what the heap calls (reserve, create, map, unmap, set access, release, streams,
//   events, copy, write). Every call of it is one DriverOp (valet/driver_op.h).
// - DeviceTools: what tests, benches and tools call beside the heap (which backend this is, pattern
//   fill and verify, synchronous read, cross-stream waits). The heap never calls these.
// Backend is both, so code that holds a Backend (a heap's backend(), a test) reaches both halves.
//
// Common rules (every implementation):
// - Addresses and lengths of reserve/map/unmap/set_access are multiples of granularity().
// - Nothing is ever half done: a call that fails leaves the backend as it was before the call.
// - Every call is thread-safe.
// - Errors: invalid_argument for a violated precondition the backend can see, invalid_state for
//   what CUDA refuses (mapping onto mapped memory, unmapping or setting access on unmapped
//   memory), not_found for unknown pages/streams/events, out_of_memory when the capacity cannot
//   hold another page, driver_error/system_error when the driver or OS fails (message names the
//   call and its error code).
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "valet/result.h"
#include "valet/types.h"

namespace valet {

// A concrete class that implements the VMM door (see VmmDoor for each call's contract).
template <class B>
concept VmmDoorImpl = requires(B& b, const B& cb, DevicePtr va, std::size_t n, PhysicalPage page,
                               Stream s, Event e, std::span<const CopyRange> copies, const void* chost) {
  { cb.name() } -> std::convertible_to<std::string>;
  { cb.granularity() } -> std::same_as<std::size_t>;
  { cb.capabilities() } -> std::same_as<Capabilities>;
  { b.memory_info() } -> std::same_as<Result<MemoryInfo>>;
  { b.reserve(n) } -> std::same_as<Result<DevicePtr>>;
  { b.unreserve(va, n) } -> std::same_as<Status>;
  { b.create_page() } -> std::same_as<Result<PhysicalPage>>;
  { b.create_chunk(n) } -> std::same_as<Result<PhysicalPage>>;
  { b.release_page(page) } -> std::same_as<Status>;
  { b.map(va, page) } -> std::same_as<Status>;
  { b.unmap(va, n) } -> std::same_as<Status>;
  { b.set_access(va, n) } -> std::same_as<Status>;
  { b.create_stream() } -> std::same_as<Result<Stream>>;
  { b.destroy_stream(s) } -> std::same_as<Status>;
  { b.synchronize_stream(s) } -> std::same_as<Status>;
  { b.create_event() } -> std::same_as<Result<Event>>;
  { b.destroy_event(e) } -> std::same_as<Status>;
  { b.record_event(e, s) } -> std::same_as<Status>;
  { b.query_event(e) } -> std::same_as<Result<bool>>;
  { b.synchronize_event(e) } -> std::same_as<Status>;
  { b.copy(copies, s) } -> std::same_as<Status>;
  { b.write(va, chost, n) } -> std::same_as<Status>;
};

// A concrete class that implements the device tools (see DeviceTools).
template <class B>
concept DeviceToolsImpl = requires(B& b, const B& cb, DevicePtr va, std::size_t n, Stream s, Event e,
                                   std::span<const PatternRange> patterns, void* host) {
  { cb.kind() } -> std::same_as<BackendKind>;
  { b.stream_wait_event(s, e) } -> std::same_as<Status>;
  { b.fill_pattern(patterns, s) } -> std::same_as<Status>;
  { b.verify_pattern(patterns, s) } -> std::same_as<Result<std::uint64_t>>;
  { b.read(host, va, n) } -> std::same_as<Status>;
};

// A whole backend: both halves.
template <class B>
concept VmmBackend = VmmDoorImpl<B> && DeviceToolsImpl<B>;

// The heap's door to memory. Each function documents the contract every implementation keeps.
class VmmDoor {
 public:
  virtual ~VmmDoor() = default;

  // A short description, e.g. "host (memfd emulation)" or "cuda: NVIDIA H100 80GB HBM3".
  virtual std::string name() const = 0;
  // Size of one physical page and the unit of every mapping call (kPageBytes).
  virtual std::size_t granularity() const = 0;
  virtual Capabilities capabilities() const = 0;
  // Free and total memory of the device (host: of the emulated capacity).
  virtual Result<MemoryInfo> memory_info() = 0;

  // Reserves `bytes` (> 0, a multiple of granularity) of virtual address space, aligned to the
  // granularity, with nothing mapped. Fails with out_of_address_space or driver/system errors.
  virtual Result<DevicePtr> reserve(std::size_t bytes) = 0;
  // Returns a whole reservation. Precondition: nothing in it is mapped (else invalid_state).
  virtual Status unreserve(DevicePtr va, std::size_t bytes) = 0;

  // Creates one physical page. out_of_memory when the device (or emulated capacity) is full.
  virtual Result<PhysicalPage> create_page() = 0;
  // Creates one physical allocation of `pages` pages (a chunk; `pages` >= 1, else
  // invalid_argument), in one call whatever its size: a chunk costs about what a page costs
  // (docs/speed.md, session 21). The driver maps, unmaps and grants access to a chunk only as a
  // whole: map() maps all of it, and an unmap or set_access whose range cuts one of its mappings
  // fails with invalid_state, nothing done. It may be mapped at several addresses at once, as a
  // page may; release_page releases all of it. A chunk of one page is a page. Counted at the
  // door as a create_page (the same driver call). out_of_memory when it does not fit.
  virtual Result<PhysicalPage> create_chunk(std::size_t pages) = 0;
  // Releases a page (or a chunk). Its memory goes back to the device once no mapping of it
  // remains. not_found for an unknown or already released page.
  virtual Status release_page(PhysicalPage page) = 0;
  // Maps one page (or a whole chunk) at `va` (inside one reservation, aligned). invalid_state if
  // any page of the range is mapped. A new mapping has no access until set_access.
  virtual Status map(DevicePtr va, PhysicalPage page) = 0;
  // Unmaps [va, va+bytes); every page in it must be mapped and every chunk mapping in it whole
  // (else invalid_state, nothing done). Precondition: no queued work touches the range.
  virtual Status unmap(DevicePtr va, std::size_t bytes) = 0;
  // Grants read/write access to [va, va+bytes); every page in it must be mapped and every chunk
  // mapping in it whole (else invalid_state, nothing done).
  virtual Status set_access(DevicePtr va, std::size_t bytes) = 0;

  // Streams run queued work in order; work on different streams may run concurrently.
  virtual Result<Stream> create_stream() = 0;
  virtual Status destroy_stream(Stream s) = 0;  // waits for the stream's queued work first
  virtual Status synchronize_stream(Stream s) = 0;
  // A new event; never Event{0}, which stands for "no event".
  virtual Result<Event> create_event() = 0;
  virtual Status destroy_event(Event e) = 0;
  // The event completes once everything queued on `s` before this call has completed.
  virtual Status record_event(Event e, Stream s) = 0;
  // true once the last recorded point completed (an event never recorded is complete).
  virtual Result<bool> query_event(Event e) = 0;
  virtual Status synchronize_event(Event e) = 0;

  // Queues one batched copy of every range on `s` (one launch on a GPU). Ranges may have any
  // length from 1 byte and any alignment; they must not overlap each other. The span may be
  // reused as soon as the call returns.
  virtual Status copy(std::span<const CopyRange> ranges, Stream s) = 0;
  // Synchronous copy from host memory to mapped, accessible backend memory, ordered after all
  // work queued on the default stream.
  virtual Status write(DevicePtr dst, const void* host_src, std::size_t bytes) = 0;
};

// What tests, benches and tools use beside the door. The heap never calls these.
class DeviceTools {
 public:
  virtual ~DeviceTools() = default;

  virtual BackendKind kind() const = 0;
  // Work queued on `s` after this call waits until `e`'s recorded point has completed.
  virtual Status stream_wait_event(Stream s, Event e) = 0;
  // Queues a fill of each range with its pattern (see PatternRange).
  virtual Status fill_pattern(std::span<const PatternRange> ranges, Stream s) = 0;
  // Queues a check of each range against its pattern on `s`, waits for it, and returns the
  // number of bytes that differ (0: all match).
  virtual Result<std::uint64_t> verify_pattern(std::span<const PatternRange> ranges, Stream s) = 0;
  // Synchronous copy from mapped, accessible backend memory to host memory, ordered after all
  // work queued on the default stream.
  virtual Status read(void* host_dst, DevicePtr src, std::size_t bytes) = 0;
};

// A whole backend, as the heap is given one and as tests reach it through heap.backend().
class Backend : public VmmDoor, public DeviceTools {};

// Adapts a concrete backend checked by VmmBackend to the Backend interface.
template <VmmBackend B>
class BackendModel final : public Backend {
 public:
  template <class... Args>
  explicit BackendModel(Args&&... args) : impl_(std::forward<Args>(args)...) {}

  B& impl() { return impl_; }

  // The door.
  std::string name() const override { return impl_.name(); }
  std::size_t granularity() const override { return impl_.granularity(); }
  Capabilities capabilities() const override { return impl_.capabilities(); }
  Result<MemoryInfo> memory_info() override { return impl_.memory_info(); }
  Result<DevicePtr> reserve(std::size_t bytes) override { return impl_.reserve(bytes); }
  Status unreserve(DevicePtr va, std::size_t bytes) override { return impl_.unreserve(va, bytes); }
  Result<PhysicalPage> create_page() override { return impl_.create_page(); }
  Result<PhysicalPage> create_chunk(std::size_t pages) override { return impl_.create_chunk(pages); }
  Status release_page(PhysicalPage p) override { return impl_.release_page(p); }
  Status map(DevicePtr va, PhysicalPage p) override { return impl_.map(va, p); }
  Status unmap(DevicePtr va, std::size_t bytes) override { return impl_.unmap(va, bytes); }
  Status set_access(DevicePtr va, std::size_t bytes) override { return impl_.set_access(va, bytes); }
  Result<Stream> create_stream() override { return impl_.create_stream(); }
  Status destroy_stream(Stream s) override { return impl_.destroy_stream(s); }
  Status synchronize_stream(Stream s) override { return impl_.synchronize_stream(s); }
  Result<Event> create_event() override { return impl_.create_event(); }
  Status destroy_event(Event e) override { return impl_.destroy_event(e); }
  Status record_event(Event e, Stream s) override { return impl_.record_event(e, s); }
  Result<bool> query_event(Event e) override { return impl_.query_event(e); }
  Status synchronize_event(Event e) override { return impl_.synchronize_event(e); }
  Status copy(std::span<const CopyRange> r, Stream s) override { return impl_.copy(r, s); }
  Status write(DevicePtr dst, const void* src, std::size_t n) override {
    return impl_.write(dst, src, n);
  }

  // The tools.
  BackendKind kind() const override { return impl_.kind(); }
  Status stream_wait_event(Stream s, Event e) override { return impl_.stream_wait_event(s, e); }
  Status fill_pattern(std::span<const PatternRange> r, Stream s) override {
    return impl_.fill_pattern(r, s);
  }
  Result<std::uint64_t> verify_pattern(std::span<const PatternRange> r, Stream s) override {
    return impl_.verify_pattern(r, s);
  }
  Status read(void* dst, DevicePtr src, std::size_t n) override { return impl_.read(dst, src, n); }

 private:
  B impl_;
};

}  // namespace valet
