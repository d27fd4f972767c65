// A handle names one heap object. Objects move (compaction, resize); handles do not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace valet {

// Small and trivially copyable. A null handle has generation 0. `heap` is the tag of the heap that
// made it (never reused within a process), so another heap's handles are refused.
struct Handle {
  std::uint32_t index = 0;
  std::uint32_t generation = 0;
  std::uint32_t heap = 0;

  bool is_null() const { return generation == 0; }
  explicit operator bool() const { return !is_null(); }
  friend bool operator==(const Handle&, const Handle&) = default;
};

static_assert(sizeof(Handle) == 12);
// Kernels receive handles as valet::kernels::DeviceHandle: the same three words in the same order.
static_assert(offsetof(Handle, index) == 0 && offsetof(Handle, generation) == 4 && offsetof(Handle, heap) == 8);

}  // namespace valet

template <>
struct std::hash<valet::Handle> {
  std::size_t operator()(const valet::Handle& h) const noexcept {
    return std::hash<std::uint64_t>{}((std::uint64_t(h.heap) << 52) ^ (std::uint64_t(h.generation) << 26) ^ h.index);
  }
};
