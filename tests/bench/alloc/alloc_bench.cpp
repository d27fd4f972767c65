// Allocation fast path: allocate+free pairs on the heap, median and p99, one thread and 8
// threads; on a GPU, side by side with the driver's stream-ordered pool (cuMemAllocAsync /
// cuMemFreeAsync) in the same run, and large allocations with an empty reserve against cuMemAlloc.
//
//   valet-bench-alloc [--backend auto|cuda|host] [--pairs N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "valet/runtime.h"
#if defined(VALET_HAVE_CUDA)
#include "cuda/cuda_driver.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMiB = std::size_t{1} << 20;

struct Percentiles {
  double median_ns = 0, p99_ns = 0;
};

Percentiles summarize(std::vector<double>& ns) {
  std::sort(ns.begin(), ns.end());
  return {ns[ns.size() / 2], ns[std::min(ns.size() - 1, ns.size() * 99 / 100)]};
}

// Times `pairs` allocate+free pairs of `bytes` against a background of live objects.
Percentiles heap_pairs(valet::Heap& heap, std::size_t bytes, int pairs) {
  std::vector<double> ns;
  ns.reserve(pairs);
  for (int i = 0; i < pairs; ++i) {
    const auto t0 = Clock::now();
    auto h = heap.allocate(bytes);
    (void)heap.free(*h);
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
  }
  return summarize(ns);
}

Percentiles heap_pairs_threads(valet::Heap& heap, std::size_t bytes, int pairs, int threads) {
  std::vector<std::vector<double>> per(threads);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      per[t].reserve(pairs);
      for (int i = 0; i < pairs; ++i) {
        const auto t0 = Clock::now();
        auto h = heap.allocate(bytes);
        (void)heap.free(*h);
        per[t].push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
      }
    });
  for (auto& t : ts) t.join();
  std::vector<double> all;
  for (auto& v : per) all.insert(all.end(), v.begin(), v.end());
  return summarize(all);
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend = "auto";
  int pairs = 20000;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
    else if (!std::strcmp(argv[i], "--pairs") && i + 1 < argc) pairs = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: valet-bench-alloc [--backend auto|cuda|host] [--pairs N]\n");
      return 2;
    }
  }
  valet::Config cfg;
  cfg.backend = *valet::parse_backend_choice(backend);
  cfg.capacity = 4096 * kMiB;
  cfg.reserve_low_pages = 16;
  cfg.reserve_high_pages = 64;
  auto heap = valet::open_heap(cfg);
  if (!heap.ok()) {
    std::fprintf(stderr, "valet-bench-alloc: %s\n", heap.error().to_string().c_str());
    return 1;
  }
  auto& h = **heap;
  std::printf("backend: %s\n", h.backend().name().c_str());
  // A background of live objects, so the fast path runs against a populated heap.
  std::vector<valet::Handle> background;
  for (int i = 0; i < 4096; ++i) background.push_back(*h.allocate(256 + (i * 7919) % 200000));
  const std::size_t sizes[] = {256, 4096, 65536, 262144, 1048576, 8 * kMiB};
  std::printf("%-10s %14s %14s %14s %14s", "bytes", "valet_med_ns", "valet_p99_ns", "8thr_med_ns", "8thr_p99_ns");
#if defined(VALET_HAVE_CUDA)
  const bool gpu = h.backend().kind() == valet::BackendKind::cuda;
  const valet::cuda::Driver* drv = gpu ? *valet::cuda::load_driver() : nullptr;
  if (gpu) std::printf(" %14s %14s %8s", "pool_med_ns", "pool_p99_ns", "ratio");
#endif
  std::printf("\n");
  for (std::size_t bytes : sizes) {
    (void)heap_pairs(h, bytes, 1000);  // warm up: pages of the class, reserve
    auto one = heap_pairs(h, bytes, pairs);
    auto eight = heap_pairs_threads(h, bytes, pairs / 8, 8);
    std::printf("%-10zu %14.0f %14.0f %14.0f %14.0f", bytes, one.median_ns, one.p99_ns, eight.median_ns, eight.p99_ns);
#if defined(VALET_HAVE_CUDA)
    if (gpu) {
      // The driver's stream-ordered pool, default pool, release threshold at max, same sizes.
      CUdevice dev;
      CUcontext ctx;
      drv->cuDeviceGet(&dev, 0);
      drv->cuDevicePrimaryCtxRetain(&ctx, dev);
      drv->cuCtxSetCurrent(ctx);
      std::vector<double> ns;
      for (int i = 0; i < pairs + 1000; ++i) {
        CUdeviceptr p;
        const auto t0 = Clock::now();
        drv->cuMemAllocAsync(&p, bytes, CU_STREAM_LEGACY);
        drv->cuMemFreeAsync(p, CU_STREAM_LEGACY);
        if (i >= 1000) ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
      }
      drv->cuStreamSynchronize(CU_STREAM_LEGACY);
      auto pool = summarize(ns);
      std::printf(" %14.0f %14.0f %8.2f", pool.median_ns, pool.p99_ns, one.median_ns / pool.median_ns);
      drv->cuDevicePrimaryCtxRelease(dev);
    }
#endif
    std::printf("\n");
  }
  // Large objects with the reserve empty: every page created and mapped on the spot.
  {
    valet::Config cold = cfg;
    cold.reserve_low_pages = 0;
    cold.reserve_high_pages = 0;
    cold.background_reserve = false;
    background.clear();
    heap->reset();  // one heap on the device at a time
    auto cold_heap = valet::open_heap(cold);
    std::printf("\nlarge allocation, empty reserve (create+map+access per page):\n");
    std::printf("%-10s %14s", "bytes", "valet_med_ns");
#if defined(VALET_HAVE_CUDA)
    if (gpu) std::printf(" %14s %8s", "cuMemAlloc_ns", "ratio");
#endif
    std::printf("\n");
    for (std::size_t bytes : {2 * kMiB, 8 * kMiB, 64 * kMiB, 512 * kMiB}) {
      std::vector<double> ns;
      for (int i = 0; i < 15; ++i) {
        const auto t0 = Clock::now();
        auto o = (*cold_heap)->allocate(bytes);
        ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
        (void)(*cold_heap)->free(*o);
      }
      auto v = summarize(ns);
      std::printf("%-10zu %14.0f", bytes, v.median_ns);
#if defined(VALET_HAVE_CUDA)
      if (gpu) {
        std::vector<double> cu;
        for (int i = 0; i < 15; ++i) {
          CUdeviceptr p;
          const auto t0 = Clock::now();
          drv->cuMemAlloc(&p, bytes);
          cu.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
          drv->cuMemFree(p);
        }
        auto c = summarize(cu);
        std::printf(" %14.0f %8.2f", c.median_ns, v.median_ns / c.median_ns);
      }
#endif
      std::printf("\n");
    }
  }
  return 0;
}
