// The CUDA backend: opening a device (the driver, its primary context, VMM support, the kernels,
// the staging pool) and closing it. The entry points live by subject in cuda_memory.cpp,
// cuda_streams.cpp and cuda_batched.cpp (cuda_backend_state.h lists them).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "cuda/cuda_backend_state.h"
#include "cuda/cuda_context.h"
#include "valet/cuda_backend.h"
#include "valet/kernels/work_items.h"  // kBlockThreads: the block size of every kernel

// The kernels' fatbin, embedded by kernels/CMakeLists.txt (cmake/EmbedFile.cmake).
extern const unsigned char valet_kernels_fatbin[];
extern const std::size_t valet_kernels_fatbin_size;

namespace valet::cuda {

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
      staging.close();
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

Result<Kernel> load_kernel(const Driver& d, CUmodule module, const char* name, int sm_count, unsigned block_threads) {
  Kernel k;
  CUresult r = d.cuModuleGetFunction(&k.fn, module, name);
  if (r != CUDA_SUCCESS) return driver_error((std::string("cuModuleGetFunction(") + name + ")").c_str(), r);
  int per_sm = 0;
  r = d.cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k.fn, static_cast<int>(block_threads), 0);
  if (r != CUDA_SUCCESS) return cu_error("cuOccupancyMaxActiveBlocksPerMultiprocessor", r);
  k.max_blocks = static_cast<unsigned>(std::max(1, per_sm) * std::max(1, sm_count));
  return k;
}

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
  auto kc = load_kernel(d, s->module, "valet_batched_copy", sm_count, kernels::abi::kBlockThreads);
  if (!kc.ok()) return kc.error();
  auto kf = load_kernel(d, s->module, "valet_fill_pattern", sm_count, kernels::abi::kBlockThreads);
  if (!kf.ok()) return kf.error();
  auto kv = load_kernel(d, s->module, "valet_verify_pattern", sm_count, kernels::abi::kBlockThreads);
  if (!kv.ok()) return kv.error();
  s->k_copy = kc.value();
  s->k_fill = kf.value();
  s->k_verify = kv.value();

  if (::pipe2(s->probe, O_CLOEXEC | O_NONBLOCK) != 0) s->probe[0] = s->probe[1] = -1;
  VALET_CU("cuStreamCreate", d.cuStreamCreate(&s->upload, CU_STREAM_NON_BLOCKING));

  // A few staging buffers from the start, so that batches work even once the heap has taken
  // (almost) all device memory.
  VALET_TRY(s->staging.open(d));
  return s;
}

CudaBackend::CudaBackend(std::unique_ptr<State> state) : s_(std::move(state)) {}

CudaBackend::~CudaBackend() = default;

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

}  // namespace valet::cuda

namespace valet {

Result<std::unique_ptr<Backend>> open_cuda_backend(int device) {
  auto state = cuda::CudaBackend::open(device);
  if (!state.ok()) return state.error();
  return std::unique_ptr<Backend>(std::make_unique<BackendModel<cuda::CudaBackend>>(std::move(state.value())));
}

}  // namespace valet
