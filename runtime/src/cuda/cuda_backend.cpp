#include "cuda/cuda_backend.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../../../kernels/src/descriptors.cuh"  // the kernels' item layout (shared with the .cu)
#include "cuda/cuda_driver.h"
#include "valet/cuda_backend.h"

// The kernels' fatbin, embedded by kernels/CMakeLists.txt (cmake/EmbedFile.cmake).
extern const unsigned char valet_kernels_fatbin[];
extern const std::size_t valet_kernels_fatbin_size;

namespace valet::cuda {
namespace {

using kernels::abi::CopyItem;
using kernels::abi::kBlockThreads;
using kernels::abi::kItemBytes;
using kernels::abi::PatternItem;

constexpr std::size_t kPage = CudaBackend::kPageSize;

// A staging buffer holds a 16-byte header (the verify kernel's mismatch counter, then padding)
// followed by the items of one launch.
constexpr std::size_t kHeaderBytes = 16;
constexpr std::size_t kMinStagingBytes = std::size_t{64} << 10;
constexpr std::size_t kInitialStagingBytes = std::size_t{1} << 20;
constexpr std::size_t kMaxStagingBytes = std::size_t{8} << 20;  // 349525 copy items, 262143 pattern items
constexpr std::size_t kInitialStagingBuffers = 2;
constexpr std::size_t kMaxStagingBuffers = 16;

// The mapping table keeps one word per 2 MiB page, in chunks allocated on first use, so that
// huge reservations cost nothing until they are mapped.
constexpr std::size_t kSlotsPerChunk = 1024;

constexpr std::size_t kMaxReserveBytes = std::size_t{1} << 46;  // as the host backend
constexpr std::size_t kMaxRetiredStreams = 4096;

bool page_aligned(std::uintptr_t v) { return v % kPage == 0; }

std::uint64_t items_of(std::size_t bytes) { return (bytes + kItemBytes - 1) / kItemBytes; }

Error cu_error(const char* call, CUresult r) { return driver_error(call, r); }

// As cu_error, but CUDA_ERROR_OUT_OF_MEMORY becomes `oom_code` with a message that says what ran out.
Error cu_error_oom(const char* call, CUresult r, Errc oom_code, const std::string& what) {
  if (r == CUDA_ERROR_OUT_OF_MEMORY) return make_error(oom_code, what + " (" + call + ": " + result_name(r) + ")");
  return driver_error(call, r);
}

// Makes `ctx` current on the calling thread for the scope: nothing to do when it already is,
// otherwise it is pushed and popped again at the end, so the thread's own context (or none) is
// left as it was.
class ContextScope {
 public:
  ContextScope(const Driver& d, CUcontext ctx) : d_(d) {
    CUcontext current = nullptr;
    CUresult r = d_.cuCtxGetCurrent(&current);
    if (r != CUDA_SUCCESS) {
      status_ = cu_error("cuCtxGetCurrent", r);
      return;
    }
    if (current == ctx) return;
    r = d_.cuCtxPushCurrent(ctx);
    if (r != CUDA_SUCCESS) {
      status_ = cu_error("cuCtxPushCurrent", r);
      return;
    }
    pushed_ = true;
  }
  ~ContextScope() {
    if (pushed_) {
      CUcontext popped = nullptr;
      (void)d_.cuCtxPopCurrent(&popped);
    }
  }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

  const Status& status() const { return status_; }

 private:
  const Driver& d_;
  Status status_;
  bool pushed_ = false;
};

struct Kernel {
  CUfunction fn = nullptr;
  unsigned max_blocks = 1;  // resident blocks on the whole device: the grid never needs more
};

// Pinned host memory and a device buffer of the same size, with the events that say when the
// upload has completed and when all work reading them has.
struct Staging {
  void* host = nullptr;
  CUdeviceptr dev = 0;
  std::size_t capacity = 0;
  CUevent uploaded = nullptr;
  CUevent done = nullptr;
  bool in_use = false;   // owned by a caller (guarded by pool_mu)
  bool pending = false;  // `done` was recorded after work that reads the buffer, not yet seen complete
};

}  // namespace

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

  // --- Staging buffers (pool_mu) ---
  std::mutex pool_mu;
  std::condition_variable pool_cv;
  std::vector<std::unique_ptr<Staging>> pool;

  ~State();

  // Precondition: mu held. The reservation holding `a` (and its base), or nullptr.
  Reservation* find_reservation(DevicePtr a, DevicePtr* base) {
    auto it = reservations.upper_bound(a);
    if (it == reservations.begin()) return nullptr;
    --it;
    if (a - it->first >= it->second.bytes) return nullptr;
    *base = it->first;
    return &it->second;
  }

  // Precondition: mu held; [va, va+bytes) page-aligned and not wrapping. Splits the range into
  // runs inside one reservation each; false if a page is outside every reservation or unmapped.
  bool mapped_runs(DevicePtr va, std::size_t bytes, std::vector<Run>& runs) {
    const DevicePtr end = va + bytes;
    for (DevicePtr p = va; p < end;) {
      DevicePtr base = 0;
      Reservation* r = find_reservation(p, &base);
      if (!r) return false;
      const DevicePtr run_end = std::min<DevicePtr>(end, base + r->bytes);
      const std::size_t first = (p - base) / kPage;
      const std::size_t last = (run_end - base) / kPage;
      for (std::size_t i = first; i < last; ++i)
        if (r->slot(i) == 0) return false;
      runs.push_back(Run{p, run_end - p, r, first});
      p = run_end;
    }
    return true;
  }

