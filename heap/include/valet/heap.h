// The heap users program against: objects named by handles, so that they can move.
//
// Error convention: every fallible call returns Result<T> or Status (valet/result.h); nothing
// throws except Result::value() on a failed result. Errors per call:
//   allocate  invalid_argument (0 bytes, or more than 2^48), out_of_memory (the message says what
//             was asked, what is live and what is held), out_of_address_space, shut_down
//   free      invalid_handle (null / unknown index), stale_handle (freed already: double free),
//             foreign_handle (made by another heap), pinned (a pin is held), shut_down
//   resize    as free, plus invalid_argument (0 bytes) and out_of_memory; a pinned object is
//             never resized (pinned). On failure the object is unchanged.
//   pin       as free (pin of a freed object: stale_handle)
//   allocate_fixed  as allocate; a fixed object's resize fails with pinned
// Every call is thread-safe. After any error the heap is consistent (validate() passes).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "valet/backend.h"
#include "valet/config.h"
#include "valet/counting_backend.h"
#include "valet/handle.h"
#include "valet/kernels/handle_table.h"
#include "valet/result.h"
#include "valet/stats.h"

namespace valet {

class Heap;
namespace detail {
struct HeapCore;
struct HeapInternals;  // tests' access to a heap's components (heap/src/heap_core.h)
}

// A host pin: while it lives the object stays at address() (the compactor never moves or unmaps
// a pinned object). Move-only; destroying or reset()ting it unpins.
class Pin {
 public:
  Pin() = default;
  Pin(Pin&& other) noexcept { *this = std::move(other); }
  Pin& operator=(Pin&& other) noexcept;
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  ~Pin() { reset(); }

  DevicePtr address() const { return address_; }
  std::size_t size() const { return size_; }
  Handle handle() const { return handle_; }
  bool valid() const { return core_ != nullptr; }
  // True where host code may dereference address(): the heap's backend reports
  // capabilities().host_accessible (the host emulation does; CUDA device memory does not). False
  // for an empty pin.
  bool host_accessible() const;
  // Host access, typed: the object's memory as T*, or nullptr where host_accessible() is false
  // (dereferencing device memory on the host would fault). Device code takes address() instead,
  // e.g. reinterpret_cast<float*>(pin.address()) as a kernel's argument.
  template <class T>
  T* as() const {
    return host_accessible() ? reinterpret_cast<T*>(address_) : nullptr;
  }
  // as<T>() as a span of whole Ts: empty where as<T>() is nullptr.
  template <class T>
  std::span<T> span() const {
    T* first = as<T>();
    return first ? std::span<T>(first, size_ / sizeof(T)) : std::span<T>();
  }
  void reset();

 private:
  friend class Heap;
  friend struct detail::HeapCore;
  detail::HeapCore* core_ = nullptr;
  Handle handle_{};
  DevicePtr address_ = 0;
  std::size_t size_ = 0;
};

// A stream-ordered pin: the object stays at address() for work queued on `stream` until
// release() (or destruction) — and, after that, until the stream has passed the point of the
// release (an event recorded there), so work already queued against the object finishes first.
class StreamPin {
 public:
  StreamPin() = default;
  StreamPin(StreamPin&& other) noexcept { *this = std::move(other); }
  StreamPin& operator=(StreamPin&& other) noexcept;
  StreamPin(const StreamPin&) = delete;
  StreamPin& operator=(const StreamPin&) = delete;
  ~StreamPin() { (void)release(); }

  DevicePtr address() const { return address_; }
  std::size_t size() const { return size_; }
  Handle handle() const { return handle_; }
  Stream stream() const { return stream_; }
  bool valid() const { return core_ != nullptr; }
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(address_);
  }
  // Unpins at the current end of the stream. Fails only if the backend cannot record an event
  // (the pin then falls back to waiting for the stream, so the object is never unpinned early).
  Status release();

 private:
  friend class Heap;
  friend struct detail::HeapCore;
  detail::HeapCore* core_ = nullptr;
  Handle handle_{};
  Stream stream_{};
  DevicePtr address_ = 0;
  std::size_t size_ = 0;
};

