// The C ABI of libvalet_torch.so (valet/torch_allocator.h). Nothing may escape into PyTorch or
// Python: every entry point turns errors (and any exception) into NULL, -1 or a line on stderr,
// and keeps the reason for valet_torch_last_error(). The one exception by design is
// valet_torch_malloc_or_throw, whose out-of-memory exception is how PyTorch must be told.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "registry.h"
#include "valet/torch_allocator.h"

namespace {

using valet::torch::DeviceHeap;

char* dup_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

valet::Stream stream_of(void* stream) { return valet::Stream{reinterpret_cast<std::uintptr_t>(stream)}; }

// The JSON of `make(heap)` for `device`, or {"active":false,"device":d} where no heap exists.
template <class Make>
char* device_json(const char* what, int device, Make&& make) {
  try {
    DeviceHeap* h = valet::torch::existing_heap(device);
    if (!h) return dup_string(nlohmann::json{{"active", false}, {"device", device}}.dump());
    auto j = make(*h);
    if (!j.ok()) {
      valet::torch::set_last_error(std::string(what) + ": device " + std::to_string(device) + ": " + j.error().to_string());
      return nullptr;
    }
    return dup_string(j->dump());
  } catch (const std::exception& e) {
    valet::torch::set_last_error(std::string(what) + ": " + e.what());
  } catch (...) {
    valet::torch::set_last_error(std::string(what) + ": unknown exception");
  }
  return nullptr;
}

}  // namespace

extern "C" {

void* valet_torch_malloc(size_t size, int device, void* stream) {
  if (size == 0) return nullptr;
  try {
    auto heap = valet::torch::heap_for(device);  // prints its own failure (once)
    if (!heap.ok()) {
      valet::torch::set_last_error(heap.error().message);
      return nullptr;
    }
    auto p = (*heap)->allocate(size, stream_of(stream));
    if (p.ok()) return *p;
    valet::torch::set_last_error("valet_torch_malloc: " + std::to_string(size) + " bytes on device " +
                                 std::to_string(device) + ": " + p.error().to_string());
  } catch (const std::exception& e) {
    valet::torch::set_last_error(std::string("valet_torch_malloc: ") + e.what());
  } catch (...) {
    valet::torch::set_last_error("valet_torch_malloc: unknown exception");
  }
  return nullptr;
}

void* valet_torch_malloc_or_throw(size_t size, int device, void* stream) {
  void* p = valet_torch_malloc(size, device, stream);
  if (p || size == 0) return p;
  throw std::runtime_error("CUDA out of memory. Tried to allocate " + std::to_string(size) + " bytes on device " +
                           std::to_string(device) + " (Valet): " + valet::torch::last_error());
}

void valet_torch_free(void* ptr, size_t size, int device, void* stream) {
  if (!ptr) return;
  try {
    std::string problem;
    if (DeviceHeap* h = valet::torch::existing_heap(device)) {
      problem = h->free(ptr, size, stream_of(stream));
    } else {
      char p[32];
      std::snprintf(p, sizeof p, "0x%" PRIxPTR, reinterpret_cast<std::uintptr_t>(ptr));
      problem = std::string(p) + " (" + std::to_string(size) + " bytes): device " + std::to_string(device) +
                " has no Valet heap (nothing was allocated there); ignored";
    }
    if (problem.empty()) return;
    for (int d = 0; d < valet::torch::kMaxDevices; ++d)
      if (DeviceHeap* other = valet::torch::existing_heap(d); d != device && other && other->owns(ptr))
        problem += " (it is a live allocation of device " + std::to_string(d) + ")";
    std::fprintf(stderr, "valet_torch_free: %s\n", problem.c_str());
    valet::torch::set_last_error("valet_torch_free: " + problem);
  } catch (...) {
    std::fprintf(stderr, "valet_torch_free: unexpected exception; pointer left as it was\n");
  }
}

int valet_torch_configure(const char* capacity, const char* policy) {
  try {
    if (auto st = valet::torch::configure(capacity, policy); !st.ok()) {
      valet::torch::set_last_error("valet_torch_configure: " + st.error().to_string());
      return -1;
    }
    return 0;
  } catch (...) {
    valet::torch::set_last_error("valet_torch_configure: unexpected exception");
    return -1;
  }
}

char* valet_torch_compact(int device) {
  return device_json("valet_torch_compact", device, [](DeviceHeap& h) { return h.compact_at_safe_point(); });
}

char* valet_torch_stats(int device) {
  return device_json("valet_torch_stats", device, [](DeviceHeap& h) { return valet::Result<nlohmann::json>(h.stats_json()); });
}

char* valet_torch_page_map(int device) {
  return device_json("valet_torch_page_map", device, [](DeviceHeap& h) { return valet::Result<nlohmann::json>(h.page_map_json()); });
}

char* valet_torch_last_error(void) {
  try {
    return dup_string(valet::torch::last_error());
  } catch (...) {
    return nullptr;
  }
}

void valet_torch_free_string(char* s) { std::free(s); }

}  // extern "C"