  // Precondition: mu held. Is every page of [a, a+n) mapped with access? `c` caches the last
  // reservation seen, which makes batches of ranges in the same reservation cheap.
  Status check_accessible(DevicePtr a, std::size_t n, const char* what, Lookup& c) {
    if (n == 0) return {};
    if (a == 0 || a + n < a)
      return make_error(Errc::invalid_argument, std::string(what) + ": null or wrapping range");
    const DevicePtr last = a + n - 1;
    DevicePtr p = a;
    for (;;) {
      if (p < c.base || p >= c.end) {
        DevicePtr base = 0;
        const Reservation* r = find_reservation(p, &base);
        if (!r)
          return make_error(Errc::invalid_state,
                            std::string(what) + ": range is not mapped with access at " + std::to_string(p));
        c = Lookup{base, base + r->bytes, r};
      }
      const DevicePtr stop = std::min<DevicePtr>(last, c.end - 1);
      for (std::size_t i = (p - c.base) / kPage, e = (stop - c.base) / kPage; i <= e; ++i)
        if ((c.r->slot(i) & 1u) == 0)
          return make_error(Errc::invalid_state, std::string(what) + ": range is not mapped with access at " +
                                                     std::to_string(c.base + i * kPage));
      if (last < c.end) return {};
      p = c.end;
    }
  }

  // Precondition: mu held. The fast test behind check_accessible, for batches: true when every
  // page of [a, a+n) is mapped with access.
  bool accessible(DevicePtr a, std::size_t n, Lookup& c) {
    if (n == 0) return true;
    const DevicePtr last = a + n - 1;
    if (a >= c.base && last < c.end && last >= a && a != 0) {
      for (std::size_t i = (a - c.base) / kPage, e = (last - c.base) / kPage; i <= e; ++i)
        if ((c.r->slot(i) & 1u) == 0) return false;
      return true;
    }
    return check_accessible(a, n, "", c).ok();
  }

  // Checks every range of a fill or verify and counts their items.
  Status check_patterns(std::span<const PatternRange> ranges, const char* what, std::uint64_t* items) {
    std::lock_guard lock(mu);
    Lookup cache;
    std::uint64_t total = 0;
    for (const PatternRange& r : ranges) {
      if (!accessible(r.dst, r.bytes, cache)) VALET_TRY(check_accessible(r.dst, r.bytes, what, cache));
      total += items_of(r.bytes);
    }
    *items = total;
    return {};
  }

  // Precondition: mu held. Forgets one mapping of page `id`.
  void drop_mapping(std::uint64_t id) {
    auto it = pages.find(id);
    if (it == pages.end()) return;
    if (--it->second.mappings == 0 && it->second.release_pending) pages.erase(it);
  }

  // Is the memory at `addr` readable by this process? (write() from it fails with EFAULT if not.)
  // Precondition: work_mu held (the pipe is shared).
  bool readable(std::uintptr_t addr) {
    if (probe[1] < 0) return true;  // no pipe: cannot tell, let the driver judge
    if (::write(probe[1], reinterpret_cast<const void*>(addr), 1) != 1) return false;
    char sink = 0;
    (void)!::read(probe[0], &sink, 1);
    return true;
  }

  Result<CUstream> stream_of(Stream s, const char* what) {
    // 0 and the driver's special handles are always valid.
    if (s.id == 0) return CU_STREAM_LEGACY;
    const auto raw = reinterpret_cast<CUstream>(s.id);
    if (raw == CU_STREAM_LEGACY || raw == CU_STREAM_PER_THREAD) return raw;
    std::lock_guard lock(work_mu);
    if (own_streams.count(s.id) || foreign_streams.count(s.id)) return raw;
    if (auto it = retired_streams.find(s.id); it != retired_streams.end()) {
      // One of ours, destroyed: unless the driver has since put another stream at that address
      // (its unique id then differs). The address held a driver object, so the driver may look.
      unsigned long long uid = 0;
      if (d->cuStreamGetId(raw, &uid) != CUDA_SUCCESS || uid == it->second)
        return make_error(Errc::not_found, std::string(what) + ": unknown stream (destroyed)");
      retired_streams.erase(it);
    } else if (!readable(s.id)) {
      // A stream made by the caller (e.g. with the CUDA runtime) is used if it is a live stream
      // of this device's primary context. The readability test keeps garbage values away from
      // the driver, which would dereference them.
      return make_error(Errc::not_found, std::string(what) + ": unknown stream");
    }
    CUcontext owner = nullptr;
    const CUresult r = d->cuStreamGetCtx(raw, &owner);
    if (r != CUDA_SUCCESS)
      return make_error(Errc::not_found, std::string(what) + ": unknown stream (cuStreamGetCtx: " + result_name(r) + ")");
    if (owner != ctx)
      return make_error(Errc::not_found,
                        std::string(what) + ": the stream belongs to another context than this device's primary one");
    foreign_streams.insert(s.id);
    return raw;
  }

  Result<CUevent> event_of(Event e, const char* what) {
    std::lock_guard lock(work_mu);
    if (!events.count(e.id)) return make_error(Errc::not_found, std::string(what) + ": unknown event");
    return reinterpret_cast<CUevent>(e.id);
  }

  // --- Staging ---

