// Opening backends (and, once a heap exists, heaps) in a process.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "valet/backend.h"
#include "valet/config.h"
#include "valet/heap.h"

namespace valet {

// Which backend open_backend() and open_heap() open: auto = CUDA where usable, else the host
// emulation.
enum class BackendChoice : std::uint8_t { automatic, cuda, host };

Result<BackendChoice> parse_backend_choice(std::string_view text);  // "auto" | "cuda" | "host"
const char* backend_choice_name(BackendChoice choice);

struct BackendOptions {
  BackendChoice choice = BackendChoice::automatic;
  int device = 0;                                       // CUDA device ordinal
  // Emulated memory of the host backend (open_heap() uses the heap's capacity instead where the
  // Config sets one).
  std::size_t host_capacity = std::size_t{2} << 30;
  std::chrono::microseconds host_task_delay{0};         // host only: delay before each queued copy/fill
  bool host_gpu_pace = false;  // host only: page calls as slow as a GPU driver's (HostBackendOptions::gpu_pace)
};

// True where this build has the CUDA backend, the driver loads, and `device` exists.
bool cuda_usable(int device = 0);
// Why CUDA is not usable (empty when it is).
std::string cuda_unusable_reason(int device = 0);

// Opens the chosen backend. `automatic` picks CUDA where it is usable and the host backend
// otherwise; kind() of the result says which, and `why_not_cuda` (where given) receives the
// reason CUDA was passed over (empty when it was not). Choosing `cuda` where it is not usable
// fails with Errc::unsupported and the reason.
Result<std::unique_ptr<Backend>> open_backend(const BackendOptions& options, std::string* why_not_cuda = nullptr);

// Opens the backend `backend` chooses and makes a heap of `config` on it. The host backend
// emulates a device of the heap's capacity (config.capacity; backend.host_capacity, 2 GiB by
// default, where that is 0).
Result<std::unique_ptr<Heap>> open_heap(const BackendOptions& backend, const Config& config);
// The same with the default BackendOptions: CUDA where usable, else the host emulation.
Result<std::unique_ptr<Heap>> open_heap(const Config& config);

// Parses a size: a byte count or a number with a suffix (K, M, G, T, KiB, MiB, GiB, TiB, KB, MB,
// GB: all powers of 1024). "8GiB", "512MiB", "1.5G", "4096".
Result<std::size_t> parse_size(std::string_view text);

}  // namespace valet