// A pin of the whole handle table for device-side handle resolution (kernels/include/valet/
// kernels/handle_table.h): kernels queued on `stream` may resolve any handle that was live when
// the scope was taken. While the scope lives, and until `stream` has passed its release, the heap
// moves no object (compaction skips its cycles; a resize that would move an object fails with
// Errc::pinned), so a kernel never reads a stale or half-copied object. Move-only.
class TableScope {
 public:
  TableScope() = default;
  TableScope(TableScope&& other) noexcept { *this = std::move(other); }
  TableScope& operator=(TableScope&& other) noexcept;
  TableScope(const TableScope&) = delete;
  TableScope& operator=(const TableScope&) = delete;
  ~TableScope() { (void)release(); }

  // The launch argument for kernels that resolve handles.
  const kernels::DeviceHandleTable& table() const { return table_; }
  Stream stream() const { return stream_; }
  bool valid() const { return core_ != nullptr; }
  // Ends the scope at the current end of the stream.
  Status release();

 private:
  friend class Heap;
  detail::HeapCore* core_ = nullptr;
  Stream stream_{};
  kernels::DeviceHandleTable table_{};
};

// One compaction cycle's limits.
struct CompactRequest {
  std::uint64_t max_bytes = ~0ull;   // bytes moved at most
  std::uint64_t max_pages = ~0ull;   // pages freed at most
  // Pages are candidates when their occupancy is at most this fraction.
  double max_occupancy = 0.75;
  CompactionTrigger trigger = CompactionTrigger::explicit_request;
  // Meshing folds pairs of slab pages whose taken slots do not overlap onto one physical page
  // (no address changes); evacuation moves objects out of sparse pages. A cycle meshes first.
  // Both count against max_bytes (bytes copied) and max_pages (pages given back).
  bool mesh = true;
  bool evacuate = true;
  // The caller vouches that no queued device work and no host access touches the heap during
  // the call (e.g. after torch.cuda.synchronize()): meshing may then fold the pages of fixed
  // objects too (their addresses stay; their physical pages change). Evacuation never moves a
  // fixed object.
  bool safe_point = false;
};

// A fixed object (for raw-pointer users, e.g. PyTorch tensors): compaction never moves it and
// resize refuses it, so `address` stays valid until it is freed. Meshing may fold its page onto
// another physical page beneath the same address, only in a compaction at a safe point
// (CompactRequest::safe_point). Freed with Heap::free(handle) or Heap::free(handle, stream).
struct FixedObject {
  Handle handle{};
  DevicePtr address = 0;
  std::size_t size = 0;
};

class Heap {
 public:
  // Makes a heap on `backend` (runtime's open_heap() opens the backend its BackendOptions choose,
  // then calls this).
  static Result<std::unique_ptr<Heap>> create(std::unique_ptr<Backend> backend, const Config& config);
  // Shuts down (see shutdown()). Destroying a heap while pins are held aborts the process with a
  // message on stderr: the pins' memory would otherwise be freed under them.
  ~Heap();
  Heap(const Heap&) = delete;
  Heap& operator=(const Heap&) = delete;

