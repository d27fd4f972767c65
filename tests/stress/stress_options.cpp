#include "stress_options.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <thread>

#include "valet/runtime.h"

namespace valet::stress {

std::optional<int> parse_options(int argc, char** argv, StressOptions& o) {
  CLI::App app{"valet-stress: many threads allocate, free, resize, pin and hand objects to each other while "
               "compaction runs far more often than in production; every object's bytes are checked."};
  std::string backend = "auto", capacity, max_object;
  std::optional<double> seconds;
  o.threads = int(std::max(1u, std::thread::hardware_concurrency()));
  auto* threads = app.add_option("--threads,-t", o.threads, "worker threads (default: the cores; --smoke: at most 4)")
                      ->check(CLI::Range(1, 1024));
  app.add_option("--seconds,-s", seconds, "run time (default 10; --smoke: 3)")->check(CLI::PositiveNumber);
  app.add_option("--ops,-n", o.ops, "total operations instead of a run time");
  app.add_option("--seed", o.seed, "seed of every random choice");
  app.add_option("--backend", backend, "auto | cuda | host")->check(CLI::IsMember({"auto", "cuda", "host"}));
  app.add_option("--device", o.device, "CUDA device ordinal");
  app.add_option("--capacity", capacity, "heap capacity, e.g. 512MiB (default 1GiB; --smoke: 256MiB)");
  app.add_option("--max-object", max_object, "largest object (default 64MiB)");
  app.add_option("--checkpoint-seconds", o.checkpoint_seconds, "time between stop-the-world checks")
      ->check(CLI::PositiveNumber);
  app.add_option("--compact-pause-us", o.compact_pause_us, "pause of the compaction thread between cycles");
  app.add_option("--host-delay-us", o.host_delay_us, "host backend: delay before each queued copy/fill");
  app.add_option("--driver-delay-us", o.driver_delay_us,
                 "every page call (create, map, set_access, unmap, release) sleeps this long first: the GPU "
                 "driver's pace on the host backend")
      ->check(CLI::Range(0u, 100000u));
  app.add_flag("--faults", o.faults, "inject backend failures (create_page, map, set_access, copy)");
  app.add_option("--chunk-min-pages", o.chunk_min_pages,
                 "Config::chunk_min_pages: new pages of a large run made as one chunk from this many (0: never)");
  app.add_option("--chunk-miss-pages", o.chunk_miss_pages,
                 "Config::chunk_miss_pages: a large object no mapped run serves gets a new chunk for its body "
                 "from this many pages (0: off)");
  app.add_option("--copy-region-min-bytes", o.copy_region_min_bytes,
                 "Config::copy_region_min_bytes: movable objects of at least this size go to the copying region, "
                 "whose holes compaction closes by copies (0: off)");
  app.add_option("--copy-region-chunk-bytes", o.copy_region_chunk_bytes, "Config::copy_region_chunk_bytes");
  app.add_flag("--keeper-defers", o.keeper_defers,
               "Config::keeper_defers: the keeper's driver calls wait while a caller's are under way");
  app.add_flag("--background-misses,!--no-background-misses", o.background_misses,
               "Config::background_misses (on by default): misses return at once, pending; a heap thread maps "
               "their runs and slab pages. --no-background-misses: the allocating threads do");
  app.add_option("--reserve-hold-ms", o.reserve_hold_ms,
                 "Config::reserve_hold_ms: with --background-misses the keeper keeps a free's surplus this long")
      ->check(CLI::Range(std::size_t{0}, std::size_t{60000}));
  app.add_option("--reserve-hold-allocs", o.reserve_hold_allocs,
                 "Config::reserve_hold_allocs: the same hold counted in allocations that took pages")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1000000}));
  app.add_option("--mapper-spin-us", o.mapper_spin_us,
                 "Config::miss_mapper_spin_us: with --background-misses the mapper polls its queue this long before it sleeps")
      ->check(CLI::Range(0u, 100000u));
  app.add_option("--background-miss-limit", o.background_miss_limit,
                 "Config::background_miss_limit: with --background-misses, misses pending at most")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  app.add_option("--standby-tail-aliases", o.standby_tail_aliases,
                 "Config::standby_tail_aliases: with --background-misses the keeper keeps this many tails' aliases prepared")
      ->check(CLI::Range(std::size_t{0}, std::size_t{64}));
  app.add_flag("--caller-places-misses", o.caller_places_misses,
               "Config::mapper_places_misses off: with --background-misses the allocating thread chooses a miss's run");
  app.add_flag("--unlocked-misses,!--no-unlocked-misses", o.unlocked_misses,
               "Config::unlocked_misses: with --background-misses a large allocation that finds the heap lock held "
               "is made pending without it");
  app.add_flag("--pins-serve-misses,!--no-pins-serve-misses", o.pins_serve_misses,
               "Config::pins_serve_misses: a pin of a pending object whose miss is queued makes its calls itself");
  app.add_flag("--create-ahead,!--no-create-ahead", o.create_ahead,
               "Config::keeper_creates_ahead: with --background-misses the keeper creates pages ahead of demand");
  app.add_flag("--lock-holder", o.lock_holder,
               "a thread holds the heap lock for walks of the heap (occupancy(), every 64th a validate() that checks the "
               "invariants mid-traffic): large allocations find it held (misses made without it)");
  app.add_option("--budget", o.budget,
                 "the share of the capacity the workers' objects aim at together (default 0.8: allocations fail now and "
                 "then and the heap compacts to serve them; 0.6 leaves the margin of the credits for misses made without "
                 "the heap lock)")
      ->check(CLI::Range(0.05, 0.95));
  app.add_option("--thread-cache-run-bytes", o.thread_cache_run_bytes,
                 "Config::thread_cache_run_bytes: large runs a thread's cache keeps for its next allocations (0: none, "
                 "so every large allocation goes to the heap)");
  app.add_option("--large-share", o.large_share,
                 "of the workers' random object sizes, the share of large objects, 1 MiB and more (default 0.03)")
      ->check(CLI::Range(0.0, 0.75));
  app.add_option("--fault-rate", o.fault_rate, "probability of a fault per call")->check(CLI::Range(0.0, 0.5));
  app.add_flag("--smoke", o.smoke, "a short run for CTest (a few seconds, small heap)");
  app.add_flag("--json", o.json, "print one JSON object instead of the summary line");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  o.backend = *parse_backend_choice(backend);
  if (o.smoke) {
    o.seconds = 3;
    o.capacity = std::size_t{256} << 20;
    if (threads->count() == 0) o.threads = std::min(o.threads, 4);
    o.checkpoint_seconds = std::min(o.checkpoint_seconds, 0.5);
  }
  if (seconds) o.seconds = *seconds;
  for (auto [text, dest] : {std::pair{&capacity, &o.capacity}, std::pair{&max_object, &o.max_object}}) {
    if (text->empty()) continue;
    auto size = parse_size(*text);
    if (!size.ok() || *size == 0) {
      std::fprintf(stderr, "valet-stress: bad size '%s'\n", text->c_str());
      return 2;
    }
    *dest = *size;
  }
  return std::nullopt;
}

std::string describe(const StressOptions& o) {
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%g s", o.seconds);
  return std::to_string(o.threads) + " threads, " +
         (o.ops ? std::to_string(o.ops) + " ops" : std::string(seconds)) + ", seed " +
         std::to_string(o.seed) + ", capacity " + std::to_string(o.capacity >> 20) + " MiB" +
         (o.faults ? ", faults at " + std::to_string(o.fault_rate) : "") +
         (o.driver_delay_us ? ", page calls delayed " + std::to_string(o.driver_delay_us) + " us" : "") +
         (o.lock_holder ? ", a lock holder" : "") +
         (o.copy_region_min_bytes ? ", copying region from " + std::to_string(o.copy_region_min_bytes) + " B" : "") +
         (o.large_share != StressOptions{}.large_share ? ", large share " + std::to_string(int(o.large_share * 100 + 0.5)) + " %" : "") +
         (o.budget != StressOptions{}.budget ? ", budget " + std::to_string(int(o.budget * 100 + 0.5)) + " %" : "");
}

}  // namespace valet::stress