  Result<std::unique_ptr<Staging>> make_staging(std::size_t capacity) {
    auto b = std::make_unique<Staging>();
    b->capacity = capacity;
    CUresult r = d->cuMemHostAlloc(&b->host, capacity, 0);
    if (r != CUDA_SUCCESS)
      return cu_error_oom("cuMemHostAlloc", r, Errc::out_of_memory, "no pinned host memory for a staging buffer");
    r = d->cuMemAlloc(&b->dev, capacity);
    if (r != CUDA_SUCCESS) {
      (void)d->cuMemFreeHost(b->host);
      return cu_error_oom("cuMemAlloc", r, Errc::out_of_memory, "no device memory for a staging buffer");
    }
    r = d->cuEventCreate(&b->done, CU_EVENT_DISABLE_TIMING);
    if (r == CUDA_SUCCESS) {
      r = d->cuEventCreate(&b->uploaded, CU_EVENT_DISABLE_TIMING);
      if (r != CUDA_SUCCESS) (void)d->cuEventDestroy(b->done);
    }
    if (r != CUDA_SUCCESS) {
      (void)d->cuMemFree(b->dev);
      (void)d->cuMemFreeHost(b->host);
      return cu_error("cuEventCreate", r);
    }
    return b;
  }

  // Precondition: no work reads the buffer any more.
  void free_staging(Staging& b) {
    if (b.done) (void)d->cuEventDestroy(b.done);
    if (b.uploaded) (void)d->cuEventDestroy(b.uploaded);
    if (b.dev) (void)d->cuMemFree(b.dev);
    if (b.host) (void)d->cuMemFreeHost(b.host);
    b = Staging{};
  }

  // Takes a staging buffer of at least `want` bytes (<= kMaxStagingBytes), or, when memory is
  // short, one of at least `need` bytes. The caller owns it until release(). Idle buffers whose
  // work has completed are reused; the pool grows up to kMaxStagingBuffers; past that the call
  // waits for the oldest work it finds.
  Result<Staging*> acquire(std::size_t want, std::size_t need) {
    const std::size_t capacity =
        std::min(kMaxStagingBytes, std::bit_ceil(std::max({want, need, kMinStagingBytes})));
    std::unique_lock lock(pool_mu);
    bool short_of_memory = false;
    for (;;) {
      Staging* fit = nullptr;       // idle, complete, big enough: the smallest such
      Staging* fallback = nullptr;  // idle, complete, at least `need`: the largest such
      Staging* smallest = nullptr;  // idle, complete: the smallest (to be replaced)
      Staging* busy = nullptr;      // idle, but its work may still run
      bool any_in_use = false;
      for (auto& up : pool) {
        Staging* b = up.get();
        if (b->in_use) {
          any_in_use = true;
          continue;
        }
        if (b->pending) {
          const CUresult q = d->cuEventQuery(b->done);
          if (q == CUDA_ERROR_NOT_READY) {
            if (!busy) busy = b;
            continue;
          }
          if (q != CUDA_SUCCESS) return cu_error("cuEventQuery", q);
          b->pending = false;
        }
        if (b->capacity >= want && (!fit || b->capacity < fit->capacity)) fit = b;
        if (b->capacity >= need && (!fallback || b->capacity > fallback->capacity)) fallback = b;
        if (!smallest || b->capacity < smallest->capacity) smallest = b;
      }
      if (fit) {
        fit->in_use = true;
        return fit;
      }
      if (!short_of_memory) {
        if (pool.size() >= kMaxStagingBuffers && smallest) {
          // Full: replace an idle buffer that is too small for this call.
          free_staging(*smallest);
          pool.erase(std::find_if(pool.begin(), pool.end(), [&](const auto& p) { return p.get() == smallest; }));
        }
        if (pool.size() < kMaxStagingBuffers) {
          auto made = make_staging(capacity);
          if (made.ok()) {
            Staging* b = made.value().get();
            b->in_use = true;
            pool.push_back(std::move(made.value()));
            return b;
          }
          if (made.code() != Errc::out_of_memory) return made.error();
          short_of_memory = true;  // make do with the buffers there are
          continue;
        }
      } else if (fallback) {
        fallback->in_use = true;
        return fallback;
      }
      if (busy) {
        busy->in_use = true;  // nobody else waits on it or takes it meanwhile
        lock.unlock();
        const CUresult r = d->cuEventSynchronize(busy->done);
        lock.lock();
        busy->in_use = false;
        if (r == CUDA_SUCCESS) busy->pending = false;
        pool_cv.notify_all();
        if (r != CUDA_SUCCESS) return cu_error("cuEventSynchronize", r);
        continue;
      }
      if (any_in_use) {
        pool_cv.wait(lock);
        continue;
      }
      return make_error(Errc::out_of_memory, "no memory for a staging buffer of " + std::to_string(need) + " bytes");
    }
  }

  void release(Staging* b) {
    {
      std::lock_guard lock(pool_mu);
      b->in_use = false;
    }
    pool_cv.notify_all();
  }

