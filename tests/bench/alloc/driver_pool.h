// The driver's baselines beside the heap on a GPU: the stream-ordered pool (cuMemAllocAsync /
// cuMemFreeAsync on the device's default pool, default attributes), each thread on a stream of its
// own, and cuMemAlloc. Built with the CUDA backend only.
#pragma once

#if defined(VALET_HAVE_CUDA)

#include <cstddef>
#include <memory>
#include <optional>

#include "cuda/cuda_driver.h"
#include "pair_run.h"
#include "valet/result.h"

namespace valet::bench {

// The device's primary context, retained for the object's life.
class PrimaryContext {
 public:
  static Result<std::unique_ptr<PrimaryContext>> open(int device);
  ~PrimaryContext();
  PrimaryContext(const PrimaryContext&) = delete;
  PrimaryContext& operator=(const PrimaryContext&) = delete;

  // Makes the context current on the calling thread.
  Status make_current() const;
  const cuda::Driver& driver() const { return *drv_; }

  // `pairs` cuMemAllocAsync+cuMemFreeAsync of `bytes` per thread on `threads` threads, each with
  // its own non-blocking stream (cuStreamCreate), timed by timed_pairs(). The streams are
  // synchronized and destroyed after the timed pairs.
  PairRun pool_pairs(std::size_t bytes, int threads, int per_thread, int warmup) const;

  // cuMemAlloc of `bytes` (then cuMemFree, untimed) on the calling thread, made current here;
  // nullopt when an allocation failed.
  std::optional<double> mem_alloc_ns(std::size_t bytes) const;

 private:
  PrimaryContext(const cuda::Driver* drv, CUdevice dev, CUcontext ctx) : drv_(drv), dev_(dev), ctx_(ctx) {}
  const cuda::Driver* drv_;
  CUdevice dev_;
  CUcontext ctx_;
};

}  // namespace valet::bench

#endif
