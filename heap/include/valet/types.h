// Plain value types shared by the backend interface and the heap.
#pragma once

#include <cstddef>
#include <cstdint>

namespace valet {

// The unit of physical memory and of every mapping: one 2 MiB page (the granularity of CUDA VMM
// allocations on current GPUs, and what the host emulation copies). The one definition.
inline constexpr std::size_t kPageBytes = std::size_t{2} << 20;

// An address in the backend's memory: a CUdeviceptr on CUDA, a process address on the host backend.
using DevicePtr = std::uintptr_t;

// One physical page (cuMemCreate handle on CUDA, a memfd offset on the host). Opaque to the heap.
struct PhysicalPage {
  std::uint64_t id = 0;
  friend bool operator==(PhysicalPage, PhysicalPage) = default;
};

// A queue of asynchronous work (CUstream on CUDA). The value 0 is the backend's default stream.
struct Stream {
  std::uintptr_t id = 0;
  friend bool operator==(Stream, Stream) = default;
};

// A marker recorded on a stream; it completes once all work queued before it has finished.
struct Event {
  std::uintptr_t id = 0;
  friend bool operator==(Event, Event) = default;
};

// One range of a batched copy. Ranges of one batch must not overlap each other (source and
// destination included), since they run in parallel.
struct CopyRange {
  DevicePtr src = 0;
  DevicePtr dst = 0;
  std::size_t bytes = 0;
};

// One range of a pattern fill or verify: byte i of the range holds pattern_byte(seed, i)
// (kernels/include/valet/kernels/pattern.h), whatever the range's alignment.
struct PatternRange {
  DevicePtr dst = 0;
  std::size_t bytes = 0;
  std::uint64_t seed = 0;
};

enum class BackendKind : std::uint8_t { host, cuda };

// What a backend can do. The heap asks these instead of testing which backend it holds.
struct Capabilities {
  bool host_accessible = false;  // the CPU may dereference mapped addresses directly
  bool device_kernels = false;   // device code can run against the memory (GPU)
  bool real_device = false;      // backed by a GPU rather than an emulation
};

struct MemoryInfo {
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
};

}  // namespace valet