  // Queues the staged items of `b`: the upload on the upload stream, then on `stream` a wait for
  // it, one kernel launch over `count` items, (for verify) the download of the counter into the
  // header, and the record of b->done. Leaves b->pending set when that record succeeded (b->done
  // then covers the upload too, which the kernel waited for); the caller still owns b.
  Status submit(Staging* b, std::uint64_t count, std::size_t item_size, CUstream stream, const Kernel& k,
                bool with_counter) {
    const std::size_t bytes = kHeaderBytes + count * item_size;
    CUresult r = d->cuMemcpyHtoDAsync(b->dev, b->host, bytes, upload);
    if (r != CUDA_SUCCESS) return cu_error("cuMemcpyHtoDAsync", r);
    r = d->cuEventRecord(b->uploaded, upload);
    if (r == CUDA_SUCCESS) r = d->cuStreamWaitEvent(stream, b->uploaded, CU_EVENT_WAIT_DEFAULT);
    if (r != CUDA_SUCCESS) {
      // Nothing that reads the buffer is queued on `stream`; let the upload finish.
      (void)d->cuStreamSynchronize(upload);
      return cu_error("cuEventRecord/cuStreamWaitEvent (upload)", r);
    }
    CUdeviceptr items = b->dev + kHeaderBytes;
    unsigned long long n = count;
    CUdeviceptr counter = b->dev;
    void* params[] = {&items, &n, &counter};
    const std::uint64_t warps_per_block = kBlockThreads / 32;
    const auto grid = static_cast<unsigned>(
        std::min<std::uint64_t>((count + warps_per_block - 1) / warps_per_block, k.max_blocks));
    const char* failed = nullptr;
    r = d->cuLaunchKernel(k.fn, grid, 1, 1, kBlockThreads, 1, 1, 0, stream, params, nullptr);
    if (r != CUDA_SUCCESS) {
      failed = "cuLaunchKernel";
    } else if (with_counter) {
      r = d->cuMemcpyDtoHAsync(b->host, b->dev, sizeof(std::uint64_t), stream);
      if (r != CUDA_SUCCESS) failed = "cuMemcpyDtoHAsync";
    }
    // Queued work may read the buffer: it stays unusable until that work is done.
    const CUresult rec = d->cuEventRecord(b->done, stream);
    if (rec == CUDA_SUCCESS) {
      b->pending = true;
    } else {
      (void)d->cuStreamSynchronize(stream);
      if (!failed) {
        failed = "cuEventRecord";
        r = rec;
      }
    }
    if (failed) return cu_error(failed, r);
    return {};
  }

  // Cuts `ranges` into `total` items (make_item(range, k) gives item k of a range), stages them and
  // launches kernel `k` once per staging buffer (once, unless the batch is huge or memory is
  // short). With `mismatches`, the kernel counts into the header and each launch is waited for.
  template <class Item, class Range, class MakeItem>
  Status run_batched(std::span<const Range> ranges, std::uint64_t total, CUstream stream, const Kernel& k,
                     MakeItem make_item, std::uint64_t* mismatches) {
    if (mismatches) *mismatches = 0;
    constexpr std::size_t kMaxItems = (kMaxStagingBytes - kHeaderBytes) / sizeof(Item);
    std::size_t ri = 0;       // the range of the next item
    std::uint64_t next = 0;   // the next item of that range
    while (total > 0) {
      const std::uint64_t want_items = std::min<std::uint64_t>(total, kMaxItems);
      auto got = acquire(kHeaderBytes + want_items * sizeof(Item), kHeaderBytes + sizeof(Item));
      if (!got.ok()) return got.error();
      Staging* b = got.value();
      const std::uint64_t cap = std::min<std::uint64_t>(total, (b->capacity - kHeaderBytes) / sizeof(Item));
      std::memset(b->host, 0, kHeaderBytes);
      auto* out = reinterpret_cast<Item*>(static_cast<unsigned char*>(b->host) + kHeaderBytes);
      std::uint64_t n = 0;
      while (n < cap) {
        const Range& r = ranges[ri];
        if (r.bytes <= kItemBytes && next == 0) {  // the common case: one item, or none
          if (r.bytes) out[n++] = make_item(r, 0);
          ++ri;
          continue;
        }
        const std::uint64_t of_range = items_of(r.bytes);
        const std::uint64_t take = std::min(of_range - next, cap - n);
        for (std::uint64_t i = 0; i < take; ++i) out[n++] = make_item(r, next + i);
        next += take;
        if (next == of_range) {
          ++ri;
          next = 0;
        }
      }
      Status st = submit(b, n, sizeof(Item), stream, k, mismatches != nullptr);
      if (st.ok() && mismatches) {
        const CUresult r = d->cuEventSynchronize(b->done);
        if (r == CUDA_SUCCESS) {
          b->pending = false;
          std::uint64_t bad = 0;
          std::memcpy(&bad, b->host, sizeof bad);
          *mismatches += bad;
        } else {
          st = cu_error("cuEventSynchronize", r);
        }
      }
      release(b);
      if (!st.ok()) return st;
      total -= n;
    }
    return {};
  }
};

CudaBackend::State::~State() {
  if (!d) return;
  if (ctx) {
    ContextScope scope(*d, ctx);
    if (scope.status().ok()) {
      // Finish our own work before freeing what it uses.
      for (const auto& [s, uid] : own_streams) {
        (void)d->cuStreamSynchronize(reinterpret_cast<CUstream>(s));
        (void)d->cuStreamDestroy(reinterpret_cast<CUstream>(s));
      }
      if (upload) (void)d->cuStreamSynchronize(upload);
      for (auto& b : pool) {
        if (b->pending) (void)d->cuEventSynchronize(b->done);
        free_staging(*b);
      }
      pool.clear();
      if (upload) (void)d->cuStreamDestroy(upload);
      for (std::uintptr_t e : events) (void)d->cuEventDestroy(reinterpret_cast<CUevent>(e));
      // Whatever the heap left behind goes back to the device.
      for (auto& [va, r] : reservations) {
        for (std::size_t i = 0; i < r.bytes / kPage; ++i)
          if (r.slot(i)) (void)d->cuMemUnmap(va + i * kPage, kPage);
        (void)d->cuMemAddressFree(va, r.bytes);
      }
      for (auto& [id, rec] : pages)
        if (!rec.release_pending) (void)d->cuMemRelease(rec.handle);
      if (module) (void)d->cuModuleUnload(module);
    }
  }
  if (ctx_retained) (void)d->cuDevicePrimaryCtxRelease(device);
  for (int fd : probe)
    if (fd >= 0) ::close(fd);
}

