// The driver's baselines (see driver_pool.h).
#include "driver_pool.h"

#if defined(VALET_HAVE_CUDA)

#include <cstdio>
#include <vector>

namespace valet::bench {

namespace {

// One thread of the pool's run: its own stream, created before the start and destroyed after.
class PoolWorker final : public PairWorker {
 public:
  PoolWorker(const PrimaryContext& ctx, std::size_t bytes) : ctx_(ctx), d_(ctx.driver()), bytes_(bytes) {}

  bool prepare() override {
    if (auto st = ctx_.make_current(); !st.ok()) return complain(st.error().to_string());
    if (const CUresult r = d_.cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING); r != CUDA_SUCCESS) {
      stream_ = nullptr;
      return complain(cuda::driver_error("cuStreamCreate", r).to_string());
    }
    return true;
  }
  bool pair() override {
    CUdeviceptr p = 0;
    if (d_.cuMemAllocAsync(&p, bytes_, stream_) != CUDA_SUCCESS) return false;
    return d_.cuMemFreeAsync(p, stream_) == CUDA_SUCCESS;
  }
  void finish() override {
    (void)d_.cuStreamSynchronize(stream_);
    (void)d_.cuStreamDestroy(stream_);
  }

 private:
  static bool complain(const std::string& what) {
    std::fprintf(stderr, "valet-bench-alloc: cuMemAllocAsync baseline: %s\n", what.c_str());
    return false;
  }
  const PrimaryContext& ctx_;
  const cuda::Driver& d_;
  std::size_t bytes_;
  CUstream stream_ = nullptr;
};

}  // namespace

Result<std::unique_ptr<PrimaryContext>> PrimaryContext::open(int device) {
  auto loaded = cuda::load_driver();
  if (!loaded.ok()) return loaded.error();
  const cuda::Driver* drv = *loaded;
  VALET_CU("cuInit", drv->cuInit(0));  // done already where a CUDA heap was opened; harmless again
  CUdevice dev = 0;
  VALET_CU("cuDeviceGet", drv->cuDeviceGet(&dev, device));
  CUcontext ctx = nullptr;
  VALET_CU("cuDevicePrimaryCtxRetain", drv->cuDevicePrimaryCtxRetain(&ctx, dev));
  return std::unique_ptr<PrimaryContext>(new PrimaryContext(drv, dev, ctx));
}

PrimaryContext::~PrimaryContext() { (void)drv_->cuDevicePrimaryCtxRelease(dev_); }

Status PrimaryContext::make_current() const {
  VALET_CU("cuCtxSetCurrent", drv_->cuCtxSetCurrent(ctx_));
  return ok_status();
}

PairRun PrimaryContext::pool_pairs(std::size_t bytes, int threads, int per_thread, int warmup) const {
  std::vector<std::unique_ptr<PairWorker>> workers;
  for (int t = 0; t < threads; ++t) workers.push_back(std::make_unique<PoolWorker>(*this, bytes));
  return timed_pairs(workers, per_thread, warmup);
}

std::optional<double> PrimaryContext::mem_alloc_ns(std::size_t bytes) const {
  if (!make_current().ok()) return std::nullopt;
  CUdeviceptr p = 0;
  const auto t0 = Clock::now();
  const CUresult r = drv_->cuMemAlloc(&p, bytes);
  const double ns = ns_since(t0);
  if (r != CUDA_SUCCESS) return std::nullopt;
  (void)drv_->cuMemFree(p);
  return ns;
}

}  // namespace valet::bench

#endif
