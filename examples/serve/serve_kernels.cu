// valet-serve's kernel: checks objects that it reaches only through their handles.
//
// Built by nvcc into a fatbin embedded in valet-serve (valet_embed_fatbin, examples/serve/
// CMakeLists.txt) and launched with valet::CudaModule under a Heap::pin_table scope
// (handle_sweep.cpp). Even its argument array is a heap object named by a handle.
#include "handle_check.h"

namespace {

using u64 = unsigned long long;

__device__ __forceinline__ u64 warp_sum(u64 v) {
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
  return v;
}

}  // namespace

// `args` names an object holding a CheckTotals (zeroed by the host) followed by `n` CheckItems.
// One block per item (blocks stride over the items); the block's threads stride over the item's
// units. Counts into the totals; leaves them untouched when `args` itself does not resolve, which
// the host sees as no object checked.
extern "C" __global__ void valet_serve_check(valet::kernels::DeviceHandleTable table, valet::kernels::DeviceHandle args,
                                             unsigned int n) {
  auto* base = static_cast<unsigned char*>(valet::kernels::resolve(table, args));
  const u64 args_bytes = sizeof(serve::CheckTotals) + u64(n) * sizeof(serve::CheckItem);
  if (!base || valet::kernels::resolved_size(table, args) < args_bytes) return;
  auto* totals = reinterpret_cast<serve::CheckTotals*>(base);
  const auto* items = reinterpret_cast<const serve::CheckItem*>(base + sizeof(serve::CheckTotals));
  for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
    const serve::CheckItem item = items[i];
    const auto* p = static_cast<const unsigned char*>(valet::kernels::resolve(table, item.handle));
    // Uniform across the block: every thread reads the same item.
    if (!p || valet::kernels::resolved_size(table, item.handle) < item.bytes) {
      if (threadIdx.x == 0) atomicAdd(reinterpret_cast<u64*>(&totals->unresolved), 1ull);
      continue;
    }
    const u64 units = serve::check_units(item);
    std::uint64_t checked = 0, bad = 0;
    for (u64 u = threadIdx.x; u < units; u += blockDim.x) bad += serve::check_unit(p, item, u, &checked);
    bad = warp_sum(bad);
    checked = warp_sum(checked);
    if ((threadIdx.x & 31u) == 0) {
      if (checked) atomicAdd(reinterpret_cast<u64*>(&totals->bytes_checked), u64(checked));
      if (bad) atomicAdd(reinterpret_cast<u64*>(&totals->mismatched_bytes), u64(bad));
    }
    if (threadIdx.x == 0) atomicAdd(reinterpret_cast<u64*>(&totals->objects), 1ull);
  }
}
