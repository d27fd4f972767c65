// Allocation fast path: allocate+free pairs on the heap, median and p99 per pair and aggregate
// pairs per second, on one thread and on N (--threads, 8 by default) started together; on a GPU,
// side by side with the driver's stream-ordered pool (cuMemAllocAsync / cuMemFreeAsync, each
// thread on its own stream) in the same run; then large allocations with an empty reserve
// against cuMemAlloc.
//
//   valet-bench-alloc [--backend auto|cuda|host] [--pairs N] [--threads N] [--json]
//   valet-bench-alloc --compactor-ab [--backend ...] [--rounds R] [--round-ms MS]
// (--help lists the options; a bad one exits with status 2 and a message, a heap that cannot be
// opened with status 1.) --json prints one JSON object (bench_report.h) instead of the tables.
// --compactor-ab: see compactor_ab.h.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench_report.h"
#include "compactor_ab.h"
#include "pair_run.h"
#include "valet/runtime.h"
#include "valet/types.h"
#if defined(VALET_HAVE_CUDA)
#include "driver_pool.h"
#endif

namespace {

using namespace valet::bench;

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr int kWarmupPairs = 1000;  // untimed pairs per thread before each run: pages, caches

#if defined(VALET_HAVE_CUDA)
using Baseline = PrimaryContext;
#else
struct Baseline {};  // no driver to compare with in a build without CUDA
#endif

// One thread of the heap's run.
class HeapWorker final : public PairWorker {
 public:
  HeapWorker(valet::Heap& heap, std::size_t bytes) : heap_(heap), bytes_(bytes) {}
  bool pair() override {
    auto h = heap_.allocate(bytes_);
    return h.ok() && heap_.free(*h).ok();
  }

