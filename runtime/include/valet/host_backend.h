// The host backend: a real emulation of CUDA VMM on Linux, so every heap test runs without a GPU.
//
// Physical pages are 2 MiB ranges of one memfd (committed with fallocate at create, returned to
// the OS with a punched hole at release, except for a bounded number of released pages whose
// memory is kept for the next creates); reserve is mmap(PROT_NONE); map is
// mmap(MAP_SHARED|MAP_FIXED) of the page's range with no access; set_access is mprotect(RW);
// unmap puts an anonymous PROT_NONE mapping back. The backend keeps its own page table and
// refuses what CUDA refuses. Touching unmapped memory faults (SIGSEGV), as on a GPU.
// Streams are worker threads: queued copies, fills and host tasks run asynchronously, in order,
// after an optional injected delay, so ordering bugs show on the CPU.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "valet/backend.h"

namespace valet {

struct HostBackendOptions {
  // The emulated device memory: create_page and create_chunk fail with out_of_memory past it.
  std::size_t capacity_bytes = std::size_t{2} << 30;
  // Each queued task (copy, fill, verify, host task) sleeps this long before it runs.
  std::chrono::microseconds task_delay{0};
  // Released pages whose memory the emulation keeps (no hole punched) for the next creates, at
  // most this many bytes (and at most the capacity). The driver's create costs 10-23 us a page;
  // the emulation's, for memory that went back to the OS, is an allocation, a zeroing fault of
  // its 4 KiB pages at the first map's access and the hole punch of its release (together about
  // 40 % of a host replay's time), so recycling released memory keeps the emulation's costs
  // near the driver's. A retained page is free in the emulated device's accounting
  // (memory_info, pages_in_use, the capacity), and its bytes are whatever its last owner left,
  // as the driver's uninitialised memory. The memory the emulation holds stays within the most
  // pages in use at once (what it would hold at that peak without retaining): a create takes
  // retained memory of any sizes before new memory (a chunk may be made of several runs of it).
  // 0: every release returns its memory to the OS.
  std::size_t retained_bytes = SIZE_MAX;
  // The page calls (create, map, access grant, unmap, release) take as long as a GPU driver's,
  // one at a time: each holds one lock for its call and spins out the time an NVIDIA H200's
  // driver took for the same call (docs/results/2026-12-04-h200-session21/chunk_costs_h200.txt:
  // per mapping in the range for access grants and unmaps, a chunk's costs by its size), the
  // emulation's own work counted inside it. So a replay on the host shows where a GPU's wall goes
  // (its background threads behind by the driver's time, the driver serializing them), to the
  // order of the card's figures; a spinning call takes a core as the driver's do. A create then
  // leaves its memory to be committed at first touch (the driver's create costs microseconds at
  // any size; the emulation's commit of a large chunk, milliseconds). Off: the emulation's own
  // costs only.
  bool gpu_pace = false;
};

class HostBackend {
 public:
  static constexpr std::size_t kPageSize = kPageBytes;

  explicit HostBackend(HostBackendOptions options = {});
  ~HostBackend();
  HostBackend(const HostBackend&) = delete;
  HostBackend& operator=(const HostBackend&) = delete;

  // Fails (system_error) if the memfd cannot be created; construction itself never throws for
  // that: check status() after constructing.
  Status status() const;

  BackendKind kind() const { return BackendKind::host; }
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

  // Host-only extras, for tests and the host flavour of device work.
  // Queues `task` on `s` as if it were a kernel: it runs after everything queued before it.
  Status enqueue_host_task(Stream s, std::function<void()> task);
  // Changes the injected delay of every task queued from now on.
  void set_task_delay(std::chrono::microseconds delay);
  // Bytes of the memfd that hold memory now (fstat's st_blocks): drops when pages are released
  // past the retained ones.
  std::size_t allocated_bytes() const;
  // Released pages whose memory is kept for the next creates (HostBackendOptions::retained_bytes).
  std::size_t retained_pages() const;
  // Pages created and not yet released.
  std::size_t pages_in_use() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

static_assert(VmmBackend<HostBackend>);

}  // namespace valet
