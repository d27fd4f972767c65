// The CUDA backend's concrete class (VmmBackend); open_cuda_backend (valet/cuda_backend.h) wraps
// it in BackendModel<CudaBackend>.
//
// - Memory: each physical page is one cuMemCreate handle of 2 MiB (pinned device memory of this
//   device); reserve is cuMemAddressReserve aligned to 2 MiB; map is cuMemMap at offset 0; access is
//   cuMemSetAccess (read/write for this device). The backend keeps its own table of reservations,
//   pages and mappings and refuses, with the host backend's error codes, what the driver would
//   refuse (or, for copies into unmapped memory, what would kill the context).
// - Work: Stream{0} is the legacy default stream (CU_STREAM_LEGACY); streams from create_stream
//   are non-blocking CUstreams; any other value is taken as a CUstream of this device's primary
//   context made by the caller (e.g. by the CUDA runtime) and used as is once checked.
// - Batched copy, fill and verify: the ranges are cut into items (valet/kernels/work_items.h),
//   staged in pinned host memory, copied to a device buffer with cuMemcpyHtoDAsync on the same
//   stream and processed by one kernel launch per staging buffer. Staging buffers come from a
//   small pool and are reused once an event recorded after their kernel has completed.
// - Every entry point makes the device's primary context current on the calling thread (or
//   pushes it for the call when another context is current).
#pragma once

#include <memory>
#include <span>
#include <string>

#include "valet/backend.h"

namespace valet::cuda {

class CudaBackend {
 public:
  static constexpr std::size_t kPageSize = kPageBytes;

  struct State;

  // Opens device `ordinal`: loads the driver, retains the primary context, checks VMM support
  // and the 2 MiB granularity, loads the kernels. Errc::unsupported when there is no driver or
  // no such device (or no VMM, or another granularity); driver_error otherwise.
  static Result<std::unique_ptr<State>> open(int ordinal);

  explicit CudaBackend(std::unique_ptr<State> state);
  ~CudaBackend();
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  BackendKind kind() const { return BackendKind::cuda; }
  std::string name() const;
  std::size_t granularity() const { return kPageSize; }
  Capabilities capabilities() const;
  Result<MemoryInfo> memory_info();

  Result<DevicePtr> reserve(std::size_t bytes);
  Status unreserve(DevicePtr va, std::size_t bytes);
  Result<PhysicalPage> create_page();
  Result<PhysicalPage> create_chunk(std::size_t pages);
  Status release_page(PhysicalPage page);
  Status map(DevicePtr va, PhysicalPage page);
  Status unmap(DevicePtr va, std::size_t bytes);
  Status set_access(DevicePtr va, std::size_t bytes);

  Result<Stream> create_stream();
  Status destroy_stream(Stream s);
  Result<Event> create_event();
  Status destroy_event(Event e);
  Status record_event(Event e, Stream s);
  Result<bool> query_event(Event e);
  Status synchronize_event(Event e);
  Status stream_wait_event(Stream s, Event e);
  Status synchronize_stream(Stream s);

  Status copy(std::span<const CopyRange> ranges, Stream s);
  Status fill_pattern(std::span<const PatternRange> ranges, Stream s);
  Result<std::uint64_t> verify_pattern(std::span<const PatternRange> ranges, Stream s);
  Status read(void* host_dst, DevicePtr src, std::size_t bytes);
  Status write(DevicePtr dst, const void* host_src, std::size_t bytes);

 private:
  std::unique_ptr<State> s_;
};

static_assert(VmmBackend<CudaBackend>);

}  // namespace valet::cuda
