#include <cctype>
#include <memory>
#include <string>

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

Result<std::unique_ptr<Backend>> open_backend(const BackendOptions& options, std::string* why_not_cuda) {
  if (why_not_cuda) why_not_cuda->clear();
  if (options.choice != BackendChoice::host) {
    auto cuda = open_cuda_backend(options.device);
    if (cuda.ok() || options.choice == BackendChoice::cuda) return cuda;
    if (why_not_cuda) *why_not_cuda = cuda.error().message;
  }
  auto host = std::make_unique<BackendModel<HostBackend>>(
      HostBackendOptions{.capacity_bytes = options.host_capacity,
                         .task_delay = options.host_task_delay,
                         .gpu_pace = options.host_gpu_pace});
  VALET_TRY(host->impl().status());
  return std::unique_ptr<Backend>(std::move(host));
}

}  // namespace valet

namespace valet {

Result<std::unique_ptr<Heap>> open_heap(const BackendOptions& backend, const Config& config) {
  BackendOptions options = backend;
  if (config.capacity) options.host_capacity = config.capacity;
  auto opened = open_backend(options);
  if (!opened.ok()) return opened.error();
  return Heap::create(std::move(opened).value(), config);
}

Result<std::unique_ptr<Heap>> open_heap(const Config& config) { return open_heap(BackendOptions{}, config); }

Result<std::size_t> parse_size(std::string_view text) {
  std::string s(text);
  std::size_t pos = 0;
  double number = 0;
  try {
    number = std::stod(s, &pos);
  } catch (...) {
    return make_error(Errc::invalid_argument, "not a size: '" + s + "'");
  }
  std::string suffix = s.substr(pos);
  for (auto& ch : suffix) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  double scale = 1;
  if (suffix.empty() || suffix == "b") scale = 1;
  else if (suffix == "k" || suffix == "kb" || suffix == "kib") scale = 1024.0;
  else if (suffix == "m" || suffix == "mb" || suffix == "mib") scale = 1024.0 * 1024;
  else if (suffix == "g" || suffix == "gb" || suffix == "gib") scale = 1024.0 * 1024 * 1024;
  else if (suffix == "t" || suffix == "tb" || suffix == "tib") scale = 1024.0 * 1024 * 1024 * 1024;
  else return make_error(Errc::invalid_argument, "unknown size suffix in '" + s + "'");
  const double bytes = number * scale;
  if (!(bytes >= 0) || bytes > 1.8e19) return make_error(Errc::invalid_argument, "size out of range: '" + s + "'");
  return std::size_t(bytes);
}

}  // namespace valet