// ------------------------------------------------------------------------------------------------

namespace {

bool means_no_usable_device(CUresult r) {
  switch (r) {
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_STUB_LIBRARY:  // the toolkit's stub libcuda, not a driver
    case CUDA_ERROR_DEVICE_NOT_LICENSED:
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
    case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE:
    case CUDA_ERROR_SYSTEM_NOT_READY:
    case CUDA_ERROR_NOT_SUPPORTED:
    case CUDA_ERROR_INVALID_DEVICE:
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
      return true;
    default:
      return false;
  }
}

CUmemAllocationProp page_properties(int ordinal) {
  CUmemAllocationProp prop;
  std::memset(&prop, 0, sizeof prop);
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = ordinal;
  return prop;
}

Result<Kernel> load_kernel(const Driver& d, CUmodule module, const char* name, int sm_count) {
  Kernel k;
  CUresult r = d.cuModuleGetFunction(&k.fn, module, name);
  if (r != CUDA_SUCCESS) return driver_error((std::string("cuModuleGetFunction(") + name + ")").c_str(), r);
  int per_sm = 0;
  r = d.cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k.fn, static_cast<int>(kBlockThreads), 0);
  if (r != CUDA_SUCCESS) return cu_error("cuOccupancyMaxActiveBlocksPerMultiprocessor", r);
  k.max_blocks = static_cast<unsigned>(std::max(1, per_sm) * std::max(1, sm_count));
  return k;
}

}  // namespace

