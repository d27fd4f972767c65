// What valet-serve's handle sweep checks (handle_sweep.h), shared by the host code and the kernel
// (serve_kernels.cu, built by nvcc as C++17), so that both read the same bytes the same way.
//
// An object's pattern: byte i is pattern_byte(seed, i) (valet/kernels/pattern.h). Objects up to
// kWholeLimit are checked whole; larger ones only in stripes of kStripeBytes every kStripeEvery
// bytes, which still covers every 2 MiB page of the object. object_access.h writes the same ranges.
//
// The work is cut into *units* of at most 8 bytes: one aligned 64-bit word of the object (heap
// objects are 256-byte aligned), or the part of it below the checked limit.
#pragma once

#include <cstdint>
#include <cstring>

#include "valet/kernels/handle_table.h"
#include "valet/kernels/pattern.h"

namespace serve {

inline constexpr std::uint64_t kWholeLimit = std::uint64_t{256} << 10;
inline constexpr std::uint64_t kStripeEvery = std::uint64_t{64} << 10;
inline constexpr std::uint64_t kStripeBytes = 512;
inline constexpr std::uint64_t kUnitsPerStripe = kStripeBytes / 8;

// One object to check: its handle (not its address: the checker resolves it), the seed of its
// pattern, and how many of its first bytes carry the pattern.
struct CheckItem {
  valet::kernels::DeviceHandle handle;
  std::uint32_t striped;  // 1 when the object is larger than kWholeLimit (stripes only)
  std::uint64_t seed;
  std::uint64_t bytes;
};

// What one sweep found. In the kernel's argument object these come first, then the items.
struct CheckTotals {
  std::uint64_t objects = 0;           // items resolved and checked
  std::uint64_t unresolved = 0;        // items whose handle did not resolve (or to a smaller object)
  std::uint64_t bytes_checked = 0;
  std::uint64_t mismatched_bytes = 0;  // bytes that differ from the pattern
};

static_assert(sizeof(CheckItem) == 32, "the kernel and the host must agree on the layout");
static_assert(sizeof(CheckTotals) == 32, "the items after the totals stay 8-byte aligned");

VALET_HOST_DEVICE std::uint64_t check_units(const CheckItem& item) {
  if (!item.striped) return (item.bytes + 7) / 8;
  return (item.bytes + kStripeEvery - 1) / kStripeEvery * kUnitsPerStripe;
}

// Checks unit `u` of `item`, whose object starts at `p`: adds the bytes it covered to `*checked`
// and returns how many of them differ from the pattern.
VALET_HOST_DEVICE std::uint64_t check_unit(const unsigned char* p, const CheckItem& item, std::uint64_t u,
                                           std::uint64_t* checked) {
  const std::uint64_t offset = item.striped ? u / kUnitsPerStripe * kStripeEvery + u % kUnitsPerStripe * 8 : u * 8;
  if (offset >= item.bytes) return 0;  // the last stripe is cut at the limit
  const std::uint64_t n = item.bytes - offset < 8 ? item.bytes - offset : 8;
  *checked += n;
  if (n == 8) {
    std::uint64_t word;
#if defined(__CUDA_ARCH__)
    word = *reinterpret_cast<const std::uint64_t*>(p + offset);
#else
    std::memcpy(&word, p + offset, 8);
#endif
    if (word == valet::kernels::pattern_word(item.seed, offset / 8)) return 0;
  }
  std::uint64_t bad = 0;
  for (std::uint64_t k = 0; k < n; ++k) bad += p[offset + k] != valet::kernels::pattern_byte(item.seed, offset + k);
  return bad;
}

}  // namespace serve
