#include "registry.h"

#include <array>
#include <atomic>
#include <cstdio>
#include <mutex>

namespace valet::torch {

namespace {

struct Registry {
  std::mutex mutex;  // making heaps, configure, reset
  std::array<std::atomic<DeviceHeap*>, kMaxDevices> heaps{};
  Overrides overrides;
  std::array<std::string, kMaxDevices> reported;  // the last creation failure printed, per device
  std::mutex error_mutex;
  std::string last_error;
};

// Deliberately leaked, heaps included: PyTorch frees tensors during interpreter shutdown, after
// static destructors have run (its caching of tensors in Python objects outlives them), and those
// frees must find the heap and its pointer map alive. Destroying heaps at exit would turn every
// such free into a use-after-free; the operating system takes the memory back at exit anyway.
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

}  // namespace

DeviceHeap* existing_heap(int device) {
  if (device < 0 || device >= kMaxDevices) return nullptr;
  return registry().heaps[std::size_t(device)].load(std::memory_order_acquire);
}

Result<DeviceHeap*> heap_for(int device) {
  if (DeviceHeap* h = existing_heap(device)) return h;
  if (device < 0 || device >= kMaxDevices)
    return make_error(Errc::invalid_argument, "device " + std::to_string(device) + " is out of range [0, " +
                                                  std::to_string(kMaxDevices) + ")");
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  auto& slot = r.heaps[std::size_t(device)];
  if (DeviceHeap* h = slot.load(std::memory_order_acquire)) return h;  // another thread made it
  auto settings = resolve_settings(r.overrides, device);
  auto made = settings.ok() ? DeviceHeap::create(device, *settings) : Result<std::unique_ptr<DeviceHeap>>(settings.error());
  if (!made.ok()) {
    const std::string message = "valet_torch: no heap on device " + std::to_string(device) + ": " + made.error().to_string();
    if (r.reported[std::size_t(device)] != message) {
      std::fprintf(stderr, "%s\n", message.c_str());
      r.reported[std::size_t(device)] = message;
    }
    return make_error(made.code(), message);
  }
  DeviceHeap* h = std::move(made).value().release();  // never destroyed (see registry())
  slot.store(h, std::memory_order_release);
  return h;
}

Status configure(const char* capacity, const char* policy) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  for (const auto& h : r.heaps)
    if (h.load(std::memory_order_acquire))
      return make_error(Errc::invalid_state, "configure must come before the first allocation (a heap exists already)");
  Overrides next = r.overrides;
  if (capacity && *capacity) {
    if (auto c = parse_capacity(capacity); !c.ok())
      return make_error(c.code(), "capacity='" + std::string(capacity) + "': " + c.error().message);
    next.capacity = capacity;
  }
  if (policy && *policy) {
    if (auto p = parse_policy(policy); !p.ok())
      return make_error(p.code(), "policy='" + std::string(policy) + "': " + p.error().message);
    next.policy = policy;
  }
  r.overrides = std::move(next);
  return {};
}

void set_last_error(std::string message) {
  Registry& r = registry();
  std::lock_guard lock(r.error_mutex);
  r.last_error = std::move(message);
}

std::string last_error() {
  Registry& r = registry();
  std::lock_guard lock(r.error_mutex);
  return r.last_error;
}

Status reset_registry() {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  for (int d = 0; d < kMaxDevices; ++d)
    if (DeviceHeap* h = r.heaps[std::size_t(d)].load(std::memory_order_acquire); h && h->live_pointers() != 0)
      return make_error(Errc::invalid_state, "device " + std::to_string(d) + " still has " +
                                                 std::to_string(h->live_pointers()) + " live allocations");
  for (auto& slot : r.heaps) delete slot.exchange(nullptr, std::memory_order_acq_rel);
  r.overrides = {};
  for (auto& s : r.reported) s.clear();
  set_last_error({});
  return {};
}

}  // namespace valet::torch
