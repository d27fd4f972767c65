// The byte pattern used by fill_pattern/verify_pattern, shared by host and device code so that
// either side can write what the other checks.
//
// Byte i of a range with seed s is byte (i % 8) of mix(s + i / 8): a function of the range's own
// offset only, so a pattern survives any move of the range to another address.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define VALET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define VALET_HOST_DEVICE inline
#endif

namespace valet::kernels {

// splitmix64's finalizer: cheap, and every input bit reaches every output bit.
VALET_HOST_DEVICE std::uint64_t pattern_mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The 8 pattern bytes of word w (bytes 8w .. 8w+7), little-endian.
VALET_HOST_DEVICE std::uint64_t pattern_word(std::uint64_t seed, std::uint64_t w) {
  return pattern_mix(seed + w);
}

VALET_HOST_DEVICE std::uint8_t pattern_byte(std::uint64_t seed, std::uint64_t i) {
  return static_cast<std::uint8_t>(pattern_word(seed, i >> 3) >> ((i & 7u) * 8u));
}

}  // namespace valet::kernels