 private:
  valet::Heap& heap_;
  std::size_t bytes_;
};

PairRun heap_pairs(valet::Heap& heap, std::size_t bytes, int threads, int per_thread) {
  std::vector<std::unique_ptr<PairWorker>> workers;
  for (int t = 0; t < threads; ++t) workers.push_back(std::make_unique<HeapWorker>(heap, bytes));
  return timed_pairs(workers, per_thread, kWarmupPairs);
}

// The fast path: pairs of several sizes against a background of live objects, one thread
// (`pairs` pairs) and N threads (`pairs` each: pairs / N each lasted 1-2 ms on the GPU machine,
// too short for the aggregate rate to measure more than the threads' start), and the driver's
// pool beside them on a GPU.
void fast_path(valet::Heap& h, const Baseline* baseline, bool print, BenchReport& report) {
  std::vector<valet::Handle> background;
  for (int i = 0; i < 4096; ++i) background.push_back(*h.allocate(256 + (i * 7919) % 200000));
  const std::size_t sizes[] = {256, 4096, 65536, 262144, 1048576, 4 * valet::kPageBytes};
  const int per_thread = report.pairs;
  if (print) print_fast_header(report);
  for (std::size_t bytes : sizes) {
    SizeFigures row;
    row.bytes = bytes;
    // The share of allocations a thread cache served, from the heap's counters around each run.
    auto cached_share = [&h](auto&& run) {
      const valet::HeapStats::Ops before = h.stats().ops;
      run();
      const valet::HeapStats::Ops after = h.stats().ops;
      const double allocs = double(after.allocate - before.allocate);
      return allocs > 0 ? double(after.cached_allocations - before.cached_allocations) / allocs : 0.0;
    };
    row.cached_share_one = cached_share([&] { row.one = heap_pairs(h, bytes, 1, report.pairs); });
    row.cached_share_many = cached_share([&] { row.many = heap_pairs(h, bytes, report.threads, per_thread); });
#if defined(VALET_HAVE_CUDA)
    if (baseline) {
      row.pool_one = baseline->pool_pairs(bytes, 1, report.pairs, kWarmupPairs);
      row.pool_many = baseline->pool_pairs(bytes, report.threads, per_thread, kWarmupPairs);
      if (!row.pool_one->prepared || !row.pool_many->prepared) row.pool_one = row.pool_many = std::nullopt;
    }
#else
    (void)baseline;
#endif
    if (print) print_fast_row(report, row);
    report.sizes.push_back(row);
  }
  for (auto b : background) (void)h.free(b);
}

// Large objects with the reserve empty: every page created and mapped on the spot (against
// cuMemAlloc on a GPU), timed from the allocation to its first pin's return. The caller has closed its own heap first: one heap on the device at a time.
int cold_large(const valet::BackendOptions& backend, const valet::Config& cfg, const Baseline* baseline, bool print,
               BenchReport& report) {
  valet::Config cold = cfg;
  cold.reserve_low_pages = 0;
  cold.reserve_high_pages = 0;
  cold.background_reserve = false;
  cold.thread_cache_run_bytes = 0;  // each allocation's pages come from the backend, none from a freed run
  auto cold_heap = valet::open_heap(backend, cold);
  if (!cold_heap.ok()) {
    std::fprintf(stderr, "valet-bench-alloc: %s\n", cold_heap.error().to_string().c_str());
    return 1;
  }
  if (print) print_cold_header(report);
  constexpr int kTries = 15;
  constexpr auto kSettle = std::chrono::milliseconds(5);
  for (std::size_t bytes : {valet::kPageBytes, 4 * valet::kPageBytes, 64 * kMiB, 512 * kMiB}) {
    ColdFigures row;
    row.bytes = bytes;
    row.tries = 2 * kTries;  // both series
    // Until the object can be used, as cuMemAlloc's: with background misses the allocation
    // returns pending and its first pin waits for the mapper's calls. Each try first lets the
    // heap settle (kSettle): cuMemFree returns once the memory is released, while a heap's free
    // leaves the release of the pages to its mapper, whose calls a miss right behind it waits
    // for. Back to back (no pause) is timed as well, and cuMemAlloc both ways: after a pause the
    // same driver calls take several times longer (an idle machine's wake), so each series is
    // compared with its own baseline.
    const auto tries = [&](bool settle) {
      std::vector<double> ns;
      for (int i = 0; i < kTries; ++i) {
        if (settle) std::this_thread::sleep_for(kSettle);
        const auto t0 = Clock::now();
        auto o = (*cold_heap)->allocate(bytes);
        bool usable = o.ok();
        if (usable) usable = (*cold_heap)->pin(*o).ok();
        ns.push_back(ns_since(t0));
        if (o.ok()) (void)(*cold_heap)->free(*o);
        if (!usable) ++row.failed;
      }
      return summarize(ns).median_ns;
    };
    row.median_ns = tries(true);
    row.back_to_back_median_ns = tries(false);
#if defined(VALET_HAVE_CUDA)
    if (baseline) {
      for (const bool settle : {true, false}) {
        std::vector<double> cu;
        for (int i = 0; i < kTries; ++i) {
          if (settle) std::this_thread::sleep_for(kSettle);
          if (auto t = baseline->mem_alloc_ns(bytes)) cu.push_back(*t);
        }
        if (cu.size() == std::size_t(kTries))
          (settle ? row.mem_alloc_median_ns : row.mem_alloc_back_to_back_median_ns) = summarize(cu).median_ns;
      }
    }
#else
    (void)baseline;
#endif
    if (print) print_cold_row(report, row);
    report.cold.push_back(row);
  }
  return 0;
}

struct Arguments {
  std::string backend = "auto";
  int pairs = 20000;
  int threads = 8;
  bool json = false;
  bool compactor_ab = false;
  int rounds = 10;
  int round_ms = 100;
  std::size_t thread_cache_bytes = valet::Config{}.thread_cache_bytes;
  std::size_t thread_cache_run_bytes = valet::Config{}.thread_cache_run_bytes;
  std::size_t chunk_min_pages = valet::Config{}.chunk_min_pages;
  bool background_misses = valet::Config{}.background_misses;
  bool pins_serve_misses = valet::Config{}.pins_serve_misses;
};

// Parses the command line into `args`; an exit status when the run ends there (--help: 0; an
// error: 2, with CLI11's message).
std::optional<int> parse_arguments(int argc, char** argv, Arguments& args) {
  CLI::App app{
      "Allocation fast path: allocate+free pairs on a Valet heap (median and p99, aggregate pairs per second,\n"
      "one thread and N), beside the driver's stream-ordered pool on a GPU, then large allocations with an\n"
      "empty reserve. With --compactor-ab: the fast path with the background compactor running against none,\n"
      "in alternating rounds.",
      "valet-bench-alloc"};
  app.add_option("--backend", args.backend, "auto, cuda or host")
      ->check(CLI::IsMember({"auto", "cuda", "host"}))
      ->capture_default_str();
  app.add_option("--pairs", args.pairs, "Pairs timed per size on one thread, and by each thread of the N-thread run")
      ->check(CLI::Range(8, 100000000))
      ->capture_default_str();
  auto* threads = app.add_option("--threads", args.threads, "N: the fast path runs on one thread, then on N")
                      ->check(CLI::Range(1, 1024))
                      ->capture_default_str();
  auto* json = app.add_flag("--json", args.json, "Print one JSON object instead of the tables");
  auto* ab = app.add_flag("--compactor-ab", args.compactor_ab,
                          "Compactor on against off instead of the fast path and cold runs");
  ab->excludes(threads)->excludes(json);
  app.add_option("--rounds", args.rounds, "--compactor-ab: rounds per mode and size")
      ->check(CLI::Range(2, 100000))
      ->capture_default_str();
  app.add_option("--round-ms", args.round_ms, "--compactor-ab: length of a round in milliseconds")
      ->check(CLI::Range(10, 3600000))
      ->capture_default_str();
  app.add_option("--thread-cache-bytes", args.thread_cache_bytes,
                 "Config::thread_cache_bytes of the heap (0: no thread caches, every pair takes the heap lock)")
      ->capture_default_str();
  app.add_option("--thread-cache-run-bytes", args.thread_cache_run_bytes,
                 "Config::thread_cache_run_bytes of the heap (0: large pairs take the heap lock)")
      ->capture_default_str();
  app.add_option("--chunk-min-pages", args.chunk_min_pages,
                 "Config::chunk_min_pages of the heap (0: every page created on its own)")
      ->capture_default_str();
  app.add_flag("--background-misses,!--no-background-misses", args.background_misses,
               "Config::background_misses of the heap (on by default): the cold run's allocations return pending "
               "and their first pins wait for the mapper; off, the allocating thread maps");
  app.add_flag("--pins-serve-misses,!--no-pins-serve-misses", args.pins_serve_misses,
               "Config::pins_serve_misses of the heap (off by default): the cold run's first pin makes its pending "
               "allocation's calls itself rather than wait for the heap thread");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return std::nullopt;
}

// The driver's baselines where the heap runs on a GPU; null elsewhere, or when they cannot run.
std::unique_ptr<Baseline> open_baseline(valet::Heap& heap, const valet::BackendOptions& backend) {
#if defined(VALET_HAVE_CUDA)
  if (heap.backend().kind() != valet::BackendKind::cuda) return nullptr;
  auto ctx = PrimaryContext::open(backend.device);
  if (!ctx.ok()) {
    std::fprintf(stderr, "valet-bench-alloc: no driver baselines: %s\n", ctx.error().to_string().c_str());
    return nullptr;
  }
  return std::move(*ctx);
#else
  (void)heap;
  (void)backend;
  return nullptr;
#endif
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
  cfg.thread_cache_bytes = args.thread_cache_bytes;
  cfg.thread_cache_run_bytes = args.thread_cache_run_bytes;
  cfg.chunk_min_pages = args.chunk_min_pages;
  cfg.background_misses = args.background_misses;
  cfg.pins_serve_misses = args.pins_serve_misses;
  auto heap = valet::open_heap(backend, cfg);
  if (!heap.ok()) {
    std::fprintf(stderr, "valet-bench-alloc: %s\n", heap.error().to_string().c_str());
    return 1;
  }
  if (args.compactor_ab) {
    std::printf("backend: %s\n", (*heap)->backend().name().c_str());
    return compactor_ab(**heap, args.rounds, args.round_ms);
  }
  BenchReport report;
  report.backend = (*heap)->backend().name();
  report.threads = args.threads;
  report.pairs = args.pairs;
  const auto baseline = open_baseline(**heap, backend);
  report.gpu = baseline != nullptr;
  const bool print = !args.json;
  if (print) std::printf("backend: %s\n", report.backend.c_str());
  fast_path(**heap, baseline.get(), print, report);
  heap->reset();  // one heap on the device at a time
  if (const int status = cold_large(backend, cfg, baseline.get(), print, report); status != 0) return status;
  if (args.json) std::cout << to_json(report).dump() << std::endl;
  return 0;
}
