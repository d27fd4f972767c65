#include "cuda/staging_pool.h"

#include <algorithm>
#include <bit>
#include <string>

#include "cuda/cuda_context.h"

namespace valet::cuda {

Status StagingPool::open(const Driver& d) {
  d_ = &d;
  for (std::size_t i = 0; i < kInitialStagingBuffers; ++i) {
    auto b = make(kInitialStagingBytes);
    if (!b.ok()) return b.error();
    pool_.push_back(std::move(b.value()));
  }
  return {};
}

void StagingPool::close() {
  if (!d_) return;
  for (auto& b : pool_) {
    if (b->pending) (void)d_->cuEventSynchronize(b->done);
    free(*b);
  }
  pool_.clear();
}

Result<std::unique_ptr<Staging>> StagingPool::make(std::size_t capacity) {
  auto b = std::make_unique<Staging>();
  b->capacity = capacity;
  CUresult r = d_->cuMemHostAlloc(&b->host, capacity, 0);
  if (r != CUDA_SUCCESS)
    return cu_error_oom("cuMemHostAlloc", r, Errc::out_of_memory, "no pinned host memory for a staging buffer");
  r = d_->cuMemAlloc(&b->dev, capacity);
  if (r != CUDA_SUCCESS) {
    (void)d_->cuMemFreeHost(b->host);
    return cu_error_oom("cuMemAlloc", r, Errc::out_of_memory, "no device memory for a staging buffer");
  }
  r = d_->cuEventCreate(&b->done, CU_EVENT_DISABLE_TIMING);
  if (r == CUDA_SUCCESS) {
    r = d_->cuEventCreate(&b->uploaded, CU_EVENT_DISABLE_TIMING);
    if (r != CUDA_SUCCESS) (void)d_->cuEventDestroy(b->done);
  }
  if (r != CUDA_SUCCESS) {
    (void)d_->cuMemFree(b->dev);
    (void)d_->cuMemFreeHost(b->host);
    return cu_error("cuEventCreate", r);
  }
  return b;
}

void StagingPool::free(Staging& b) {
  if (b.done) (void)d_->cuEventDestroy(b.done);
  if (b.uploaded) (void)d_->cuEventDestroy(b.uploaded);
  if (b.dev) (void)d_->cuMemFree(b.dev);
  if (b.host) (void)d_->cuMemFreeHost(b.host);
  b = Staging{};
}

Result<Staging*> StagingPool::acquire(std::size_t want, std::size_t need) {
  const std::size_t capacity = std::min(kMaxStagingBytes, std::bit_ceil(std::max({want, need, kMinStagingBytes})));
  std::unique_lock lock(mu_);
  bool short_of_memory = false;
  for (;;) {
    Staging* fit = nullptr;       // idle, complete, big enough: the smallest such
    Staging* fallback = nullptr;  // idle, complete, at least `need`: the largest such
    Staging* smallest = nullptr;  // idle, complete: the smallest (to be replaced)
    Staging* busy = nullptr;      // idle, but its work may still run
    bool any_in_use = false;
    for (auto& up : pool_) {
      Staging* b = up.get();
      if (b->in_use) {
        any_in_use = true;
        continue;
      }
      if (b->pending) {
        const CUresult q = d_->cuEventQuery(b->done);
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
      if (pool_.size() >= kMaxStagingBuffers && smallest) {
        // Full: replace an idle buffer that is too small for this call.
        free(*smallest);
        pool_.erase(std::find_if(pool_.begin(), pool_.end(), [&](const auto& p) { return p.get() == smallest; }));
      }
      if (pool_.size() < kMaxStagingBuffers) {
        auto made = make(capacity);
        if (made.ok()) {
          Staging* b = made.value().get();
          b->in_use = true;
          pool_.push_back(std::move(made.value()));
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
      const CUresult r = d_->cuEventSynchronize(busy->done);
      lock.lock();
      busy->in_use = false;
      if (r == CUDA_SUCCESS) busy->pending = false;
      cv_.notify_all();
      if (r != CUDA_SUCCESS) return cu_error("cuEventSynchronize", r);
      continue;
    }
    if (any_in_use) {
      cv_.wait(lock);
      continue;
    }
    return make_error(Errc::out_of_memory, "no memory for a staging buffer of " + std::to_string(need) + " bytes");
  }
}

void StagingPool::release(Staging* b) {
  {
    std::lock_guard lock(mu_);
    b->in_use = false;
  }
  cv_.notify_all();
}

}  // namespace valet::cuda
