// Size classes of slab objects.
//
// Classes are multiples of 256 bytes, so every slab object is 256-byte aligned (what cudaMalloc
// users expect for vector loads): 256, 512, 768, 1024, then four per doubling (1280, 1536, 1792,
// 2048, 2560, ...) up to kMaxSlabObject = 1 MiB. Internal waste is below 25% from 1 KiB on
// (worst: 1025 bytes in the 1280 class) and below 256 bytes under 1 KiB. Objects above 1 MiB are
// large objects (whole 2 MiB pages, stitched). Measured reason for the 1 MiB threshold: with slabs
// only up to 256 KiB, every object between 256 KiB and 2 MiB takes a whole page, and even a
// perfectly compacted heap fails 28 of 30 probes on the h11/h12 traces (docs/design.md).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "valet/types.h"

namespace valet::detail {

inline constexpr std::size_t kPageSize = kPageBytes;
inline constexpr std::size_t kMinClass = 256;
inline constexpr std::size_t kMaxSlabObject = std::size_t{1} << 20;

// 4 below 1 KiB + 4 per doubling from 1 KiB (exclusive) to 1 MiB (inclusive): 4 + 40 = 44.
inline constexpr std::size_t kClassCount = 44;

struct SizeClasses {
  std::array<std::uint32_t, kClassCount> size{};
  std::array<std::uint32_t, kClassCount> slots_per_page{};
  consteval SizeClasses() {
    std::size_t i = 0;
    for (std::uint32_t s = 256; s <= 1024; s += 256) size[i++] = s;
    for (std::uint32_t base = 1024; base < (1u << 20); base *= 2)
      for (std::uint32_t k = 1; k <= 4; ++k) size[i++] = base + k * (base / 4);
    for (std::size_t c = 0; c < kClassCount; ++c) slots_per_page[c] = std::uint32_t(kPageSize / size[c]);
  }
};

inline constexpr SizeClasses kClasses{};

static_assert(kClasses.size[kClassCount - 1] == kMaxSlabObject);

// The smallest class holding `bytes` (1 <= bytes <= kMaxSlabObject).
inline std::uint32_t class_of(std::size_t bytes) {
  if (bytes <= 1024) return std::uint32_t((bytes + 255) / 256) - 1;
  // bytes in (2^k, 2^(k+1)]: class 4 + 4*(k-10) + ceil((bytes - 2^k) / (2^k/4)) - 1.
  const unsigned k = 63u - unsigned(__builtin_clzll(std::uint64_t(bytes - 1)));  // 2^k < bytes <= 2^(k+1)
  const std::size_t base = std::size_t{1} << k;
  const std::size_t step = base / 4;
  return std::uint32_t(4 + 4 * (k - 10) + (bytes - base + step - 1) / step - 1);
}

inline std::size_t class_size(std::uint32_t c) { return kClasses.size[c]; }
inline std::uint32_t class_slots(std::uint32_t c) { return kClasses.slots_per_page[c]; }

}  // namespace valet::detail
