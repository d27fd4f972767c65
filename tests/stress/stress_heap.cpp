#include "stress_heap.h"

#include "valet/runtime.h"

namespace valet::stress {

Result<StressHeap> open_stress_heap(const StressOptions& o) {
  StressHeap out;
  std::unique_ptr<Backend> backend;
  const bool want_cuda = o.backend == BackendChoice::cuda || (o.backend == BackendChoice::automatic && cuda_usable(o.device));
  if (want_cuda) {
    if (!cuda_usable(o.device)) {
      out.skipped = "no usable CUDA device: " + cuda_unusable_reason(o.device);
      return out;
    }
    BackendOptions bo;
    bo.choice = BackendChoice::cuda;
    bo.device = o.device;
    auto cuda = open_backend(bo);
    if (!cuda.ok()) return cuda.error();
    backend = std::move(cuda).value();
  } else {
    // Built here rather than through open_heap() so that the HostBackend stays reachable under
    // the fault adaptor (pages_in_use() after shutdown).
    auto host = std::make_unique<BackendModel<HostBackend>>(
        HostBackendOptions{.capacity_bytes = o.capacity, .task_delay = std::chrono::microseconds(o.host_delay_us)});
    VALET_TRY(host->impl().status());
    out.host = &host->impl();
    backend = std::move(host);
  }
  if (o.faults || o.driver_delay_us > 0) {
    auto faulty = std::make_unique<FaultInjectingBackend>(std::move(backend));
    if (o.driver_delay_us > 0) faulty->delay_page_calls(std::chrono::microseconds(o.driver_delay_us));
    if (o.faults) out.faults = faulty.get();
    backend = std::move(faulty);
  }
  Config config;
  config.capacity = o.capacity;
  config.chunk_min_pages = o.chunk_min_pages;
  config.chunk_miss_pages = o.chunk_miss_pages;
  config.copy_region_min_bytes = o.copy_region_min_bytes;
  config.copy_region_chunk_bytes = o.copy_region_chunk_bytes;
  config.keeper_defers = o.keeper_defers;
  config.background_misses = o.background_misses;
  config.reserve_hold_ms = o.reserve_hold_ms;
  config.reserve_hold_allocs = o.reserve_hold_allocs;
  config.miss_mapper_spin_us = o.mapper_spin_us;
  config.background_miss_limit = o.background_miss_limit;
  config.standby_tail_aliases = o.standby_tail_aliases;
  config.mapper_places_misses = !o.caller_places_misses;
  config.pins_serve_misses = o.pins_serve_misses;
  config.unlocked_misses = o.unlocked_misses;
  config.keeper_creates_ahead = o.create_ahead;
  config.thread_cache_run_bytes = o.thread_cache_run_bytes;
  auto heap = Heap::create(std::move(backend), config);
  if (!heap.ok()) return heap.error();
  out.heap = std::move(heap).value();
  return out;
}

void arm_random_faults(FaultInjectingBackend& faults, double rate, std::uint64_t seed) {
  std::uint64_t k = 0;
  for (FaultOp op : {FaultOp::create_page, FaultOp::map, FaultOp::set_access, FaultOp::copy})
    faults.fail_randomly(op, rate, seed + 7919 * ++k);
}

std::uint64_t faults_injected(const StressHeap& h) { return h.faults ? h.faults->total_faults() : 0; }

}  // namespace valet::stress
