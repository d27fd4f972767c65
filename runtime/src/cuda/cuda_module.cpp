// CudaModule (valet/cuda_backend.h): the caller's kernels, loaded and launched in the primary
// context of a device, through the same run-time-loaded driver as the CUDA backend.
#include <algorithm>
#include <string>

#include "cuda/cuda_context.h"
#include "cuda/cuda_driver.h"
#include "valet/cuda_backend.h"

namespace valet {

struct CudaModule::State {
  const cuda::Driver* d = nullptr;
  int ordinal = 0;
  CUdevice device = 0;
  CUcontext ctx = nullptr;  // retained: the module keeps the context alive on its own
  CUmodule module = nullptr;
  int sm_count = 1;

  ~State() {
    if (!d || !ctx) return;
    if (module) {
      cuda::ContextScope scope(*d, ctx);
      if (scope.status().ok()) (void)d->cuModuleUnload(module);
    }
    (void)d->cuDevicePrimaryCtxRelease(device);
  }
};

using cuda::cu_error;

Result<std::unique_ptr<CudaModule>> CudaModule::load(const void* fatbin, int device) {
  if (!fatbin) return make_error(Errc::invalid_argument, "CudaModule::load: null fatbin");
  auto loaded = cuda::load_driver();
  if (!loaded.ok()) return loaded.error();
  const cuda::Driver& d = *loaded.value();

  CUresult r = d.cuInit(0);
  if (r != CUDA_SUCCESS) {
    if (cuda::means_no_usable_device(r))
      return make_error(Errc::unsupported, "no usable CUDA device (cuInit: " + cuda::result_name(r) + ")");
    return cu_error("cuInit", r);
  }
  int count = 0;
  VALET_CU("cuDeviceGetCount", d.cuDeviceGetCount(&count));
  if (device < 0 || device >= count)
    return make_error(Errc::unsupported, "no CUDA device " + std::to_string(device) + " (the driver sees " +
                                             std::to_string(count) + ")");
  auto s = std::make_unique<State>();
  s->d = &d;
  s->ordinal = device;
  VALET_CU("cuDeviceGet", d.cuDeviceGet(&s->device, device));
  VALET_CU("cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)",
           d.cuDeviceGetAttribute(&s->sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, s->device));
  VALET_CU("cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(&s->ctx, s->device));  // ~State releases it
  cuda::ContextScope scope(d, s->ctx);
  VALET_TRY(scope.status());
  r = d.cuModuleLoadData(&s->module, fatbin);
  if (r == CUDA_ERROR_NO_BINARY_FOR_GPU || r == CUDA_ERROR_UNSUPPORTED_PTX_VERSION) {
    char name[256] = {};
    (void)d.cuDeviceGetName(name, static_cast<int>(sizeof name) - 1, s->device);
    return make_error(Errc::unsupported, "the fatbin has no code for CUDA device " + std::to_string(device) + " (" +
                                             name + "; cuModuleLoadData: " + cuda::result_name(r) + ")");
  }
  if (r != CUDA_SUCCESS) return cu_error("cuModuleLoadData", r);
  return std::make_unique<CudaModule>(std::move(s));
}

CudaModule::CudaModule(std::unique_ptr<State> state) : s_(std::move(state)) {}

CudaModule::~CudaModule() = default;

int CudaModule::device() const { return s_->ordinal; }

Result<CudaModule::Kernel> CudaModule::kernel(const std::string& name) const {
  VALET_CUDA_SCOPE();
  CUfunction fn = nullptr;
  const CUresult r = s_->d->cuModuleGetFunction(&fn, s_->module, name.c_str());
  if (r == CUDA_ERROR_NOT_FOUND) return make_error(Errc::not_found, "the module has no kernel named '" + name + "'");
  if (r != CUDA_SUCCESS) return cu_error(("cuModuleGetFunction(" + name + ")").c_str(), r);
  return Kernel{reinterpret_cast<std::uintptr_t>(fn)};
}

Result<unsigned> CudaModule::max_resident_blocks(Kernel k, unsigned block, unsigned shared_bytes) const {
  if (!k.id || block == 0) return make_error(Errc::invalid_argument, "max_resident_blocks: no kernel or no threads");
  VALET_CUDA_SCOPE();
  int per_sm = 0;
  VALET_CU("cuOccupancyMaxActiveBlocksPerMultiprocessor",
           s_->d->cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<CUfunction>(k.id),
                                                              static_cast<int>(block), shared_bytes));
  return static_cast<unsigned>(std::max(1, per_sm) * std::max(1, s_->sm_count));
}

Status CudaModule::launch_raw(Kernel k, const LaunchShape& shape, Stream stream, void** params) {
  if (!k.id || shape.grid == 0 || shape.block == 0)
    return make_error(Errc::invalid_argument, "launch: no kernel, or a grid or block of 0");
  VALET_CUDA_SCOPE();
  // Stream{0} is the legacy default stream, as for the backend's own work.
  const CUstream s = stream.id == 0 ? CU_STREAM_LEGACY : reinterpret_cast<CUstream>(stream.id);
  VALET_CU("cuLaunchKernel", s_->d->cuLaunchKernel(reinterpret_cast<CUfunction>(k.id), shape.grid, 1, 1, shape.block,
                                                   1, 1, shape.shared_bytes, s, params, nullptr));
  return {};
}

}  // namespace valet
