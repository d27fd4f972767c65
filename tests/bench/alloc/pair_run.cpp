// Timed runs of allocate+free pairs (see pair_run.h).
#include "pair_run.h"

#include <algorithm>
#include <atomic>
#include <thread>

namespace valet::bench {

Percentiles summarize(std::vector<double>& ns) {
  if (ns.empty()) return {};
  std::sort(ns.begin(), ns.end());
  return {ns[ns.size() / 2], ns[std::min(ns.size() - 1, ns.size() * 99 / 100)]};
}

PairRun timed_pairs(const std::vector<std::unique_ptr<PairWorker>>& workers, int per_thread, int warmup) {
  const std::size_t n = workers.size();
  struct Tally {
    std::vector<double> ns;
    std::uint64_t failed = 0;
    bool prepared = false;
    Clock::time_point end;
  };
  std::vector<Tally> tallies(n);
  // The threads prepare and warm up at their own pace, then wait for one another, so that the
  // aggregate rate measures the pairs running side by side, not thread start-up.
  std::atomic<std::size_t> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < n; ++t)
    threads.emplace_back([&, t] {
      PairWorker& w = *workers[t];
      Tally& tally = tallies[t];
      tally.prepared = w.prepare();
      if (tally.prepared)
        for (int i = 0; i < warmup; ++i) (void)w.pair();
      tally.ns.reserve(std::size_t(per_thread));
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      if (tally.prepared)
        for (int i = 0; i < per_thread; ++i) {
          const auto t0 = Clock::now();
          if (!w.pair()) ++tally.failed;
          tally.ns.push_back(ns_since(t0));
        }
      tally.end = Clock::now();
      if (tally.prepared) w.finish();
    });
  while (ready.load() < n) std::this_thread::yield();
  const auto start = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();

  PairRun run;
  run.threads = int(n);
  std::vector<double> all;
  auto end = start;
  for (Tally& t : tallies) {
    all.insert(all.end(), t.ns.begin(), t.ns.end());
    run.failed_pairs += t.failed;
    run.prepared = run.prepared && t.prepared;
    end = std::max(end, t.end);
  }
  run.pairs = all.size();
  const Percentiles p = summarize(all);
  run.median_ns = p.median_ns;
  run.p99_ns = p.p99_ns;
  run.wall_s = std::chrono::duration<double>(end - start).count();
  run.pairs_per_s = run.wall_s > 0 ? double(run.pairs) / run.wall_s : 0;
  return run;
}

}  // namespace valet::bench
