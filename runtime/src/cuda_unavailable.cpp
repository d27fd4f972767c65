// open_cuda_backend and CudaModule for builds without the CUDA backend (VALET_WITH_CUDA off or no
// nvcc): everything fails with Errc::unsupported.
#if !defined(VALET_HAVE_CUDA)
#include "valet/cuda_backend.h"

namespace valet {

namespace {

Error no_cuda() {
  return make_error(Errc::unsupported,
                    "this build of Valet has no CUDA backend (built with VALET_WITH_CUDA=OFF or without nvcc)");
}

}  // namespace

Result<std::unique_ptr<Backend>> open_cuda_backend(int) { return no_cuda(); }

// No CudaModule is ever made here, so the members below are never reached; they exist so that
// code using the class links in both kinds of build.
struct CudaModule::State {};

Result<std::unique_ptr<CudaModule>> CudaModule::load(const void*, int) { return no_cuda(); }
CudaModule::CudaModule(std::unique_ptr<State> state) : s_(std::move(state)) {}
CudaModule::~CudaModule() = default;
int CudaModule::device() const { return -1; }
Result<CudaModule::Kernel> CudaModule::kernel(const std::string&) const { return no_cuda(); }
Result<unsigned> CudaModule::max_resident_blocks(Kernel, unsigned, unsigned) const { return no_cuda(); }
Status CudaModule::launch_raw(Kernel, const LaunchShape&, Stream, void**) { return no_cuda(); }

}  // namespace valet
#endif
