// The layout of the work items that the host stages for the library's kernels
// (kernels/src/valet_kernels.cu): the batched copy, the pattern fill and the pattern verify.
//
// Shared, as plain C++ without device qualifiers, by the kernels and by the CUDA backend
// (runtime/src/cuda/), so both sides agree on it: a public header of the kernels layer, since the
// runtime may include kernels' headers but not its sources.
#pragma once

#include <cstddef>
#include <cstdint>

namespace valet::kernels::abi {

// The most bytes one item covers: the host cuts larger ranges into items of this size (a multiple
// of 16, so every item of one range keeps the range's alignment). One warp handles one item.
inline constexpr std::uint64_t kItemBytes = std::uint64_t{32} << 10;
// The items a range of `bytes` is cut into.
inline constexpr std::uint64_t items_of(std::uint64_t bytes) { return (bytes + kItemBytes - 1) / kItemBytes; }

// Threads per block of every kernel (8 warps).
inline constexpr unsigned kBlockThreads = 256;

// valet_batched_copy(const CopyItem* items, unsigned long long count)
struct CopyItem {
  std::uint64_t src;
  std::uint64_t dst;
  std::uint64_t bytes;
};

// valet_fill_pattern(const PatternItem* items, unsigned long long count)
// valet_verify_pattern(const PatternItem* items, unsigned long long count, unsigned long long* bad)
// Byte j of the item holds pattern_byte(seed, offset + j); offset is the item's position in the
// caller's range.
struct PatternItem {
  std::uint64_t dst;
  std::uint64_t bytes;
  std::uint64_t seed;
  std::uint64_t offset;
};

static_assert(sizeof(CopyItem) == 24 && alignof(CopyItem) == 8);
static_assert(sizeof(PatternItem) == 32 && alignof(PatternItem) == 8);

}  // namespace valet::kernels::abi
