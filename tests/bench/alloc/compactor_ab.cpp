// valet-bench-alloc --compactor-ab (see compactor_ab.h).
#include "compactor_ab.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iterator>
#include <memory>
#include <random>
#include <vector>

#include "pair_run.h"
#include "valet/compactor.h"

namespace valet::bench {

namespace {

// The churn's object sizes: one size class per phase, the phase moving on every kPhaseOps churn
// steps, so objects of earlier phases linger in pages that empty slowly (the pattern of the p23
// and p24 traces): the slab pages fragment and the policy finds cycles to run.
constexpr std::size_t kPhaseSizes[] = {256, 1024, 4096, 16384, 65536, 2048, 8192};
constexpr int kPhaseOps = 3000;
constexpr int kGroup = 16;  // pairs timed back to back, then as many untimed churn steps

}  // namespace

int compactor_ab(Heap& h, int rounds, int round_ms) {
  std::mt19937_64 rng(42);
  std::uint64_t churn_ops = 0;
  auto churn_size = [&] {
    return kPhaseSizes[(churn_ops / kPhaseOps) % std::size(kPhaseSizes)] + std::size_t(rng() % 200);
  };
  std::vector<Handle> background;
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
      std::unique_ptr<Compactor> compactor;
      if (with) compactor = std::move(Compactor::start(h)).value();
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

}  // namespace valet::bench
