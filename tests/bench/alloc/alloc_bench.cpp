// Allocation fast path: allocate+free pairs on the heap, median and p99, one thread and 8
// threads; on a GPU, side by side with the driver's stream-ordered pool (cuMemAllocAsync /
// cuMemFreeAsync) in the same run, and large allocations with an empty reserve against cuMemAlloc.
//
//   valet-bench-alloc [--backend auto|cuda|host] [--pairs N]
//   valet-bench-alloc --compactor-ab [--backend ...] [--rounds R] [--round-ms MS]
// (--help lists the options; a bad one exits with status 2 and a message, a heap that cannot be
// opened with status 1.)
//
// --compactor-ab: the fast path with the background compactor running (valet::Compactor, policy
// defaults) against no compactor (valet-replay --no-compact), on one heap in one process. Rounds
// of MS milliseconds (default 10 rounds of 100 ms per mode and size) alternate on, off, off, on,
// ... so that a drift in the machine's load falls on both alike; a round starts a Compactor (or
// not), then times groups of 16 pairs (each pair, and each group's mean per pair), each group
// followed by 16 untimed churn steps (free a random object of a background of 16384, allocate
// one of the current phase's size; see kPhaseSizes) that keep fragmenting the slab pages, so the
// compactor has cycles to run while the pairs are timed. Prints per mode and size the median and
// p99 of the pairs, the median of the group means, the ratios of the medians (on / off), the
// median over k of (k-th on round / k-th off round) of the rounds' median group means, the
// cycles the compactor ran and the pairs each mode timed. The heap's emergency compaction is on in both modes (no allocation fails here,
// so it never runs).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "valet/compactor.h"
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

// The churn's object sizes: one size class per phase, the phase moving on every kPhaseOps churn
// steps, so objects of earlier phases linger in pages that empty slowly (the pattern of the p23
// and p24 traces): the slab pages fragment and the policy finds cycles to run.
constexpr std::size_t kPhaseSizes[] = {256, 1024, 4096, 16384, 65536, 2048, 8192};
constexpr int kPhaseOps = 3000;
constexpr int kGroup = 16;  // pairs timed back to back, then as many untimed churn steps

// --compactor-ab (see the file's comment).
int compactor_ab(valet::Heap& h, int rounds, int round_ms) {
  std::mt19937_64 rng(42);
  std::uint64_t churn_ops = 0;
  auto churn_size = [&] {
    return kPhaseSizes[(churn_ops / kPhaseOps) % std::size(kPhaseSizes)] + std::size_t(rng() % 200);
  };
  std::vector<valet::Handle> background;
  for (int i = 0; i < 16384; ++i, ++churn_ops) background.push_back(*h.allocate(churn_size()));
  const std::size_t sizes[] = {256, 4096, 65536, 262144, 1048576};
  std::printf("compactor on (policy defaults, background thread) against off: %d rounds of %d ms per mode and "
              "size, alternating on/off/off/on; %d pairs timed, then %d untimed churn steps, in turn\n",
              rounds, round_ms, kGroup, kGroup);
  std::printf("%-10s %12s %12s %12s %12s %8s %12s %12s %8s %10s %8s %10s %10s\n", "bytes", "on_med_ns", "on_p99_ns",
              "off_med_ns", "off_p99_ns", "ratio", "on_grp_med", "off_grp_med", "ratio", "round_ratio", "cycles",
              "on_pairs", "off_pairs");
  double worst = 0, worst_group = 0, worst_round = 0;
  for (std::size_t bytes : sizes) {
    std::vector<double> on, off, on_group, off_group, on_rounds, off_rounds;
    std::uint64_t cycles = 0;
    for (int r = 0; r < 2 * rounds; ++r) {
      const bool with = (r % 4 == 0 || r % 4 == 3);  // on, off, off, on, ...
      std::unique_ptr<valet::Compactor> compactor;
      if (with) compactor = std::move(valet::Compactor::start(h)).value();
      const auto cycles0 = h.stats().compaction.cycles;
      std::vector<double>& ns = with ? on : off;
      std::vector<double>& group_ns = with ? on_group : off_group;
      const std::size_t groups_before = group_ns.size();
      const auto round_end = Clock::now() + std::chrono::milliseconds(round_ms);
      for (int g = 0; Clock::now() < round_end; ++g) {
        // A group of kGroup pairs back to back, each timed (the clock ticks in ~10 ns steps on
        // some hosts, so the group's mean per pair is kept as well, at a finer resolution).
        const auto g0 = Clock::now();
        for (int i = 0; i < kGroup; ++i) {
          const auto t0 = Clock::now();
          auto o = h.allocate(bytes);
          (void)h.free(*o);
          const double t = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
          if (g >= 8) ns.push_back(t);  // the first groups of a round warm up
        }
        if (g >= 8) group_ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - g0).count() / kGroup);
        // Churn (untimed): replace random objects of the background.
        for (int i = 0; i < kGroup; ++i) {
          auto& victim = background[rng() % background.size()];
          (void)h.free(victim);
          victim = *h.allocate(churn_size());
          ++churn_ops;
        }
      }
      if (compactor) {
        compactor.reset();  // stops the thread; its cycles are in the heap's totals
        cycles += h.stats().compaction.cycles - cycles0;
      }
      // This round's median group mean, for the per-round ratios.
      std::vector<double> mine(group_ns.begin() + std::ptrdiff_t(groups_before), group_ns.end());
      (with ? on_rounds : off_rounds).push_back(mine.empty() ? 0 : summarize(mine).median_ns);
    }
    // The k-th on round against the k-th off round (neighbours in time), median over k: robust to
    // a drift of the host's load across the run.
    std::vector<double> round_ratios;
    for (std::size_t k = 0; k < std::min(on_rounds.size(), off_rounds.size()); ++k)
      if (off_rounds[k] > 0) round_ratios.push_back(on_rounds[k] / off_rounds[k]);
    const double round_ratio = round_ratios.empty() ? 0 : summarize(round_ratios).median_ns;
    const auto a = summarize(on), b = summarize(off), ag = summarize(on_group), bg = summarize(off_group);
    worst = std::max(worst, a.median_ns / b.median_ns);
    worst_group = std::max(worst_group, ag.median_ns / bg.median_ns);
    worst_round = std::max(worst_round, round_ratio);
    std::printf("%-10zu %12.0f %12.0f %12.0f %12.0f %8.3f %12.1f %12.1f %8.3f %10.3f %8llu %10zu %10zu\n", bytes,
                a.median_ns, a.p99_ns, b.median_ns, b.p99_ns, a.median_ns / b.median_ns, ag.median_ns, bg.median_ns,
                ag.median_ns / bg.median_ns, round_ratio, (unsigned long long)cycles, on.size(), off.size());
    std::fflush(stdout);
  }
  std::printf("largest ratio (on / off) of the medians: %.3f per pair, %.3f per group of %d; of the per-round "
              "ratios: %.3f\n",
              worst, worst_group, kGroup, worst_round);
  for (auto b : background) (void)h.free(b);
  return 0;
}

