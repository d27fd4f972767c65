// Test kernels that read heap objects through their handles (device-side resolution).
#include "valet/kernels/handle_table.h"

// One block per handle: resolves it, and counts the bytes that differ from the object's pattern.
// A handle that does not resolve adds 2^40, so it cannot hide among byte counts.
extern "C" __global__ void valet_test_resolve_verify(valet::kernels::DeviceHandleTable table,
                                                     const valet::kernels::DeviceHandle* handles,
                                                     const unsigned long long* seeds, unsigned int n,
                                                     unsigned long long* mismatches) {
  for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
    const auto* p = static_cast<const unsigned char*>(valet::kernels::resolve(table, handles[i]));
    if (!p) {
      if (threadIdx.x == 0) atomicAdd(mismatches, 1ull << 40);
      continue;
    }
    const unsigned long long size = valet::kernels::resolved_size(table, handles[i]);
    unsigned long long bad = 0;
    for (unsigned long long b = threadIdx.x; b < size; b += blockDim.x)
      bad += p[b] != valet::kernels::pattern_byte(seeds[i], b);
    if (bad) atomicAdd(mismatches, bad);
  }
}
