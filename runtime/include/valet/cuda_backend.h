// The CUDA backend: CUDA Virtual Memory Management through the driver API, loaded at run time
// (dlopen("libcuda.so.1"), then cuGetProcAddress for every entry point), in the device's primary
// context. The kernels (batched copy, pattern fill and verify) come from a fatbin embedded in the
// library. Nothing links against libcuda or libcudart: on a machine without a driver, open()
// fails cleanly with Errc::unsupported.
//
// CudaModule runs the caller's own kernels next to the heap: kernels that read objects through
// their handles (valet/kernels/handle_table.h, under a Heap::pin_table scope) or through pins.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "valet/backend.h"

namespace valet {

// Opens device `device`. Errc::unsupported when this build has no CUDA backend, the driver
// cannot be loaded, or the device does not exist or lacks VMM support; driver_error otherwise.
Result<std::unique_ptr<Backend>> open_cuda_backend(int device = 0);

// A launch's geometry.
struct LaunchShape {
  unsigned grid = 1;          // blocks
  unsigned block = 256;       // threads per block
  unsigned shared_bytes = 0;  // dynamic shared memory per block
};

// The caller's kernels, from a fatbin (what `nvcc -fatbin` writes; valet_embed_fatbin() in
// kernels/CMakeLists.txt builds and embeds one), loaded into the primary context of a CUDA device:
// the context the CUDA backend works in, so the kernels read heap memory and run on the backend's
// streams. Every call makes that context current for itself and leaves the thread's own as it
// was. Thread-safe. Without the CUDA backend in the build, load() fails with Errc::unsupported.
class CudaModule {
 public:
  // A kernel of the module (from kernel()); valid while the module lives.
  struct Kernel {
    std::uintptr_t id = 0;
  };

  // Loads `fatbin` on device `device`. Errc::unsupported when this build has no CUDA backend,
  // the driver cannot be loaded, the device does not exist, or the fatbin has no code for it
  // (the message names the device); driver_error otherwise.
  static Result<std::unique_ptr<CudaModule>> load(const void* fatbin, int device = 0);
  // Unloads the module. Precondition: no launch of its kernels is still queued or running.
  ~CudaModule();
  CudaModule(const CudaModule&) = delete;
  CudaModule& operator=(const CudaModule&) = delete;

  // The kernel named `name` (declare it extern "C" so its name is not mangled). Errc::not_found
  // when the module has no such kernel.
  Result<Kernel> kernel(const std::string& name) const;

  // Blocks of `k` resident on the whole device at once with `block` threads per block: a kernel
  // whose blocks stride over their work never needs a larger grid.
  Result<unsigned> max_resident_blocks(Kernel k, unsigned block, unsigned shared_bytes = 0) const;

  // Queues `k` on `stream`: Stream{} (the legacy default stream) or a stream of the CUDA backend
  // on this device (the caller's own CUstream of this device's primary context works too).
  // `params` is cuLaunchKernel's: one pointer to each parameter's value, in the kernel's order;
  // nothing can check them against the kernel's signature. invalid_argument for an empty shape;
  // driver_error when the driver refuses the launch
  // (an error of the kernel itself shows at the next synchronization of the stream).
  Status launch_raw(Kernel k, const LaunchShape& shape, Stream stream, void** params);

  // The same with the parameters' values, in the kernel's order and of its parameters' exact
  // types (a kernel taking `unsigned int` must get an unsigned int, not a std::size_t).
  template <class... Args>
  Status launch(Kernel k, const LaunchShape& shape, Stream stream, const Args&... args) {
    void* params[] = {const_cast<void*>(static_cast<const void*>(&args))..., nullptr};
    return launch_raw(k, shape, stream, params);
  }

  int device() const;

  struct State;
  explicit CudaModule(std::unique_ptr<State> state);

 private:
  std::unique_ptr<State> s_;
};

}  // namespace valet
