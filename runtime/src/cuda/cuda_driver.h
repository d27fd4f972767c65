// The CUDA driver API, loaded at run time.
//
// libcuda.so.1 is dlopen'ed once per process (and never closed); cuGetProcAddress_v2 is the only
// symbol taken with dlsym. Every other entry point comes from cuGetProcAddress with the toolkit's
// CUDA_VERSION, which returns the version of the function that this build's cuda.h declares
// (plain dlsym names return legacy versions: dlsym("cuMemcpyDtoH") is the old 32-bit one).
//
// Each member of Driver is declared as decltype(&::name): cuda.h turns versioned names into macros
// (cuMemGetInfo -> cuMemGetInfo_v2), so the member's type and name follow the version cuda.h
// declares, while the name looked up is the base name, as cuGetProcAddress wants it.
#pragma once

#include <cuda.h>

#include <string>

#include "valet/result.h"

namespace valet::cuda {

#define VALET_CUDA_DRIVER_FUNCTIONS(X)           \
  X(cuGetErrorName)                              \
  X(cuGetErrorString)                            \
  X(cuInit)                                      \
  X(cuDriverGetVersion)                          \
  X(cuDeviceGet)                                 \
  X(cuDeviceGetCount)                            \
  X(cuDeviceGetName)                             \
  X(cuDeviceGetAttribute)                        \
  X(cuDevicePrimaryCtxRetain)                    \
  X(cuDevicePrimaryCtxRelease)                   \
  X(cuCtxGetCurrent)                             \
  X(cuCtxSetCurrent)                             \
  X(cuCtxPushCurrent)                            \
  X(cuCtxPopCurrent)                             \
  X(cuMemGetAllocationGranularity)               \
  X(cuMemAddressReserve)                         \
  X(cuMemAddressFree)                            \
  X(cuMemCreate)                                 \
  X(cuMemRelease)                                \
  X(cuMemMap)                                    \
  X(cuMemUnmap)                                  \
  X(cuMemSetAccess)                              \
  X(cuMemGetInfo)                                \
  X(cuMemAlloc)                                  \
  X(cuMemAllocAsync)                             \
  X(cuMemFreeAsync)                              \
  X(cuMemFree)                                   \
  X(cuMemHostAlloc)                              \
  X(cuMemFreeHost)                               \
  X(cuMemHostGetDevicePointer)                   \
  X(cuMemcpyDtoH)                                \
  X(cuMemcpyHtoD)                                \
  X(cuMemcpyHtoDAsync)                           \
  X(cuMemcpyDtoHAsync)                           \
  X(cuMemcpyDtoDAsync)                           \
  X(cuStreamCreate)                              \
  X(cuStreamDestroy)                             \
  X(cuStreamSynchronize)                         \
  X(cuStreamWaitEvent)                           \
  X(cuStreamGetCtx)                              \
  X(cuStreamGetId)                               \
  X(cuStreamWaitValue32)                         \
  X(cuEventCreate)                               \
  X(cuEventDestroy)                              \
  X(cuEventRecord)                               \
  X(cuEventQuery)                                \
  X(cuEventSynchronize)                          \
  X(cuModuleLoadData)                            \
  X(cuModuleUnload)                              \
  X(cuModuleGetFunction)                         \
  X(cuLaunchKernel)                              \
  X(cuOccupancyMaxActiveBlocksPerMultiprocessor)

struct Driver {
#define VALET_CUDA_DECLARE_MEMBER(fn) decltype(&::fn) fn = nullptr;
  VALET_CUDA_DRIVER_FUNCTIONS(VALET_CUDA_DECLARE_MEMBER)
#undef VALET_CUDA_DECLARE_MEMBER
};

// The process-wide driver table, loaded on first use. Errc::unsupported when libcuda.so.1 cannot
// be loaded ("CUDA driver not found (<dlerror>)", which names libcuda.so.1 once) or lacks an
// entry point.
Result<const Driver*> load_driver();

// "CUDA_ERROR_OUT_OF_MEMORY (2)"; works without a loaded driver too ("CUresult 2").
std::string result_name(CUresult r);

// driver_error "<call> failed: <CUresult name> (<n>)".
Error driver_error(const char* call, CUresult r);

}  // namespace valet::cuda

// Evaluates a driver call; on failure returns driver_error naming the call from the function.
#define VALET_CU(call_name, expr)                                             \
  do {                                                                        \
    const CUresult valet_cu_result_ = (expr);                                 \
    if (valet_cu_result_ != CUDA_SUCCESS)                                     \
      return ::valet::cuda::driver_error(call_name, valet_cu_result_);        \
  } while (0)
