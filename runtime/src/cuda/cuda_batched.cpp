// The CUDA backend's device work: batched copy, pattern fill and verify (ranges cut into items,
// staged in a StagingPool buffer, one kernel launch per buffer), and synchronous read and write.
#include <algorithm>
#include <cstring>

#include "cuda/cuda_backend_state.h"
#include "cuda/cuda_context.h"
#include "valet/kernels/work_items.h"  // the kernels' item layout (shared with the .cu)

namespace valet::cuda {
namespace {

using kernels::abi::CopyItem;
using kernels::abi::items_of;
using kernels::abi::kBlockThreads;
using kernels::abi::kItemBytes;
using kernels::abi::PatternItem;

PatternItem pattern_item(const PatternRange& r, std::uint64_t k) {
  const std::uint64_t off = k * kItemBytes;
  return PatternItem{r.dst + off, std::min<std::uint64_t>(kItemBytes, r.bytes - off), r.seed, off};
}

}  // namespace

Status CudaBackend::State::submit(Staging* b, std::uint64_t count, std::size_t item_size, CUstream stream,
                                  const Kernel& k, bool with_counter) {
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
  const auto grid =
      static_cast<unsigned>(std::min<std::uint64_t>((count + warps_per_block - 1) / warps_per_block, k.max_blocks));
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

template <class Item, class Range, class MakeItem>
Status CudaBackend::State::run_batched(std::span<const Range> ranges, std::uint64_t total, CUstream stream,
                                       const Kernel& k, MakeItem make_item, std::uint64_t* mismatches) {
  if (mismatches) *mismatches = 0;
  constexpr std::size_t kMaxItems = (kMaxStagingBytes - kHeaderBytes) / sizeof(Item);
  std::size_t ri = 0;      // the range of the next item
  std::uint64_t next = 0;  // the next item of that range
  while (total > 0) {
    const std::uint64_t want_items = std::min<std::uint64_t>(total, kMaxItems);
    auto got = staging.acquire(kHeaderBytes + want_items * sizeof(Item), kHeaderBytes + sizeof(Item));
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
    staging.release(b);
    if (!st.ok()) return st;
    total -= n;
  }
  return {};
}

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
  // From pageable memory cuMemcpyHtoD may return once the bytes are staged, before the DMA has
  // landed (CUDA driver API, "API synchronization behavior"); work on non-blocking streams is not
  // ordered after it. The contract is a synchronous write, so wait for the legacy stream.
  VALET_CU("cuStreamSynchronize", s_->d->cuStreamSynchronize(CU_STREAM_LEGACY));
  return {};
}

}  // namespace valet::cuda
