#include "cuda/cuda_driver.h"

#include <dlfcn.h>

#include <atomic>
#include <optional>

namespace valet::cuda {
namespace {

// cuGetProcAddress_v2, as cuda.h (CUDA 12.0 and later) declares it.
using GetProcAddressFn = CUresult (*)(const char* symbol, void** pfn, int cuda_version, cuuint64_t flags,
                                      CUdriverProcAddressQueryResult* symbol_status);

struct Loaded {
  Driver driver;
  std::optional<Error> error;
};

std::atomic<const Driver*> g_driver{nullptr};

const char* query_status_name(CUdriverProcAddressQueryResult s) {
  switch (s) {
    case CU_GET_PROC_ADDRESS_SUCCESS: return "found";
    case CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND: return "symbol not found";
    case CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT: return "driver version not sufficient";
  }
  return "unknown status";
}

// The last dlopen/dlsym error, naming libcuda.so.1 once: dlerror() usually names the library
// itself ("libcuda.so.1: cannot open shared object file: ...", "/usr/lib/.../libcuda.so.1:
// undefined symbol: ..."), and is prefixed with it only where it does not.
std::string libcuda_error(const char* fallback) {
  const char* why = dlerror();
  std::string text = why ? why : fallback;
  if (text.find("libcuda.so.1") == std::string::npos) text = "libcuda.so.1: " + text;
  return text;
}

Loaded load() {
  Loaded out;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    out.error = make_error(Errc::unsupported, "CUDA driver not found (" + libcuda_error("unknown error") + ")");
    return out;
  }
  // Never dlclose: other parts of the process (the CUDA runtime) may share the library, and
  // handles from it outlive any one backend.
  dlerror();
  auto get_proc = reinterpret_cast<GetProcAddressFn>(dlsym(lib, "cuGetProcAddress_v2"));
  if (!get_proc) {
    out.error = make_error(Errc::unsupported, "the CUDA driver is too old: no cuGetProcAddress_v2 (" +
                                                  libcuda_error("symbol missing") + ")");
    return out;
  }
  // cuGetProcAddress refuses versions newer than the driver: say so plainly rather than failing
  // on the first entry point. (cuDriverGetVersion has had one ABI since CUDA 2.2.)
  {
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    void* fn = nullptr;
    int version = 0;
    if (get_proc("cuDriverGetVersion", &fn, 2020, CU_GET_PROC_ADDRESS_DEFAULT, &status) == CUDA_SUCCESS && fn &&
        reinterpret_cast<decltype(&::cuDriverGetVersion)>(fn)(&version) == CUDA_SUCCESS && version < CUDA_VERSION) {
      out.error = make_error(Errc::unsupported,
                             "the CUDA driver supports CUDA " + std::to_string(version / 1000) + "." +
                                 std::to_string(version % 1000 / 10) + "; this build of Valet needs CUDA " +
                                 std::to_string(CUDA_VERSION / 1000) + "." + std::to_string(CUDA_VERSION % 1000 / 10) +
                                 " or newer");
      return out;
    }
  }
  auto resolve = [&](const char* name, void** slot) -> bool {
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    void* fn = nullptr;
    const CUresult r = get_proc(name, &fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r != CUDA_SUCCESS || status != CU_GET_PROC_ADDRESS_SUCCESS || fn == nullptr) {
      out.error = make_error(Errc::unsupported,
                             std::string("the CUDA driver lacks ") + name + " for CUDA " +
                                 std::to_string(CUDA_VERSION) + " (cuGetProcAddress: " + result_name(r) + ", " +
                                 query_status_name(status) + ")");
      return false;
    }
    *slot = fn;
    return true;
  };
  // #fn is the base name as written in the list (not macro-expanded); the member is the
  // versioned function cuda.h declares.
#define VALET_CUDA_RESOLVE(fn) \
  if (!resolve(#fn, reinterpret_cast<void**>(&out.driver.fn))) return out;
  VALET_CUDA_DRIVER_FUNCTIONS(VALET_CUDA_RESOLVE)
#undef VALET_CUDA_RESOLVE
  return out;
}

}  // namespace

Result<const Driver*> load_driver() {
  static const Loaded loaded = load();  // thread-safe, once per process
  if (loaded.error) return *loaded.error;
  g_driver.store(&loaded.driver, std::memory_order_release);
  return &loaded.driver;
}

std::string result_name(CUresult r) {
  const Driver* d = g_driver.load(std::memory_order_acquire);
  const char* name = nullptr;
  if (d && d->cuGetErrorName(r, &name) == CUDA_SUCCESS && name)
    return std::string(name) + " (" + std::to_string(static_cast<int>(r)) + ")";
  return "CUresult " + std::to_string(static_cast<int>(r));
}

Error driver_error(const char* call, CUresult r) {
  return make_error(Errc::driver_error, std::string(call) + " failed: " + result_name(r));
}

}  // namespace valet::cuda
