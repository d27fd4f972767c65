// Valet's device code: a batched copy, a pattern fill and a pattern verify.
//
// Compiled by nvcc into a fatbin embedded in the library (kernels/CMakeLists.txt), loaded with
// cuModuleLoadData and launched with cuLaunchKernel by the CUDA backend
// (runtime/src/cuda/cuda_backend.cpp). The kernels are extern "C" so their names are stable.
//
// Work model: the host turns the caller's ranges into *items* of at most kItemBytes bytes (a range
// larger than that is cut into several items), stages them in a device array, and launches one
// kernel over them. One warp copies (fills, verifies) one item; warps stride over the items, so
// any grid size works. Inside an item the warp handles the bytes up to the first 16-byte-aligned
// destination address one per lane, moves the aligned middle with 16-byte stores (and 16-byte
// loads when the source is aligned the same way; narrower aligned loads put back together with
// funnel shifts otherwise), and finishes the unaligned tail one byte per lane. No access ever
// touches a byte outside the item except inside an aligned 4-byte word that holds one of its
// bytes, so it never crosses into an unmapped page.
#include <cstdint>

#include "valet/kernels/pattern.h"
#include "valet/kernels/work_items.h"

namespace {

using valet::kernels::abi::CopyItem;
using valet::kernels::abi::PatternItem;
using u64 = unsigned long long;

constexpr unsigned kWarp = 32;

__device__ __forceinline__ unsigned lane_id() { return threadIdx.x & (kWarp - 1); }

__device__ __forceinline__ u64 global_warp() {
  return (static_cast<u64>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
}

__device__ __forceinline__ u64 warp_count() { return static_cast<u64>(gridDim.x) * blockDim.x / kWarp; }

// Bytes before the first 16-byte-aligned address at or after p, capped at n.
__device__ __forceinline__ u64 head_bytes(const void* p, u64 n) {
  const u64 head = (16u - (reinterpret_cast<std::uintptr_t>(p) & 15u)) & 15u;
  return head < n ? head : n;
}

__device__ __forceinline__ uint4 make_vec(u64 lo, u64 hi) {
  return make_uint4(static_cast<unsigned>(lo), static_cast<unsigned>(lo >> 32), static_cast<unsigned>(hi),
                    static_cast<unsigned>(hi >> 32));
}

// Copies nvec 16-byte vectors from s to d with the whole warp; d is 16-byte aligned, s may not be.
// Sources are read through the non-coherent path (ld.global.nc): ranges of one batch never
// overlap, so nothing this kernel writes is read by it.
__device__ __forceinline__ void copy_aligned_middle(const unsigned char* __restrict__ s, unsigned char* __restrict__ d,
                                                    u64 nvec, unsigned lane) {
  uint4* __restrict__ dv = reinterpret_cast<uint4*>(d);
  const std::uintptr_t sa = reinterpret_cast<std::uintptr_t>(s);
  if ((sa & 15u) == 0) {
    const uint4* __restrict__ sv = reinterpret_cast<const uint4*>(s);
    u64 i = lane;
    // Four independent 16-byte loads in flight per lane before the stores.
    for (; i + 3 * kWarp < nvec; i += 4 * kWarp) {
      const uint4 a = __ldg(sv + i);
      const uint4 b = __ldg(sv + i + kWarp);
      const uint4 c = __ldg(sv + i + 2 * kWarp);
      const uint4 e = __ldg(sv + i + 3 * kWarp);
      __stcg(dv + i, a);
      __stcg(dv + i + kWarp, b);
      __stcg(dv + i + 2 * kWarp, c);
      __stcg(dv + i + 3 * kWarp, e);
    }
    for (; i < nvec; i += kWarp) __stcg(dv + i, __ldg(sv + i));
  } else if ((sa & 7u) == 0) {
    const u64* __restrict__ s8 = reinterpret_cast<const u64*>(s);
    u64 i = lane;
    for (; i + kWarp < nvec; i += 2 * kWarp) {
      const u64 a0 = __ldg(s8 + 2 * i), a1 = __ldg(s8 + 2 * i + 1);
      const u64 b0 = __ldg(s8 + 2 * (i + kWarp)), b1 = __ldg(s8 + 2 * (i + kWarp) + 1);
      __stcg(dv + i, make_vec(a0, a1));
      __stcg(dv + i + kWarp, make_vec(b0, b1));
    }
    for (; i < nvec; i += kWarp) __stcg(dv + i, make_vec(__ldg(s8 + 2 * i), __ldg(s8 + 2 * i + 1)));
  } else if ((sa & 3u) == 0) {
    const unsigned* __restrict__ s4 = reinterpret_cast<const unsigned*>(s);
#pragma unroll 2
    for (u64 i = lane; i < nvec; i += kWarp)
      __stcg(dv + i, make_uint4(__ldg(s4 + 4 * i), __ldg(s4 + 4 * i + 1), __ldg(s4 + 4 * i + 2),
                                __ldg(s4 + 4 * i + 3)));
  } else {
    // The source is not 4-byte aligned: read the aligned words that hold the 16 bytes (five of
    // them; the first and the last hold bytes outside, in the same aligned words, so in mapped
    // memory) and shift them into place.
    const unsigned* __restrict__ s4 = reinterpret_cast<const unsigned*>(sa & ~std::uintptr_t{3});
    const unsigned shift = static_cast<unsigned>(sa & 3u) * 8u;
#pragma unroll 2
    for (u64 i = lane; i < nvec; i += kWarp) {
      const unsigned w0 = __ldg(s4 + 4 * i), w1 = __ldg(s4 + 4 * i + 1), w2 = __ldg(s4 + 4 * i + 2),
                     w3 = __ldg(s4 + 4 * i + 3), w4 = __ldg(s4 + 4 * i + 4);
      __stcg(dv + i, make_uint4(__funnelshift_r(w0, w1, shift), __funnelshift_r(w1, w2, shift),
                         __funnelshift_r(w2, w3, shift), __funnelshift_r(w3, w4, shift)));
    }
  }
}

__device__ __forceinline__ void warp_copy(const unsigned char* __restrict__ s, unsigned char* __restrict__ d, u64 n,
                                          unsigned lane) {
  const u64 head = head_bytes(d, n);
  if (lane < head) d[lane] = s[lane];
  s += head;
  d += head;
  n -= head;
  const u64 nvec = n >> 4;
  if (nvec) copy_aligned_middle(s, d, nvec, lane);
  const u64 done = nvec << 4;
  if (lane < n - done) d[done + lane] = s[done + lane];
}

// The 16 pattern bytes at range offsets g .. g+15, where r = g % 8 (the same for every 16-byte
// step of one item, so the caller computes it once).
__device__ __forceinline__ uint4 pattern_vec(u64 seed, u64 g, unsigned r) {
  const u64 q = g >> 3;
  const u64 a = valet::kernels::pattern_word(seed, q);
  const u64 b = valet::kernels::pattern_word(seed, q + 1);
  if (r == 0) return make_vec(a, b);
  const u64 c = valet::kernels::pattern_word(seed, q + 2);
  const unsigned sh = r * 8u;
  return make_vec((a >> sh) | (b << (64u - sh)), (b >> sh) | (c << (64u - sh)));
}

__device__ __forceinline__ void warp_fill(unsigned char* __restrict__ d, u64 n, u64 seed, u64 off, unsigned lane) {
  const u64 head = head_bytes(d, n);
  if (lane < head) d[lane] = valet::kernels::pattern_byte(seed, off + lane);
  d += head;
  off += head;
  n -= head;
  const u64 nvec = n >> 4;
  const unsigned r = static_cast<unsigned>(off & 7u);
  uint4* __restrict__ dv = reinterpret_cast<uint4*>(d);
#pragma unroll 2
  for (u64 i = lane; i < nvec; i += kWarp) __stcg(dv + i, pattern_vec(seed, off + 16 * i, r));
  const u64 done = nvec << 4;
  if (lane < n - done) d[done + lane] = valet::kernels::pattern_byte(seed, off + done + lane);
}

__device__ __forceinline__ unsigned differing_bytes(u64 x) {
  unsigned n = 0;
  for (; x; x >>= 8) n += (x & 0xffu) != 0;
  return n;
}

// Returns this lane's count of bytes that differ from the pattern.
__device__ __forceinline__ u64 warp_verify(const unsigned char* __restrict__ d, u64 n, u64 seed, u64 off,
                                           unsigned lane) {
  u64 bad = 0;
  const u64 head = head_bytes(d, n);
  if (lane < head) bad += d[lane] != valet::kernels::pattern_byte(seed, off + lane);
  d += head;
  off += head;
  n -= head;
  const u64 nvec = n >> 4;
  const unsigned r = static_cast<unsigned>(off & 7u);
  const uint4* __restrict__ dv = reinterpret_cast<const uint4*>(d);
#pragma unroll 2
  for (u64 i = lane; i < nvec; i += kWarp) {
    const uint4 got = __ldg(dv + i);
    const uint4 want = pattern_vec(seed, off + 16 * i, r);
    const u64 lo = (static_cast<u64>(got.y ^ want.y) << 32) | (got.x ^ want.x);
    const u64 hi = (static_cast<u64>(got.w ^ want.w) << 32) | (got.z ^ want.z);
    if (lo | hi) bad += differing_bytes(lo) + differing_bytes(hi);
  }
  const u64 done = nvec << 4;
  if (lane < n - done) bad += d[done + lane] != valet::kernels::pattern_byte(seed, off + done + lane);
  return bad;
}

}  // namespace

// Copies every item: items[i].bytes bytes from items[i].src to items[i].dst.
extern "C" __global__ void __launch_bounds__(256) valet_batched_copy(const CopyItem* __restrict__ items,
                                                                     u64 count) {
  const unsigned lane = lane_id();
  for (u64 w = global_warp(); w < count; w += warp_count()) {
    const CopyItem it = items[w];
    warp_copy(reinterpret_cast<const unsigned char*>(it.src), reinterpret_cast<unsigned char*>(it.dst), it.bytes,
              lane);
  }
}

// Writes the pattern: byte j of item i gets pattern_byte(seed, offset + j).
extern "C" __global__ void __launch_bounds__(256) valet_fill_pattern(const PatternItem* __restrict__ items,
                                                                     u64 count) {
  const unsigned lane = lane_id();
  for (u64 w = global_warp(); w < count; w += warp_count()) {
    const PatternItem it = items[w];
    warp_fill(reinterpret_cast<unsigned char*>(it.dst), it.bytes, it.seed, it.offset, lane);
  }
}

// Adds to *mismatches the number of bytes of the items that differ from the pattern.
extern "C" __global__ void __launch_bounds__(256) valet_verify_pattern(const PatternItem* __restrict__ items,
                                                                       u64 count, u64* mismatches) {
  const unsigned lane = lane_id();
  u64 bad = 0;
  // The loop bound is the same for the whole warp, so every lane reaches the shuffles below.
  for (u64 w = global_warp(); w < count; w += warp_count()) {
    const PatternItem it = items[w];
    bad += warp_verify(reinterpret_cast<const unsigned char*>(it.dst), it.bytes, it.seed, it.offset, lane);
  }
  for (unsigned o = kWarp / 2; o > 0; o /= 2) bad += __shfl_down_sync(0xffffffffu, bad, o);
  if (lane == 0 && bad) atomicAdd(mismatches, bad);
}
