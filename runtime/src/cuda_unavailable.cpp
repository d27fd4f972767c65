// open_cuda_backend for builds without the CUDA backend (VALET_WITH_CUDA off or no nvcc).
#if !defined(VALET_HAVE_CUDA)
#include "valet/cuda_backend.h"

namespace valet {

Result<std::unique_ptr<Backend>> open_cuda_backend(int) {
  return make_error(Errc::unsupported, "this build of Valet has no CUDA backend (VALET_WITH_CUDA was off)");
}

}  // namespace valet
#endif
