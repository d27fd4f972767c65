#include <memory>

#include "valet/cuda_backend.h"
#include "valet/host_backend.h"
#include "valet/runtime.h"

namespace valet {

Result<BackendChoice> parse_backend_choice(std::string_view text) {
  if (text == "auto") return BackendChoice::automatic;
  if (text == "cuda") return BackendChoice::cuda;
  if (text == "host") return BackendChoice::host;
  return make_error(Errc::invalid_argument,
                    "unknown backend '" + std::string(text) + "' (expected auto, cuda or host)");
}

const char* backend_choice_name(BackendChoice choice) {
  switch (choice) {
    case BackendChoice::automatic: return "auto";
    case BackendChoice::cuda: return "cuda";
    case BackendChoice::host: return "host";
  }
  return "?";
}

std::string cuda_unusable_reason(int device) {
  auto backend = open_cuda_backend(device);
  return backend.ok() ? std::string() : backend.error().message;
}

bool cuda_usable(int device) { return cuda_unusable_reason(device).empty(); }

Result<std::unique_ptr<Backend>> open_backend(const BackendOptions& options) {
  if (options.choice != BackendChoice::host) {
    auto cuda = open_cuda_backend(options.device);
    if (cuda.ok() || options.choice == BackendChoice::cuda) return cuda;
  }
  auto host = std::make_unique<BackendModel<HostBackend>>(
      HostBackendOptions{.capacity_bytes = options.host_capacity, .task_delay = options.host_task_delay});
  VALET_TRY(host->impl().status());
  return std::unique_ptr<Backend>(std::move(host));
}

}  // namespace valet
