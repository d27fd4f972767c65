// Do the backend's page calls scale with threads, and what does a larger physical allocation
// cost? N threads each create, map, grant access to, unmap and release their share of P pages,
// one phase at a time (all threads start a phase together); the phase's wall time against one
// thread's gives the speedup a batch of calls spread over threads would see (the keeper's
// batches, a miss that maps tens of pages). With --chunk-pages K, each call covers a chunk of K
// pages (VmmDoor::create_chunk) instead of one page.
//
//   valet-bench-vmm-threads [--backend auto|cuda|host] [--pages P] [--chunk-pages K]
//                           [--threads 1,2,4,8] [--json]
// (--help lists the options; a bad one exits with status 2 and a message, a backend that cannot
// be opened or a call that fails with status 1.)
#include <CLI/CLI.hpp>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "valet/runtime.h"
#include "valet/types.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Arguments {
  std::string backend = "auto";
  std::size_t pages = 256;
  std::size_t chunk_pages = 1;
  std::vector<unsigned> threads{1, 2, 4, 8, 16};
  int repeats = 3;
  bool json = false;
};

std::optional<int> parse_arguments(int argc, char** argv, Arguments& args) {
  CLI::App app{"Scaling of the backend's page calls (create, map, set_access, unmap, release) with threads:\n"
               "each phase's wall time for P pages split over N threads.",
               "valet-bench-vmm-threads"};
  app.add_option("--backend", args.backend, "auto, cuda or host")
      ->check(CLI::IsMember({"auto", "cuda", "host"}))
      ->capture_default_str();
  app.add_option("--pages", args.pages, "Pages per phase (2 MiB each)")->check(CLI::Range(1, 1 << 16))->capture_default_str();
  app.add_option("--chunk-pages", args.chunk_pages, "Pages of each physical allocation (a divisor of --pages)")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  app.add_option("--threads", args.threads, "Thread counts to run")->delimiter(',')->check(CLI::Range(1, 256));
  app.add_option("--repeats", args.repeats, "Runs per thread count (the fastest is reported)")->check(CLI::Range(1, 100))->capture_default_str();
  app.add_flag("--json", args.json, "One JSON object on stdout instead of the table");
  try {
    app.parse(argc, argv);
    if (args.pages % args.chunk_pages != 0)
      throw CLI::ValidationError("--chunk-pages", "must divide --pages");
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return std::nullopt;
}

constexpr const char* kPhases[] = {"create", "map", "set_access", "unmap", "release"};
constexpr int kPhaseCount = 5;

// One run over `units` physical allocations of `k` pages each: wall seconds of each phase, or
// the first error.
valet::Result<std::vector<double>> run(valet::Backend& b, valet::DevicePtr va, std::size_t units, std::size_t k,
                                       unsigned threads) {
  const std::size_t P = b.granularity() * k;
  std::vector<valet::PhysicalPage> page(units);
  std::vector<double> seconds(kPhaseCount, 0.0);
  std::vector<std::optional<valet::Error>> errors(threads);
  Clock::time_point start;
  std::barrier sync(threads, [&]() noexcept {});
  auto worker = [&](unsigned t) {
    const std::size_t lo = units * t / threads, hi = units * (t + 1) / threads;
    for (int phase = 0; phase < kPhaseCount; ++phase) {
      sync.arrive_and_wait();
      if (t == 0) start = Clock::now();
      sync.arrive_and_wait();
      for (std::size_t i = lo; i < hi && !errors[t]; ++i) {
        const valet::DevicePtr at = va + i * P;
        valet::Status st;
        switch (phase) {
          case 0: {
            auto p = k == 1 ? b.create_page() : b.create_chunk(k);
            if (p.ok()) page[i] = *p; else st = p.error();
            break;
          }
          case 1: st = b.map(at, page[i]); break;
          case 2: st = b.set_access(at, P); break;
          case 3: st = b.unmap(at, P); break;
          case 4: st = b.release_page(page[i]); break;
        }
        if (!st.ok()) errors[t] = st.error();
      }
      sync.arrive_and_wait();
      if (t == 0) seconds[phase] = std::chrono::duration<double>(Clock::now() - start).count();
    }
  };
  std::vector<std::thread> team;
  for (unsigned t = 1; t < threads; ++t) team.emplace_back(worker, t);
  worker(0);
  for (auto& th : team) th.join();
  for (auto& e : errors)
    if (e) return *e;
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args;
  if (auto exit_status = parse_arguments(argc, argv, args)) return *exit_status;
  valet::BackendOptions options;
  options.choice = valet::parse_backend_choice(args.backend).value();  // checked by CLI11
  options.host_capacity = (args.pages + 16) * valet::kPageBytes;
  const std::size_t units = args.pages / args.chunk_pages;
  auto opened = valet::open_backend(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "valet-bench-vmm-threads: %s\n", opened.error().to_string().c_str());
    return 1;
  }
  valet::Backend& b = **opened;
  const std::size_t bytes = args.pages * b.granularity();
  auto va = b.reserve(bytes);
  if (!va.ok()) {
    std::fprintf(stderr, "valet-bench-vmm-threads: reserve: %s\n", va.error().to_string().c_str());
    return 1;
  }
  nlohmann::json out{{"backend", b.name()},
                     {"pages", args.pages},
                     {"chunk_pages", args.chunk_pages},
                     {"runs", nlohmann::json::array()}};
  if (!args.json) {
    std::printf("backend: %s, %zu pages of %zu MiB per phase in allocations of %zu pages; us per allocation "
                "(wall / allocations), speedup against the first row\n",
                b.name().c_str(), args.pages, b.granularity() >> 20, args.chunk_pages);
    std::printf("%8s", "threads");
    for (auto* p : kPhases) std::printf(" %18s", p);
    std::printf("\n");
  }
  std::vector<double> first;
  int status = 0;
  for (unsigned threads : args.threads) {
    std::vector<double> best;
    for (int r = 0; r < args.repeats && status == 0; ++r) {
      auto s = run(b, *va, units, args.chunk_pages, threads);
      if (!s.ok()) {
        std::fprintf(stderr, "valet-bench-vmm-threads: %u threads: %s\n", threads, s.error().to_string().c_str());
        status = 1;
        break;
      }
      if (best.empty()) best = *s;
      for (int p = 0; p < kPhaseCount; ++p) best[p] = std::min(best[p], (*s)[p]);
    }
    if (status) break;
    if (first.empty()) first = best;
    nlohmann::json row{{"threads", threads}};
    if (!args.json) std::printf("%8u", threads);
    for (int p = 0; p < kPhaseCount; ++p) {
      const double us = 1e6 * best[p] / double(units);
      row[std::string(kPhases[p]) + "_us_per_call"] = us;
      row[std::string(kPhases[p]) + "_us_per_page"] = 1e6 * best[p] / double(args.pages);
      row[std::string(kPhases[p]) + "_speedup"] = first[p] / best[p];
      if (!args.json) std::printf(" %9.2f (%5.2fx)", us, first[p] / best[p]);
    }
    if (!args.json) std::printf("\n");
    out["runs"].push_back(row);
  }
  (void)b.unreserve(*va, bytes);
  if (args.json && status == 0) std::printf("%s\n", out.dump().c_str());
  return status;
}
