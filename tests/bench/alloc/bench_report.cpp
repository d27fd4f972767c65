// Printing valet-bench-alloc's figures (see bench_report.h).
#include "bench_report.h"

#include <cstdio>

namespace valet::bench {

namespace {

double ratio(double a, double b) { return b > 0 ? a / b : 0; }

nlohmann::ordered_json run_json(const PairRun& r) {
  return {{"threads", r.threads},     {"pairs", r.pairs},   {"failed_pairs", r.failed_pairs},
          {"median_ns", r.median_ns}, {"p99_ns", r.p99_ns}, {"wall_s", r.wall_s},
          {"pairs_per_s", r.pairs_per_s}};
}

// One allocator's runs: one thread, N threads, and the aggregate throughput of N over one.
nlohmann::ordered_json runs_json(const PairRun& one, const PairRun& many) {
  return {{"one_thread", run_json(one)},
          {"n_threads", run_json(many)},
          {"throughput_ratio", ratio(many.pairs_per_s, one.pairs_per_s)}};
}

void print_runs(const PairRun& one, const PairRun& many) {
  std::printf(" %14.0f %14.0f %14.0f %14.0f %14.3f %14.3f %8.2f", one.median_ns, one.p99_ns, many.median_ns,
              many.p99_ns, one.pairs_per_s / 1e6, many.pairs_per_s / 1e6, ratio(many.pairs_per_s, one.pairs_per_s));
}

void print_runs_header(const char* who, int threads) {
  char col[4][32];
  std::snprintf(col[0], sizeof col[0], "%s_%dthr_med", who, threads);
  std::snprintf(col[1], sizeof col[1], "%s_%dthr_p99", who, threads);
  std::snprintf(col[2], sizeof col[2], "%s_Mpair/s", who);
  std::snprintf(col[3], sizeof col[3], "%dthr_Mpair/s", threads);
  std::printf(" %14s %14s %14s %14s %14s %14s %8s", (std::string(who) + "_med_ns").c_str(),
              (std::string(who) + "_p99_ns").c_str(), col[0], col[1], col[2], col[3], "scaling");
}

}  // namespace

void print_fast_header(const BenchReport& r) {
  std::printf("allocate+free pairs, ns per pair; aggregate pairs per second on 1 and %d threads, and their ratio:\n",
              r.threads);
  std::printf("%-10s", "bytes");
  print_runs_header("valet", r.threads);
  if (r.gpu) {
    print_runs_header("pool", r.threads);
    std::printf(" %8s", "ratio");
  }
  std::printf("\n");
}

void print_fast_row(const BenchReport& r, const SizeFigures& row) {
  std::printf("%-10zu", row.bytes);
  print_runs(row.one, row.many);
  if (r.gpu) {
    if (row.pool_one && row.pool_many) {
      print_runs(*row.pool_one, *row.pool_many);
      std::printf(" %8.2f", ratio(row.one.median_ns, row.pool_one->median_ns));
    } else {
      std::printf("  (the cuMemAllocAsync baseline could not run)");
    }
  }
  const std::uint64_t failed = row.one.failed_pairs + row.many.failed_pairs;
  if (failed) std::printf("  (%llu failed pairs)", (unsigned long long)failed);
  std::printf("\n");
  std::fflush(stdout);
}

void print_cold_header(const BenchReport& r) {
  std::printf("\nlarge allocation, empty reserve (create+map+access per page):\n");
  std::printf("%-10s %14s %14s", "bytes", "valet_med_ns", "back_to_back");
  if (r.gpu) std::printf(" %14s %8s %14s %8s", "cuMemAlloc_ns", "ratio", "cu_b2b_ns", "b2b_ratio");
  std::printf("\n");
}

void print_cold_row(const BenchReport& r, const ColdFigures& row) {
  std::printf("%-10zu %14.0f %14.0f", row.bytes, row.median_ns, row.back_to_back_median_ns);
  if (r.gpu) {
    // cuMemAlloc's median and the heap's ratio to it, for one series.
    const auto baseline = [](const std::optional<double>& cu, double valet) {
      if (cu)
        std::printf(" %14.0f %8.2f", *cu, ratio(valet, *cu));
      else
        std::printf(" %14s %8s", "failed", "-");
    };
    baseline(row.mem_alloc_median_ns, row.median_ns);
    baseline(row.mem_alloc_back_to_back_median_ns, row.back_to_back_median_ns);
  }
  if (row.failed) std::printf("  (%d of %d allocations failed)", row.failed, row.tries);
  std::printf("\n");
  std::fflush(stdout);
}

nlohmann::ordered_json to_json(const BenchReport& r) {
  nlohmann::ordered_json j;
  j["backend"] = r.backend;
  j["threads"] = r.threads;
  j["pairs"] = r.pairs;
  j["gpu"] = r.gpu;
  nlohmann::ordered_json sizes = nlohmann::ordered_json::array();
  for (const SizeFigures& s : r.sizes) {
    nlohmann::ordered_json row;
    row["bytes"] = s.bytes;
    row["valet"] = runs_json(s.one, s.many);
    row["valet_cached_share"] = {{"one_thread", s.cached_share_one}, {"n_threads", s.cached_share_many}};
    if (s.pool_one && s.pool_many) {
      row["cuMemAllocAsync"] = runs_json(*s.pool_one, *s.pool_many);
      row["median_ratio_one_thread"] = ratio(s.one.median_ns, s.pool_one->median_ns);
      row["median_ratio_n_threads"] = ratio(s.many.median_ns, s.pool_many->median_ns);
    } else if (r.gpu) {
      row["cuMemAllocAsync"] = nullptr;  // the baseline could not run (stderr says why)
    }
    sizes.push_back(row);
  }
  j["fast_path"] = sizes;
  nlohmann::ordered_json cold = nlohmann::ordered_json::array();
  for (const ColdFigures& c : r.cold) {
    nlohmann::ordered_json row;
    row["bytes"] = c.bytes;
    row["tries"] = c.tries;
    row["failed"] = c.failed;
    row["valet_median_ns"] = c.median_ns;
    row["valet_back_to_back_median_ns"] = c.back_to_back_median_ns;
    if (r.gpu) {
      // cuMemAlloc's median and the heap's ratio to it, for one series (null where it failed).
      const auto baseline = [&](const char* median_key, const char* ratio_key, const std::optional<double>& cu,
                                double valet) {
        row[median_key] = cu ? nlohmann::ordered_json(*cu) : nullptr;
        row[ratio_key] = cu ? nlohmann::ordered_json(ratio(valet, *cu)) : nullptr;
      };
      baseline("cuMemAlloc_median_ns", "ratio", c.mem_alloc_median_ns, c.median_ns);
      baseline("cuMemAlloc_back_to_back_median_ns", "ratio_back_to_back", c.mem_alloc_back_to_back_median_ns,
               c.back_to_back_median_ns);
    }
    cold.push_back(row);
  }
  j["cold_large"] = cold;
  return j;
}

}  // namespace valet::bench