// The fast path: allocate+free pairs of several sizes, one thread and 8, against a background
// of live objects (and the driver's pool beside them on a GPU).
void fast_path(valet::Heap& h, int pairs) {
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
}

// Large objects with the reserve empty: every page created and mapped on the spot (against
// cuMemAlloc on a GPU). The caller has closed its own heap first: one heap on the device at a time.
int cold_large(const valet::BackendOptions& backend, const valet::Config& cfg) {
  valet::Config cold = cfg;
  cold.reserve_low_pages = 0;
  cold.reserve_high_pages = 0;
  cold.background_reserve = false;
  auto cold_heap = valet::open_heap(backend, cold);
  if (!cold_heap.ok()) {
    std::fprintf(stderr, "valet-bench-alloc: %s\n", cold_heap.error().to_string().c_str());
    return 1;
  }
#if defined(VALET_HAVE_CUDA)
  const bool gpu = (*cold_heap)->backend().kind() == valet::BackendKind::cuda;
  const valet::cuda::Driver* drv = gpu ? *valet::cuda::load_driver() : nullptr;
#endif
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
      if (o.ok()) (void)(*cold_heap)->free(*o);
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
  return 0;
}

struct Arguments {
  std::string backend = "auto";
  int pairs = 20000;
  bool compactor_ab = false;
  int rounds = 10;
  int round_ms = 100;
};

// Parses the command line into `args`; an exit status when the run ends there (--help: 0; an
// error: 2, with CLI11's message).
std::optional<int> parse_arguments(int argc, char** argv, Arguments& args) {
  CLI::App app{
      "Allocation fast path: allocate+free pairs on a Valet heap (median and p99, one thread and 8), beside\n"
      "the driver's stream-ordered pool on a GPU, then large allocations with an empty reserve. With\n"
      "--compactor-ab: the fast path with the background compactor running against none, in alternating rounds.",
      "valet-bench-alloc"};
  app.add_option("--backend", args.backend, "auto, cuda or host")
      ->check(CLI::IsMember({"auto", "cuda", "host"}))
      ->capture_default_str();
  app.add_option("--pairs", args.pairs, "Pairs timed per size (the 8-thread run times pairs/8 per thread)")
      ->check(CLI::Range(8, 100000000))
      ->capture_default_str();
  app.add_flag("--compactor-ab", args.compactor_ab, "Compactor on against off instead of the fast path and cold runs");
  app.add_option("--rounds", args.rounds, "--compactor-ab: rounds per mode and size")
      ->check(CLI::Range(2, 100000))
      ->capture_default_str();
  app.add_option("--round-ms", args.round_ms, "--compactor-ab: length of a round in milliseconds")
      ->check(CLI::Range(10, 3600000))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args;
  if (auto exit_status = parse_arguments(argc, argv, args)) return *exit_status;
  valet::BackendOptions backend;
  backend.choice = valet::parse_backend_choice(args.backend).value();  // checked by CLI11
  valet::Config cfg;
  cfg.capacity = 4096 * kMiB;
  cfg.reserve_low_pages = 16;
  cfg.reserve_high_pages = 64;
  auto heap = valet::open_heap(backend, cfg);
  if (!heap.ok()) {
    std::fprintf(stderr, "valet-bench-alloc: %s\n", heap.error().to_string().c_str());
    return 1;
  }
  std::printf("backend: %s\n", (*heap)->backend().name().c_str());
  if (args.compactor_ab) return compactor_ab(**heap, args.rounds, args.round_ms);
  fast_path(**heap, args.pairs);
  heap->reset();  // one heap on the device at a time
  return cold_large(backend, cfg);
}
