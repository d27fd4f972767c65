// CudaBackend::State: what one open CUDA backend holds. Private to runtime/src/cuda/; its member
// functions live with the entry points that use them:
//   cuda_backend.cpp   opening and closing (the driver, the context, the kernels)
//   cuda_memory.cpp    the page table (reservations, pages, mappings) and the memory calls
//   cuda_streams.cpp   streams and events
//   cuda_batched.cpp   batched copy, fill and verify (staged items, one launch), read and write
//   staging_pool.*     the staging buffers
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "chunk_mappings.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_driver.h"
#include "cuda/staging_pool.h"

namespace valet::cuda {

inline constexpr std::size_t kPage = CudaBackend::kPageSize;

// The mapping table keeps one word per 2 MiB page, in chunks allocated on first use, so that
// huge reservations cost nothing until they are mapped.
inline constexpr std::size_t kSlotsPerChunk = 1024;

inline constexpr std::size_t kMaxReserveBytes = std::size_t{1} << 46;  // as the host backend
inline constexpr std::size_t kMaxRetiredStreams = 4096;

struct Kernel {
  CUfunction fn = nullptr;
  unsigned max_blocks = 1;  // resident blocks on the whole device: the grid never needs more
};

// `name` from `module`, with the resident blocks of the whole device at `block_threads` threads
// per block.
Result<Kernel> load_kernel(const Driver& d, CUmodule module, const char* name, int sm_count, unsigned block_threads);

// The properties of every physical page: pinned memory of device `ordinal`.
CUmemAllocationProp page_properties(int ordinal);

struct CudaBackend::State {
  const Driver* d = nullptr;
  int ordinal = 0;
  CUdevice device = 0;
  CUcontext ctx = nullptr;
  bool ctx_retained = false;
  std::string device_name;
  CUmodule module = nullptr;
  Kernel k_copy, k_fill, k_verify;
  // Uploads of staged items run here, so that they overlap the work already queued on the
  // caller's stream; that stream waits for the upload's event before the kernel.
  CUstream upload = nullptr;

  // --- Memory bookkeeping (mu) ---
  struct PageRecord {
    CUmemGenericAllocationHandle handle = 0;
    std::uint32_t mappings = 0;
    bool release_pending = false;  // cuMemRelease'd while mapped: forgotten at the last unmap
    std::size_t pages = 1;         // a chunk's pages (create_chunk)
  };
  // A slot is 0 (unmapped) or (page id << 1) | accessible.
  struct Reservation {
    std::size_t bytes = 0;
    std::size_t mapped = 0;  // slots in use
    std::vector<std::unique_ptr<std::uint64_t[]>> chunks;

    std::uint64_t slot(std::size_t i) const {
      const auto& c = chunks[i / kSlotsPerChunk];
      return c ? c[i % kSlotsPerChunk] : 0;
    }
    std::uint64_t& slot_ref(std::size_t i) {
      auto& c = chunks[i / kSlotsPerChunk];
      if (!c) c = std::make_unique<std::uint64_t[]>(kSlotsPerChunk);  // value-initialized: zeros
      return c[i % kSlotsPerChunk];
    }
  };
  // One piece of a page-aligned range that lies inside one reservation.
  struct Run {
    DevicePtr start = 0;
    std::size_t bytes = 0;
    Reservation* r = nullptr;
    std::size_t first = 0;  // first slot
  };
  // A cached reservation for checking many ranges in a row.
  struct Lookup {
    DevicePtr base = 0;
    DevicePtr end = 0;
    const Reservation* r = nullptr;
  };

  mutable std::mutex mu;
  std::map<DevicePtr, Reservation> reservations;
  std::unordered_map<std::uint64_t, PageRecord> pages;
  ChunkMappings chunk_maps;  // mappings of chunks of more than one page
  std::uint64_t next_page = 1;

  // --- Streams and events (work_mu) ---
  std::mutex work_mu;
  // Streams made by create_stream, and those destroyed since, by handle, with the driver's
  // unique stream id (cuStreamGetId), which tells a new stream at a reused address from a stale one.
  std::unordered_map<std::uintptr_t, unsigned long long> own_streams;
  std::unordered_map<std::uintptr_t, unsigned long long> retired_streams;
  std::unordered_set<std::uintptr_t> foreign_streams;  // the caller's, checked once
  std::unordered_set<std::uintptr_t> events;
  int probe[2] = {-1, -1};  // a pipe used to test whether an address is readable

  StagingPool staging;

  ~State();

  // --- The page table (cuda_memory.cpp) ---
  // Precondition: mu held. The reservation holding `a` (and its base), or nullptr.
  Reservation* find_reservation(DevicePtr a, DevicePtr* base);
  // Precondition: mu held; [va, va+bytes) page-aligned and not wrapping. Splits the range into
  // runs inside one reservation each; false if a page is outside every reservation or unmapped.
  bool mapped_runs(DevicePtr va, std::size_t bytes, std::vector<Run>& runs);
  // Precondition: mu held. Is every page of [a, a+n) mapped with access? `c` caches the last
  // reservation seen, which makes batches of ranges in the same reservation cheap.
  Status check_accessible(DevicePtr a, std::size_t n, const char* what, Lookup& c);
  // Precondition: mu held. The fast test behind check_accessible, for batches: true when every
  // page of [a, a+n) is mapped with access.
  bool accessible(DevicePtr a, std::size_t n, Lookup& c);
  // Checks every range of a fill or verify and counts their items.
  Status check_patterns(std::span<const PatternRange> ranges, const char* what, std::uint64_t* items);
  // Precondition: mu held, `at` unmapped from page `id` (chunk_maps still lists the mapping).
  // Forgets that mapping of `id`: for a chunk, at its mapping's first page only.
  void drop_mapping(std::uint64_t id, DevicePtr at);

  // --- Streams and events (cuda_streams.cpp) ---
  // Is the memory at `addr` readable by this process? (write() from it fails with EFAULT if not.)
  // Precondition: work_mu held (the pipe is shared).
  bool readable(std::uintptr_t addr);
  Result<CUstream> stream_of(Stream s, const char* what);
  Result<CUevent> event_of(Event e, const char* what);

  // --- Batched work (cuda_batched.cpp) ---
  // Queues the staged items of `b`: the upload on the upload stream, then on `stream` a wait for
  // it, one kernel launch over `count` items, (for verify) the download of the counter into the
  // header, and the record of b->done. Leaves b->pending set when that record succeeded (b->done
  // then covers the upload too, which the kernel waited for); the caller still owns b.
  Status submit(Staging* b, std::uint64_t count, std::size_t item_size, CUstream stream, const Kernel& k,
                bool with_counter);
  // Cuts `ranges` into `total` items (make_item(range, k) gives item k of a range), stages them and
  // launches kernel `k` once per staging buffer (once, unless the batch is huge or memory is
  // short). With `mismatches`, the kernel counts into the header and each launch is waited for.
  template <class Item, class Range, class MakeItem>
  Status run_batched(std::span<const Range> ranges, std::uint64_t total, CUstream stream, const Kernel& k,
                     MakeItem make_item, std::uint64_t* mismatches);
};

}  // namespace valet::cuda
