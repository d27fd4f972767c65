// valet-replay: replays a gpuheap-trace v1 through a Valet heap and prints what it measured;
// `valet-replay generate` writes one (a synthetic LLM-serving workload, workload.h).
//
// Exit status: 0 when the replay is clean; 1 when it ran but something failed (a signature
// mismatch, a heap call that failed otherwise than the trace allows, peak mapped below peak
// live); 2 for bad arguments, a malformed, corrupt or empty trace, a capacity no heap can back,
// a heap or compactor that cannot be started, or any other error.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <iostream>
#include <new>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "generate_command.h"
#include "replayer.h"
#include "trace.h"
#include "valet/compactor.h"
#include "valet/fault_injection.h"
#include "valet/runtime.h"

namespace {

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

constexpr const char* kDescription =
    "Replays a gpuheap-trace v1 (plain or .gz) through a Valet heap and prints one summary line, or\n"
    "with --json one JSON object (the keys of a PyTorch baseline replayer, and more). `valet-replay\n"
    "generate -o FILE` writes such a trace (`valet-replay generate --help` lists its options).\n"
    "\n"
    "Compaction (unless --no-compact): the background compactor (valet::Compactor) runs on the heap\n"
    "with the policy's default settings (change them with --policy KEY=VALUE), and the replayer calls\n"
    "its safepoint() at every step line, where the policy may run one cycle bounded by its pause\n"
    "budget. The heap's own emergency compaction on a failing allocation is on too. --no-compact:\n"
    "no compactor and no emergency compaction, a heap that never moves an object.";

struct Arguments {
  bool generate = false;  // the generate command: `generator` holds its arguments
  valet::replay::GenerateArguments generator;
  std::string trace;
  std::string backend = "auto";
  std::string capacity;
  bool verify = false;
  bool verify_through_backend = false;
  int pinners = 1;
  int pin_hold_us = 5;
  int pin_gap_us = 100;
  int think_us = 0;
  int driver_delay_us = 0;
  bool gpu_pace = false;
  std::uint64_t seed = 1;
  bool no_compact = false;
  bool no_share_tails = false;
  bool fixed = false;
  bool stream_frees = false;
  std::optional<double> reserve_fraction, reserve_peak_ratio;
  std::optional<std::size_t> reserve_low_pages;
  std::optional<std::size_t> thread_cache_bytes;
  std::optional<std::size_t> thread_cache_run_bytes;
  std::optional<std::size_t> standby_tail_aliases;
  std::optional<std::size_t> chunk_min_pages;
  std::optional<std::size_t> chunk_miss_pages;
  std::optional<std::size_t> copy_region_min_bytes, copy_region_chunk_bytes;
  std::optional<std::uint32_t> copy_region_headroom_chunks, copy_region_hysteresis_chunks;
  std::optional<double> copy_region_hole_high, copy_region_hole_low;
  std::optional<std::size_t> reserve_hold_ms;
  std::optional<std::size_t> reserve_hold_allocs;
  bool create_ahead = valet::Config{}.keeper_creates_ahead;
  bool keeper_defers = false;
  bool background_misses = valet::Config{}.background_misses;
  bool pins_serve_misses = valet::Config{}.pins_serve_misses;
  bool unlocked_misses = valet::Config{}.unlocked_misses;
  std::size_t background_miss_limit = valet::Config{}.background_miss_limit;
  std::uint32_t mapper_spin_us = valet::Config{}.miss_mapper_spin_us;
  bool caller_places_misses = false;
  bool json = false;
  std::string step_log;
  std::vector<std::string> policy;
};

// A heap addresses its virtual space in 2 MiB slots, at most 2^31 of them (PagePool::init), and
// reserves address_space_factor slots per page of capacity: refuse what it could never reserve
// before any backend sizes itself for it.
valet::Status check_capacity(std::size_t capacity, const valet::Config& config) {
  constexpr std::size_t kPage = valet::kPageBytes;
  constexpr std::size_t kMaxSlots = std::size_t{1} << 31;
  const std::size_t max_pages = kMaxSlots / config.address_space_factor;
  if (capacity / kPage <= max_pages) return {};
  return valet::make_error(valet::Errc::invalid_argument,
                           "capacity " + std::to_string(capacity) + " bytes is more than a heap can address (at most " +
                               std::to_string(max_pages * kPage) + " bytes: " + std::to_string(kMaxSlots) +
                               " slots of 2 MiB, " + std::to_string(config.address_space_factor) +
                               " per page of capacity)");
}

// Parses the command line into `args`; an exit status when the run ends there (--help, an error).
std::optional<int> parse_arguments(int argc, char** argv, Arguments& args) {
  CLI::App app{kDescription, "valet-replay"};
  // Not required(): `valet-replay generate ...` gives none; checked after parsing instead.
  app.add_option("TRACE", args.trace, "The trace (gpuheap-trace v1, .gz accepted)");
  app.add_option("--backend", args.backend, "auto, cuda or host")
      ->check(CLI::IsMember({"auto", "cuda", "host"}))
      ->capture_default_str();
  app.add_option("--capacity", args.capacity,
                 "Memory the heap may hold: bytes, or a size such as 8GiB or 512MiB (default: the trace "
                 "header's capacity=, else the backend's default)");
  app.add_flag("--verify", args.verify, "Write a signature into every object and check it at free and at the end");
  app.add_flag("--verify-through-backend", args.verify_through_backend,
               "With --verify: write and check through the backend's pattern fill/verify even where the "
               "memory is host-accessible (the path the CUDA backend takes)");
  app.add_option("--pinners", args.pinners, "Threads that pin random live objects during the replay")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  app.add_option("--pin-hold-us", args.pin_hold_us, "How long a pinner holds each pin (microseconds)")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  app.add_option("--pin-gap-us", args.pin_gap_us, "Pause of a pinner between pins (microseconds)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  app.add_option("--think-us", args.think_us,
                 "Sleep after each step line (microseconds): a serving tick's GPU work, during which the heap's "
                 "background threads find the driver idle (default 0: ops back to back)")
      ->check(CLI::Range(0, 1'000'000));
  app.add_option("--driver-delay-us", args.driver_delay_us,
                 "Host backend: every page call (create, map, set_access, unmap, release) sleeps this long first, "
                 "the GPU driver's pace in order of magnitude (its background threads then fall behind as on a GPU)")
      ->check(CLI::Range(0, 100'000));
  app.add_flag("--gpu-pace", args.gpu_pace,
               "Host backend: each page call takes as long as an H200 driver's call did (session 21's costs per "
               "mapping and chunk size), one at a time, spinning: a host replay's wall then shows the driver's part of a "
               "GPU's, to the order of the card's figures");
  app.add_option("--seed", args.seed, "Seed of the pinners' choices")->capture_default_str();
  app.add_flag("--no-compact", args.no_compact,
               "No compaction: no compactor (background or safepoints) and no emergency compaction");
  app.add_flag("--fixed", args.fixed,
               "Every object a fixed object (Heap::allocate_fixed), its size rounded up to 512 bytes: what "
               "libvalet_torch.so does for PyTorch's tensors");
  app.add_flag("--stream-frees", args.stream_frees,
               "Every free stream-ordered on the default stream (Heap::free(h, stream)), as PyTorch frees");
  app.add_flag("--no-share-tails", args.no_share_tails,
               "No shared tails (Config::share_tails off): every slab page and every large object's last "
               "page has a physical page of its own");
  app.add_option("--reserve-low-pages", args.reserve_low_pages,
                 "Config::reserve_low_pages: the reserve's low watermark (pages)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1024}));
  app.add_option("--reserve-fraction", args.reserve_fraction,
                 "Config::reserve_fraction: the mapped reserve the keeper keeps, as a fraction of the live bytes")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--thread-cache-bytes", args.thread_cache_bytes,
                 "Config::thread_cache_bytes: small frees a thread keeps for its next allocations (0: none)");
  app.add_option("--standby-tail-aliases", args.standby_tail_aliases,
                 "Config::standby_tail_aliases: aliases the keeper prepares for open tails while the reserve is low (0: none)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{64}));
  app.add_option("--thread-cache-run-bytes", args.thread_cache_run_bytes,
                 "Config::thread_cache_run_bytes: large runs a thread keeps for its next allocations (0: none)");
  app.add_option("--chunk-min-pages", args.chunk_min_pages,
                 "Config::chunk_min_pages: new pages of a large run created as one chunk from this many (0: page by page)");
  app.add_option("--copy-region-min-bytes", args.copy_region_min_bytes,
                 "Config::copy_region_min_bytes: movable objects of at least this size go to the copying region "
                 "(docs/copying_placement.md; 0: off, the default)");
  app.add_option("--copy-region-chunk-bytes", args.copy_region_chunk_bytes, "Config::copy_region_chunk_bytes");
  app.add_option("--copy-region-headroom-chunks", args.copy_region_headroom_chunks, "Config::copy_region_headroom_chunks");
  app.add_option("--copy-region-hysteresis-chunks", args.copy_region_hysteresis_chunks,
                 "Config::copy_region_hysteresis_chunks");
  app.add_option("--copy-region-hole-high", args.copy_region_hole_high, "Config::copy_region_hole_high");
  app.add_option("--copy-region-hole-low", args.copy_region_hole_low, "Config::copy_region_hole_low");
  app.add_option("--chunk-miss-pages", args.chunk_miss_pages,
                 "Config::chunk_miss_pages: a large object no mapped run serves gets a new chunk for a body of "
                 "this many pages and more, within the peak bound (0: off)");
  app.add_flag("--keeper-defers", args.keeper_defers,
               "Config::keeper_defers: the keeper's driver calls wait while a caller's are under way");
  app.add_flag("--background-misses,!--no-background-misses", args.background_misses,
               "Config::background_misses (on by default): an allocation that misses returns at once, pending; a "
               "heap thread maps its run or slab page. --no-background-misses: the allocating thread does");
  app.add_flag("--unlocked-misses,!--no-unlocked-misses", args.unlocked_misses,
               "Config::unlocked_misses (on by default): a large allocation that finds the heap lock held is made "
               "pending without waiting for it");
  app.add_flag("--pins-serve-misses,!--no-pins-serve-misses", args.pins_serve_misses,
               "Config::pins_serve_misses (off by default): a pin of a pending object whose miss is still queued makes "
               "its calls itself rather than wait for the heap thread");
  app.add_option("--background-miss-limit", args.background_miss_limit,
                 "Config::background_miss_limit: background misses pending at most (default 1024)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  app.add_option("--mapper-spin-us", args.mapper_spin_us,
                 "Config::miss_mapper_spin_us: the mapper polls its queue this long before it sleeps (default 200 with 8 hardware threads or more, else 0)")
      ->check(CLI::Range(0u, 100000u));
  app.add_flag("--caller-places-misses", args.caller_places_misses,
               "Config::mapper_places_misses off: with --background-misses the allocating thread chooses a miss's run");
  app.add_option("--reserve-peak-ratio", args.reserve_peak_ratio,
                 "Config::reserve_peak_ratio: mapped memory the reserve may bring up to, as a multiple of the "
                 "recent peak of live bytes")
      ->check(CLI::Range(1.0, 4.0));
  app.add_option("--reserve-hold-ms", args.reserve_hold_ms,
                 "Config::reserve_hold_ms: the keeper gives the reserve's surplus within the peak bound back only "
                 "once it sat unused this long (0: at once)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{60000}));
  app.add_option("--reserve-hold-allocs", args.reserve_hold_allocs,
                 "Config::reserve_hold_allocs: the same hold counted in allocations that took pages (0: not "
                 "counted; with both, whichever ends first)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1000000}));
  app.add_flag("--create-ahead,!--no-create-ahead", args.create_ahead,
               "Config::keeper_creates_ahead: with --background-misses the keeper creates pages ahead of demand "
               "(default: no, the misses create theirs)");
  app.add_option("--policy", args.policy,
                 "KEY=VALUE: a compactor policy setting other than its default (repeatable; see "
                 "valet::policy_keys(), e.g. fragmentation_threshold=0.1)")
      ->excludes("--no-compact");
  app.add_flag("--json", args.json, "Print one JSON object instead of the summary line");
  app.add_option("--step-log", args.step_log,
                 "Write one CSV row per step line: what the heap holds there (diagnostics)");
  CLI::App* generate = valet::replay::add_generate_command(app, args.generator);
  app.require_subcommand(0, 1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  if (generate->parsed()) {
    // The replay's options mean nothing to the generator: refuse them rather than ignore them.
    for (const CLI::Option* option : app.get_options())
      if (option->count() > 0) {
        std::cerr << "valet-replay: " << option->get_name() << " is a replay option; generate takes its own "
                  << "(valet-replay generate --help)\n";
        return kExitUsage;
      }
    args.generate = true;
    return std::nullopt;
  }
  if (args.trace.empty()) {
    std::cerr << "valet-replay: a TRACE to replay is required (or the generate command; --help lists both)\n";
    return kExitUsage;
  }
  if (!args.capacity.empty() && !valet::parse_size(args.capacity).ok()) {
    std::cerr << "valet-replay: --capacity: " << valet::parse_size(args.capacity).error().message << "\n";
    return kExitUsage;
  }
  return std::nullopt;
}

// The heap's configuration: the options, and the capacity from --capacity, else the trace header.
// An exit status where the capacity is more than a heap can address.
std::optional<int> make_config(const Arguments& args, const valet::replay::TraceSummary& checked, valet::Config& config) {
  config.compact_on_oom = !args.no_compact;
  config.share_tails = !args.no_share_tails;
  if (args.reserve_fraction) config.reserve_fraction = *args.reserve_fraction;
  if (args.reserve_low_pages) {
    config.reserve_low_pages = *args.reserve_low_pages;
    config.reserve_high_pages = std::max(config.reserve_high_pages, *args.reserve_low_pages);
  }
  if (args.reserve_peak_ratio) config.reserve_peak_ratio = *args.reserve_peak_ratio;
  if (args.thread_cache_bytes) config.thread_cache_bytes = *args.thread_cache_bytes;
  if (args.thread_cache_run_bytes) config.thread_cache_run_bytes = *args.thread_cache_run_bytes;
  if (args.standby_tail_aliases) config.standby_tail_aliases = *args.standby_tail_aliases;
  if (args.chunk_min_pages) config.chunk_min_pages = *args.chunk_min_pages;
  if (args.chunk_miss_pages) config.chunk_miss_pages = *args.chunk_miss_pages;
  if (args.copy_region_min_bytes) config.copy_region_min_bytes = *args.copy_region_min_bytes;
  if (args.copy_region_chunk_bytes) config.copy_region_chunk_bytes = *args.copy_region_chunk_bytes;
  if (args.copy_region_headroom_chunks) config.copy_region_headroom_chunks = *args.copy_region_headroom_chunks;
  if (args.copy_region_hysteresis_chunks) config.copy_region_hysteresis_chunks = *args.copy_region_hysteresis_chunks;
  if (args.copy_region_hole_high) config.copy_region_hole_high = *args.copy_region_hole_high;
  if (args.copy_region_hole_low) config.copy_region_hole_low = *args.copy_region_hole_low;
  if (args.reserve_hold_ms) config.reserve_hold_ms = *args.reserve_hold_ms;
  if (args.reserve_hold_allocs) config.reserve_hold_allocs = *args.reserve_hold_allocs;
  config.keeper_creates_ahead = args.create_ahead;
  config.keeper_defers = args.keeper_defers;
  config.background_misses = args.background_misses;
  config.pins_serve_misses = args.pins_serve_misses;
  config.unlocked_misses = args.unlocked_misses;
  config.background_miss_limit = args.background_miss_limit;
  config.miss_mapper_spin_us = args.mapper_spin_us;
  config.mapper_places_misses = !args.caller_places_misses;
  config.background_reserve = true;
  if (!args.capacity.empty())
    config.capacity = *valet::parse_size(args.capacity);  // checked with the arguments
  else if (checked.header_capacity)
    config.capacity = *checked.header_capacity;
  if (auto st = check_capacity(config.capacity, config); !st.ok()) {
    std::cerr << "valet-replay: " << st.error().message << "\n";
    return kExitUsage;
  }
  return std::nullopt;
}

// The compactor's policy: the defaults with every --policy KEY=VALUE applied, or an exit status.
std::optional<int> parse_policy(const Arguments& args, valet::PolicySettings& policy) {
  using namespace valet;
  for (const std::string& kv : args.policy) {
    const auto eq = kv.find('=');
    Status st = eq == std::string::npos
                    ? Status(make_error(Errc::invalid_argument, "expected KEY=VALUE, got '" + kv + "'"))
                    : set_policy_value(policy, kv.substr(0, eq), kv.substr(eq + 1));
    if (!st.ok()) {
      std::cerr << "valet-replay: --policy: " << st.error().message << "\n";
      return kExitUsage;
    }
  }
  return std::nullopt;
}

valet::replay::ReplayOptions replay_options(const Arguments& args, valet::Heap& heap, valet::Compactor* compactor) {
  using namespace valet;
  replay::ReplayOptions options;
  options.compactor = compactor;
  options.verify = args.verify;
  options.step_log = args.step_log;
  options.fixed = args.fixed;
  if (args.stream_frees) options.free_stream = valet::Stream{};
  const bool host_accessible = heap.backend().capabilities().host_accessible;
  options.signature_path = host_accessible && !args.verify_through_backend ? replay::SignaturePath::host_address
                                                                           : replay::SignaturePath::backend;
  options.pinners.threads = args.pinners;
  options.pinners.hold = std::chrono::microseconds(args.pin_hold_us);
  options.pinners.gap = std::chrono::microseconds(args.pin_gap_us);
  options.pinners.seed = args.seed;
  options.pinners.check_signature = args.verify && host_accessible;
  options.think_per_step = std::chrono::microseconds(args.think_us);
  return options;
}

// Completes the report with the run's settings, prints it and its problems; the exit status.
int print_report(valet::replay::ReplayReport& report, const Arguments& args, valet::Heap& heap,
                 const valet::Compactor* compactor) {
  report.trace = args.trace;
  report.backend = heap.backend().name();
  report.capacity_bytes = heap.config().capacity;
  report.compaction = !args.no_compact;
  report.share_tails = !args.no_share_tails;
  report.fixed = args.fixed;
  report.stream_frees = args.stream_frees;
  report.think_us = std::uint64_t(args.think_us);
  if (compactor)
    for (const auto& kv : valet::policy_values(compactor->settings())) report.policy.push_back(kv);
  report.verify = args.verify;
  report.pinners = args.pinners;

  if (args.json)
    std::cout << valet::replay::to_json(report).dump() << std::endl;
  else
    std::cout << valet::replay::summary_line(report) << std::endl;
  for (const std::string& p : report.problems) std::cerr << "valet-replay: " << p << "\n";
  if (report.problems_omitted) std::cerr << "valet-replay: ... and " << report.problems_omitted << " more problems\n";
  return report.failed() ? kExitFailed : 0;
}

// The heap, on a backend whose page calls are delayed (--driver-delay-us) or paced as a GPU's
// (--gpu-pace, BackendOptions::host_gpu_pace) where asked: both on the host backend only.
valet::Result<std::unique_ptr<valet::Heap>> open_replay_heap(valet::BackendOptions backend, const valet::Config& config,
                                                             int driver_delay_us) {
  using namespace valet;
  if (driver_delay_us == 0 && !backend.host_gpu_pace) return open_heap(backend, config);
  if (config.capacity) backend.host_capacity = config.capacity;
  auto opened = open_backend(backend);
  if (!opened.ok()) return opened.error();
  if ((*opened)->kind() != BackendKind::host)
    return make_error(Errc::invalid_argument, std::string(driver_delay_us > 0 ? "--driver-delay-us" : "--gpu-pace") +
                                                  " applies to the host backend only");
  if (driver_delay_us == 0) return Heap::create(std::move(opened).value(), config);
  auto delayed = std::make_unique<FaultInjectingBackend>(std::move(opened).value());
  delayed->delay_page_calls(std::chrono::microseconds(driver_delay_us));
  return Heap::create(std::move(delayed), config);
}

int run(int argc, char** argv) {
  using namespace valet;
  Arguments args;
  if (auto exit_status = parse_arguments(argc, argv, args)) return *exit_status;
  if (args.generate) return valet::replay::run_generate(args.generator);

  BackendOptions backend;
  backend.choice = parse_backend_choice(args.backend).value();  // checked by CLI11 above
  backend.host_gpu_pace = args.gpu_pace;
  // The first of two passes: the whole trace is checked before the heap is touched.
  auto checked = replay::check_trace(args.trace);
  if (!checked.ok()) {
    std::cerr << "valet-replay: " << replay::quote_bytes(args.trace, 4096) << ": " << checked.error().message << "\n";
    return kExitUsage;
  }
  Config config;
  if (auto exit_status = make_config(args, *checked, config)) return *exit_status;
  auto heap = open_replay_heap(backend, config, args.driver_delay_us);
  if (!heap.ok()) {
    std::cerr << "valet-replay: cannot open a heap: " << heap.error().to_string() << "\n";
    return kExitUsage;
  }

  PolicySettings policy;
  if (auto exit_status = parse_policy(args, policy)) return *exit_status;
  std::unique_ptr<Compactor> compactor;
  if (!args.no_compact) {
    auto started = Compactor::start(**heap, policy);
    if (!started.ok()) {
      std::cerr << "valet-replay: cannot start the compactor: " << started.error().to_string() << "\n";
      return kExitUsage;
    }
    compactor = std::move(*started);
  }

  replay::TraceReader trace(args.trace);  // the second pass, streamed into the replay
  replay::ReplayReport report = replay::replay(**heap, trace, *checked, replay_options(args, **heap, compactor.get()));
  if (!report.trace_error.empty()) {
    std::cerr << "valet-replay: " << replay::quote_bytes(args.trace, 4096) << ": " << report.trace_error << "\n";
    return kExitUsage;
  }
  return print_report(report, args, **heap, compactor.get());
}

}  // namespace

int main(int argc, char** argv) {
  // Errors are values throughout; this catches what the standard library may still throw (an
  // allocation the host cannot back, a thread that cannot start), so that no exception escapes.
  try {
    return run(argc, argv);
  } catch (const std::bad_alloc&) {
    std::cerr << "valet-replay: out of host memory\n";
  } catch (const std::exception& e) {
    std::cerr << "valet-replay: unexpected error: " << e.what() << "\n";
  } catch (...) {
    std::cerr << "valet-replay: unexpected error\n";
  }
  return kExitUsage;
}
