// The heap's clock: steady nanoseconds, for cycle durations and pin waits.
#pragma once

#include <chrono>
#include <cstdint>

namespace valet::detail {

inline std::uint64_t now_ns() {
  return std::uint64_t(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

}  // namespace valet::detail