  // Allocates an object of `bytes`. With Config::background_misses (the default) an object that
  // needs new pages may be pending: its pages are mapped by the heap's thread, and its first pin
  // (host or stream) waits until then (with Config::pins_serve_misses, a miss the thread has not
  // begun is mapped by the pinning thread); otherwise it is mapped and accessible at return. Either
  // way the handle may be freed, resized or pinned at once.
  Result<Handle> allocate(std::size_t bytes);
  // The same with `stream` as the stream whose work uses the object: memory that free(h, stream)
  // gave back on the same stream is reused at once (stream order makes that safe).
  Result<Handle> allocate(std::size_t bytes, Stream stream);
  // A fixed object of `bytes` (see FixedObject), placed like any other (shared tails included).
  // Every slab class that a multiple of 512 bytes maps to is a multiple of 512 and large objects
  // start on a page, so a request rounded up to 512 bytes gets a 512-byte-aligned address.
  Result<FixedObject> allocate_fixed(std::size_t bytes, Stream stream = {});
  Status free(Handle h);
  // Stream-ordered free: the handle dies now. Later allocations on `stream` may reuse the memory
  // at once; other streams, the compactor and page release only after the work queued on
  // `stream` before this call has completed (an event recorded on it; one event covers all the
  // frees a stream accumulated, up to Config::stream_cache_bytes). The stream must stay alive
  // until that work has completed.
  Status free(Handle h, Stream stream);
  // Call before destroying a stream on which objects were freed (free(h, stream)): covers the
  // stream's cached frees with an event recorded now and waits for any such record in flight,
  // so that the heap never touches the stream afterwards (the events complete on their own; a
  // stream the backend no longer knows gives its frees back to everyone). No frees on `stream`
  // may race with this call. Errors: shut_down; the backend's record error (the frees then stay
  // cached, and the stream must not be destroyed before a call succeeds).
  Status flush_stream(Stream stream);
  // Changes the object's size, keeping its first min(old, new) bytes and its handle. Large
  // objects grow and shrink in place by mapping pages at their end, or move by remapping their
  // pages (no copy); small objects move by copy when they change size class.
  Status resize(Handle h, std::size_t bytes);
  Result<Pin> pin(Handle h);
  Result<StreamPin> pin(Handle h, Stream stream);
  Result<std::size_t> size_of(Handle h) const;
  // Uploads the handle table (if it changed) and pins it for kernels queued on `stream`.
  Result<TableScope> pin_table(Stream stream);

  // One synchronous compaction cycle (meshing, then evacuation) within the request's budget.
  Result<CompactionRecord> compact(const CompactRequest& request = {});

  HeapStats stats() const;
  // Per size class, the occupancy of every slab page (a snapshot, for compaction planners).
  std::vector<ClassOccupancy> occupancy() const;
  // Shared tails: for each large object whose last page has room for a slab page, the bytes it
  // uses there (a snapshot, for planners: a slab page on that tail would have its slots above
  // those bytes).
  std::vector<std::uint32_t> open_tail_bytes() const;
  // Every slot of the arena that is in use, in address order (a snapshot, for maps and tools).
  std::vector<PageInfo> page_map() const;
  // Walks every invariant; internal error naming the first broken one.
  Status validate() const;
  // Brings the page reserve between its watermarks now.
  Status maintain();

  // Frees every object and gives every page and the address space back to the backend.
  // Refused (pinned, nothing changed) while host pins are held; pending stream-ordered unpins
  // are waited for. Afterwards every call fails with shut_down; handles are dead.
  Status shutdown();
  bool is_shut_down() const;

  Backend& backend();
  // The counting door every driver call of this heap goes through: ThreadDriverCalls over it
  // tells how many driver calls one thread made in a window (valet/counting_backend.h).
  const CountingBackend& driver_calls() const;
  // Nanoseconds the calling thread has waited for a heap lock (of any heap) that another thread
  // held, since the thread started; a diagnostic: the difference across a call is that call's
  // wait for other threads' critical sections.
  static std::uint64_t this_thread_lock_wait_ns();
  // The same waits by who held the lock when each began: other callers (allocations, frees, pins,
  // stats), the heap's mapper thread, its keeper thread, compaction (Heap::compact, on any thread).
  struct LockWaitsByHolder {
    std::uint64_t callers_ns = 0, mapper_ns = 0, keeper_ns = 0, compaction_ns = 0;
  };
  static LockWaitsByHolder this_thread_lock_wait_by_holder();
  // Allocations of the calling thread (on any heap) that returned pending, their runs (or, for a
  // small object that needed a new slab page, its place) left to the heap's mapper
  // (Config::background_misses), since the thread started; a diagnostic: the
  // difference across an allocate says whether that allocation missed.
  static std::uint64_t this_thread_background_misses();
  const Config& config() const;
  std::uint32_t tag() const;

 private:
  explicit Heap(std::unique_ptr<detail::HeapCore> core);
  friend struct detail::HeapInternals;
  std::unique_ptr<detail::HeapCore> core_;
};

}  // namespace valet