Result<std::unique_ptr<CudaBackend::State>> CudaBackend::open(int ordinal) {
  auto loaded = load_driver();
  if (!loaded.ok()) return loaded.error();
  const Driver& d = *loaded.value();

  CUresult r = d.cuInit(0);
  if (r != CUDA_SUCCESS) {
    if (means_no_usable_device(r))
      return make_error(Errc::unsupported, "no usable CUDA device (cuInit: " + result_name(r) + ")");
    return cu_error("cuInit", r);
  }
  int count = 0;
  r = d.cuDeviceGetCount(&count);
  if (r != CUDA_SUCCESS) return cu_error("cuDeviceGetCount", r);
  if (ordinal < 0 || ordinal >= count)
    return make_error(Errc::unsupported, "no CUDA device " + std::to_string(ordinal) + " (the driver sees " +
                                             std::to_string(count) + ")");

  auto s = std::make_unique<State>();
  s->d = &d;
  s->ordinal = ordinal;
  VALET_CU("cuDeviceGet", d.cuDeviceGet(&s->device, ordinal));
  int vmm = 0;
  VALET_CU("cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)",
           d.cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, s->device));
  if (!vmm)
    return make_error(Errc::unsupported,
                      "CUDA device " + std::to_string(ordinal) + " does not support virtual memory management");
  int sm_count = 0;
  VALET_CU("cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)",
           d.cuDeviceGetAttribute(&sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, s->device));
  char name[256] = {};
  VALET_CU("cuDeviceGetName", d.cuDeviceGetName(name, static_cast<int>(sizeof name) - 1, s->device));
  s->device_name = name;

  VALET_CU("cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(&s->ctx, s->device));
  s->ctx_retained = true;  // from here on ~State releases it
  ContextScope scope(d, s->ctx);
  VALET_TRY(scope.status());

  const CUmemAllocationProp prop = page_properties(ordinal);
  std::size_t granularity = 0;
  VALET_CU("cuMemGetAllocationGranularity",
           d.cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  if (granularity != kPage)
    return make_error(Errc::unsupported, "CUDA device " + std::to_string(ordinal) + " maps memory in units of " +
                                             std::to_string(granularity) + " bytes; Valet needs 2 MiB");

  (void)valet_kernels_fatbin_size;  // the fatbin's header tells the driver its size
  r = d.cuModuleLoadData(&s->module, valet_kernels_fatbin);
  if (r == CUDA_ERROR_NO_BINARY_FOR_GPU || r == CUDA_ERROR_UNSUPPORTED_PTX_VERSION)
    return make_error(Errc::unsupported, "Valet's kernels have no code for CUDA device " + std::to_string(ordinal) +
                                             " (" + s->device_name + "; cuModuleLoadData: " + result_name(r) + ")");
  if (r != CUDA_SUCCESS) return cu_error("cuModuleLoadData", r);
  auto kc = load_kernel(d, s->module, "valet_batched_copy", sm_count);
  if (!kc.ok()) return kc.error();
  auto kf = load_kernel(d, s->module, "valet_fill_pattern", sm_count);
  if (!kf.ok()) return kf.error();
  auto kv = load_kernel(d, s->module, "valet_verify_pattern", sm_count);
  if (!kv.ok()) return kv.error();
  s->k_copy = kc.value();
  s->k_fill = kf.value();
  s->k_verify = kv.value();

  if (::pipe2(s->probe, O_CLOEXEC | O_NONBLOCK) != 0) s->probe[0] = s->probe[1] = -1;
  VALET_CU("cuStreamCreate", d.cuStreamCreate(&s->upload, CU_STREAM_NON_BLOCKING));

  // A few staging buffers from the start, so that batches work even once the heap has taken
  // (almost) all device memory.
  for (std::size_t i = 0; i < kInitialStagingBuffers; ++i) {
    auto b = s->make_staging(kInitialStagingBytes);
    if (!b.ok()) return b.error();
    s->pool.push_back(std::move(b.value()));
  }
  return s;
}

CudaBackend::CudaBackend(std::unique_ptr<State> state) : s_(std::move(state)) {}

CudaBackend::~CudaBackend() = default;

// Makes the primary context current for the rest of the calling function, or returns its error.
#define VALET_CUDA_SCOPE()                  \
  ContextScope valet_scope_(*s_->d, s_->ctx); \
  VALET_TRY(valet_scope_.status())

std::string CudaBackend::name() const { return "cuda: " + s_->device_name; }

Capabilities CudaBackend::capabilities() const {
  return Capabilities{.host_accessible = false, .device_kernels = true, .real_device = true};
}

Result<MemoryInfo> CudaBackend::memory_info() {
  VALET_CUDA_SCOPE();
  std::size_t free_bytes = 0, total_bytes = 0;
  VALET_CU("cuMemGetInfo", s_->d->cuMemGetInfo(&free_bytes, &total_bytes));
  return MemoryInfo{free_bytes, total_bytes};
}

// --- Virtual address space and physical pages ---------------------------------------------------

Result<DevicePtr> CudaBackend::reserve(std::size_t bytes) {
  if (bytes == 0 || bytes % kPage != 0)
    return make_error(Errc::invalid_argument, "reserve: size must be a non-zero multiple of 2 MiB");
  if (bytes > kMaxReserveBytes) return make_error(Errc::out_of_address_space, "reserve: more than 64 TiB asked");
  VALET_CUDA_SCOPE();
  CUdeviceptr va = 0;
  const CUresult r = s_->d->cuMemAddressReserve(&va, bytes, kPage, 0, 0);
  if (r != CUDA_SUCCESS)
    return cu_error_oom("cuMemAddressReserve", r, Errc::out_of_address_space,
                        "reserve: no virtual address range of " + std::to_string(bytes) + " bytes");
  State::Reservation res;
  res.bytes = bytes;
  res.chunks.resize((bytes / kPage + kSlotsPerChunk - 1) / kSlotsPerChunk);
  std::lock_guard lock(s_->mu);
  s_->reservations.emplace(static_cast<DevicePtr>(va), std::move(res));
  return static_cast<DevicePtr>(va);
}

Status CudaBackend::unreserve(DevicePtr va, std::size_t bytes) {
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  auto it = s_->reservations.find(va);
  if (it == s_->reservations.end() || it->second.bytes != bytes)
    return make_error(Errc::not_found, "unreserve: not a reservation of this size");
  if (it->second.mapped > 0) return make_error(Errc::invalid_state, "unreserve: the range still has mapped pages");
  VALET_CU("cuMemAddressFree", s_->d->cuMemAddressFree(va, bytes));
  s_->reservations.erase(it);
  return {};
}

Result<PhysicalPage> CudaBackend::create_page() {
  VALET_CUDA_SCOPE();
  const CUmemAllocationProp prop = page_properties(s_->ordinal);
  CUmemGenericAllocationHandle handle = 0;
  const CUresult r = s_->d->cuMemCreate(&handle, kPage, &prop, 0);
  if (r != CUDA_SUCCESS)
    return cu_error_oom("cuMemCreate", r, Errc::out_of_memory,
                        "create_page: the device has no memory left for another 2 MiB page");
  std::lock_guard lock(s_->mu);
  const std::uint64_t id = s_->next_page++;
  s_->pages.emplace(id, State::PageRecord{handle, 0, false});
  return PhysicalPage{id};
}

Status CudaBackend::release_page(PhysicalPage page) {
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  auto it = s_->pages.find(page.id);
  if (it == s_->pages.end() || it->second.release_pending)
    return make_error(Errc::not_found, "release_page: unknown or already released page");
  // The driver keeps the memory until the last mapping goes away.
  VALET_CU("cuMemRelease", s_->d->cuMemRelease(it->second.handle));
  if (it->second.mappings > 0) {
    it->second.release_pending = true;
  } else {
    s_->pages.erase(it);
  }
  return {};
}

Status CudaBackend::map(DevicePtr va, PhysicalPage page) {
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  auto it = s_->pages.find(page.id);
  if (it == s_->pages.end() || it->second.release_pending)
    return make_error(Errc::not_found, "map: unknown or released page");
  DevicePtr base = 0;
  State::Reservation* r = page_aligned(va) ? s_->find_reservation(va, &base) : nullptr;
  if (!r) return make_error(Errc::invalid_argument, "map: address not aligned or not inside a reservation");
  const std::size_t index = (va - base) / kPage;
  if (r->slot(index) != 0) return make_error(Errc::invalid_state, "map: the address is already mapped");
  const CUresult res = s_->d->cuMemMap(va, kPage, 0, it->second.handle, 0);
  if (res != CUDA_SUCCESS)
    return cu_error_oom("cuMemMap", res, Errc::out_of_memory, "map: the device has no memory left for the mapping");
  r->slot_ref(index) = page.id << 1;  // mapped, no access yet
  ++r->mapped;
  ++it->second.mappings;
  return {};
}

Status CudaBackend::unmap(DevicePtr va, std::size_t bytes) {
  if (!page_aligned(va) || bytes == 0 || bytes % kPage != 0 || va + bytes < va)
    return make_error(Errc::invalid_argument, "unmap: range not aligned to 2 MiB");
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  std::vector<State::Run> runs;
  if (!s_->mapped_runs(va, bytes, runs))
    return make_error(Errc::invalid_state, "unmap: part of the range is not mapped");
  // One call per reservation the range crosses (one, in practice): cuMemUnmap takes any range
  // made of whole mappings.
  for (const State::Run& run : runs) {
    VALET_CU("cuMemUnmap", s_->d->cuMemUnmap(run.start, run.bytes));
    for (std::size_t i = run.first; i < run.first + run.bytes / kPage; ++i) {
      std::uint64_t& slot = run.r->slot_ref(i);
      s_->drop_mapping(slot >> 1);
      slot = 0;
      --run.r->mapped;
    }
  }
  return {};
}

Status CudaBackend::set_access(DevicePtr va, std::size_t bytes) {
  if (!page_aligned(va) || bytes == 0 || bytes % kPage != 0 || va + bytes < va)
    return make_error(Errc::invalid_argument, "set_access: range not aligned to 2 MiB");
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  std::vector<State::Run> runs;
  if (!s_->mapped_runs(va, bytes, runs))
    return make_error(Errc::invalid_state, "set_access: part of the range is not mapped");
  CUmemAccessDesc access;
  std::memset(&access, 0, sizeof access);
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = s_->ordinal;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  for (const State::Run& run : runs) {
    VALET_CU("cuMemSetAccess", s_->d->cuMemSetAccess(run.start, run.bytes, &access, 1));
    for (std::size_t i = run.first; i < run.first + run.bytes / kPage; ++i) run.r->slot_ref(i) |= 1u;
  }
  return {};
}

// --- Streams and events -------------------------------------------------------------------------

Result<Stream> CudaBackend::create_stream() {
  VALET_CUDA_SCOPE();
  CUstream stream = nullptr;
  VALET_CU("cuStreamCreate", s_->d->cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  unsigned long long uid = 0;
  if (const CUresult r = s_->d->cuStreamGetId(stream, &uid); r != CUDA_SUCCESS) {
    (void)s_->d->cuStreamDestroy(stream);
    return cu_error("cuStreamGetId", r);
  }
  const auto id = reinterpret_cast<std::uintptr_t>(stream);
  std::lock_guard lock(s_->work_mu);
  s_->own_streams[id] = uid;
  s_->retired_streams.erase(id);
  s_->foreign_streams.erase(id);
  return Stream{id};
}

Status CudaBackend::destroy_stream(Stream s) {
  VALET_CUDA_SCOPE();
  unsigned long long uid = 0;
  {
    std::lock_guard lock(s_->work_mu);
    auto it = s_->own_streams.find(s.id);
    if (it == s_->own_streams.end())
      return make_error(Errc::not_found, "destroy_stream: unknown stream (not made by this backend)");
    uid = it->second;
  }
  const auto stream = reinterpret_cast<CUstream>(s.id);
  VALET_CU("cuStreamSynchronize", s_->d->cuStreamSynchronize(stream));
  VALET_CU("cuStreamDestroy", s_->d->cuStreamDestroy(stream));
  std::lock_guard lock(s_->work_mu);
  s_->own_streams.erase(s.id);
  if (s_->retired_streams.size() >= kMaxRetiredStreams) s_->retired_streams.clear();
  s_->retired_streams[s.id] = uid;
  return {};
}

Result<Event> CudaBackend::create_event() {
  VALET_CUDA_SCOPE();
  CUevent event = nullptr;
  VALET_CU("cuEventCreate", s_->d->cuEventCreate(&event, CU_EVENT_DISABLE_TIMING));
  const auto id = reinterpret_cast<std::uintptr_t>(event);
  std::lock_guard lock(s_->work_mu);
  s_->events.insert(id);
  return Event{id};
}

Status CudaBackend::destroy_event(Event e) {
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->work_mu);
  if (!s_->events.count(e.id)) return make_error(Errc::not_found, "destroy_event: unknown event");
  VALET_CU("cuEventDestroy", s_->d->cuEventDestroy(reinterpret_cast<CUevent>(e.id)));
  s_->events.erase(e.id);
  return {};
}

Status CudaBackend::record_event(Event e, Stream s) {
  VALET_CUDA_SCOPE();
  auto ev = s_->event_of(e, "record_event");
  if (!ev.ok()) return ev.error();
  auto st = s_->stream_of(s, "record_event");
  if (!st.ok()) return st.error();
  VALET_CU("cuEventRecord", s_->d->cuEventRecord(ev.value(), st.value()));
  return {};
}

Result<bool> CudaBackend::query_event(Event e) {
  VALET_CUDA_SCOPE();
  auto ev = s_->event_of(e, "query_event");
  if (!ev.ok()) return ev.error();
  const CUresult r = s_->d->cuEventQuery(ev.value());
  if (r == CUDA_SUCCESS) return true;
  if (r == CUDA_ERROR_NOT_READY) return false;
  return cu_error("cuEventQuery", r);
}

Status CudaBackend::synchronize_event(Event e) {
  VALET_CUDA_SCOPE();
  auto ev = s_->event_of(e, "synchronize_event");
  if (!ev.ok()) return ev.error();
  VALET_CU("cuEventSynchronize", s_->d->cuEventSynchronize(ev.value()));
  return {};
}

Status CudaBackend::stream_wait_event(Stream s, Event e) {
  VALET_CUDA_SCOPE();
  auto ev = s_->event_of(e, "stream_wait_event");
  if (!ev.ok()) return ev.error();
  auto st = s_->stream_of(s, "stream_wait_event");
  if (!st.ok()) return st.error();
  VALET_CU("cuStreamWaitEvent", s_->d->cuStreamWaitEvent(st.value(), ev.value(), CU_EVENT_WAIT_DEFAULT));
  return {};
}

Status CudaBackend::synchronize_stream(Stream s) {
  VALET_CUDA_SCOPE();
  auto st = s_->stream_of(s, "synchronize_stream");
  if (!st.ok()) return st.error();
  VALET_CU("cuStreamSynchronize", s_->d->cuStreamSynchronize(st.value()));
  return {};
}

// --- Batched device work ------------------------------------------------------------------------

Status CudaBackend::copy(std::span<const CopyRange> ranges, Stream s) {
  VALET_CUDA_SCOPE();
  auto st = s_->stream_of(s, "copy");
  if (!st.ok()) return st.error();
  std::uint64_t total = 0;
  {
    // Everything is checked before anything is queued: a copy touching unmapped memory would
    // fault and kill the context.
    std::lock_guard lock(s_->mu);
    State::Lookup from, to;  // sources and destinations usually lie in reservations of their own
    for (const CopyRange& r : ranges) {
      if (!s_->accessible(r.src, r.bytes, from) || !s_->accessible(r.dst, r.bytes, to)) {
        VALET_TRY(s_->check_accessible(r.src, r.bytes, "copy source", from));
        VALET_TRY(s_->check_accessible(r.dst, r.bytes, "copy destination", to));
      }
      total += items_of(r.bytes);
    }
  }
  return s_->run_batched<CopyItem>(
      ranges, total, st.value(), s_->k_copy,
      [](const CopyRange& r, std::uint64_t k) {
        const std::uint64_t off = k * kItemBytes;
        return CopyItem{r.src + off, r.dst + off, std::min<std::uint64_t>(kItemBytes, r.bytes - off)};
      },
      nullptr);
}

namespace {

PatternItem pattern_item(const PatternRange& r, std::uint64_t k) {
  const std::uint64_t off = k * kItemBytes;
  return PatternItem{r.dst + off, std::min<std::uint64_t>(kItemBytes, r.bytes - off), r.seed, off};
}

}  // namespace

Status CudaBackend::fill_pattern(std::span<const PatternRange> ranges, Stream s) {
  VALET_CUDA_SCOPE();
  auto st = s_->stream_of(s, "fill_pattern");
  if (!st.ok()) return st.error();
  std::uint64_t total = 0;
  VALET_TRY(s_->check_patterns(ranges, "fill_pattern", &total));
  return s_->run_batched<PatternItem>(ranges, total, st.value(), s_->k_fill, pattern_item, nullptr);
}

Result<std::uint64_t> CudaBackend::verify_pattern(std::span<const PatternRange> ranges, Stream s) {
  VALET_CUDA_SCOPE();
  auto st = s_->stream_of(s, "verify_pattern");
  if (!st.ok()) return st.error();
  std::uint64_t total = 0;
  VALET_TRY(s_->check_patterns(ranges, "verify_pattern", &total));
  std::uint64_t bad = 0;
  VALET_TRY(s_->run_batched<PatternItem>(ranges, total, st.value(), s_->k_verify, pattern_item, &bad));
  return bad;
}

Status CudaBackend::read(void* host_dst, DevicePtr src, std::size_t bytes) {
  if (bytes == 0) return {};
  if (!host_dst) return make_error(Errc::invalid_argument, "read: null host buffer");
  VALET_CUDA_SCOPE();
  {
    std::lock_guard lock(s_->mu);
    State::Lookup cache;
    VALET_TRY(s_->check_accessible(src, bytes, "read", cache));
  }
  // Synchronous, on the legacy default stream: ordered after the work queued there.
  VALET_CU("cuMemcpyDtoH", s_->d->cuMemcpyDtoH(host_dst, src, bytes));
  return {};
}

Status CudaBackend::write(DevicePtr dst, const void* host_src, std::size_t bytes) {
  if (bytes == 0) return {};
  if (!host_src) return make_error(Errc::invalid_argument, "write: null host buffer");
  VALET_CUDA_SCOPE();
  {
    std::lock_guard lock(s_->mu);
    State::Lookup cache;
    VALET_TRY(s_->check_accessible(dst, bytes, "write", cache));
  }
  VALET_CU("cuMemcpyHtoD", s_->d->cuMemcpyHtoD(dst, host_src, bytes));
  return {};
}

#undef VALET_CUDA_SCOPE

}  // namespace valet::cuda

namespace valet {

Result<std::unique_ptr<Backend>> open_cuda_backend(int device) {
  auto state = cuda::CudaBackend::open(device);
  if (!state.ok()) return state.error();
  return std::unique_ptr<Backend>(std::make_unique<BackendModel<cuda::CudaBackend>>(std::move(state.value())));
}

}  // namespace valet
