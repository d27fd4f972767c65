// The CUDA backend: CUDA Virtual Memory Management through the driver API, loaded at run time
// (dlopen("libcuda.so.1"), then cuGetProcAddress for every entry point), in the device's primary
// context. The kernels (batched copy, pattern fill and verify) come from a fatbin embedded in the
// library. Nothing links against libcuda or libcudart: on a machine without a driver, open()
// fails cleanly with Errc::unsupported.
#pragma once

#include <memory>
#include <string>

#include "valet/backend.h"

namespace valet {

// Opens device `device`. Errc::unsupported when this build has no CUDA backend, the driver
// cannot be loaded, or the device does not exist or lacks VMM support; driver_error otherwise.
Result<std::unique_ptr<Backend>> open_cuda_backend(int device = 0);

}  // namespace valet
