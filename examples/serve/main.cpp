// valet-serve: a long-running process that behaves like an LLM serving loop on a Valet heap
// (serving_loop.h), with the control server on so that `valetctl` can watch and steer it, and the
// background compactor running. Every few steps a handle sweep reads every object the loop holds
// through its handle (on the CUDA backend with a kernel: device-side handle resolution). Stops
// cleanly on SIGINT or SIGTERM: every object freed, the heap shut down, every page given back, the
// control socket removed. Exit status 0 then; 1 when data was found corrupted (by a check or a
// sweep) or the heap failed; 2 for bad options or a heap that cannot be opened (docs/cli.md).
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "handle_sweep.h"
#include "number_in.h"
#include "object_access.h"
#include "serving_loop.h"
#include "traced_heap.h"
#include "valet/control_server.h"
#include "valet/host_backend.h"
#include "valet/runtime.h"

namespace {

using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) { g_stop_signal = sig; }

// Our own handlers, also where the shell started us with SIGINT ignored (a background job).
void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

double mib(std::size_t bytes) { return double(bytes) / double(1 << 20); }

void status_line(const valet::Heap& heap, const serve::LoopCounters& c, double elapsed, bool tty) {
  const auto s = heap.stats();
  std::fprintf(stderr,
               "%s[valet-serve %5.0fs] steps %llu  requests %zu running, %llu done  live %.1f MiB  mapped %.1f MiB  "
               "frag %.3f  cycles %llu  probes %llu/%llu failed  swept %llu objs %.0f MiB, %llu mismatched%s",
               tty ? "\r\033[K" : "", elapsed, (unsigned long long)c.steps, c.running,
               (unsigned long long)c.requests_finished, mib(s.live_bytes), mib(s.mapped_bytes), s.fragmentation,
               (unsigned long long)s.compaction.cycles, (unsigned long long)c.probes_failed,
               (unsigned long long)c.probes, (unsigned long long)c.swept_objects, mib(c.swept_bytes),
               (unsigned long long)(c.swept_corrupt_bytes + c.swept_unresolved), tty ? "" : "\n");
}

// Physical pages the backend still holds (host backend only; -1 when unknown).
long long backend_pages(valet::Heap& heap) {
  if (auto* host = dynamic_cast<valet::BackendModel<valet::HostBackend>*>(&heap.backend()))
    return (long long)host->impl().pages_in_use();
  return -1;
}

struct Options {
  std::string backend = "auto";
  std::string capacity;
  double seconds = 0;
  std::string socket;
  double step_ms = 5;
  std::uint64_t seed = 1;
  int sweep_every = -1;  // steps between handle sweeps; -1: the backend's default
  bool background_misses = valet::Config{}.background_misses;
};

// "--seconds: must be a number of seconds in [0, 31622400], not -1" (shared with valetctl).
using valet::cli::number_in;

// A sweep reads every live object: a kernel does that in microseconds, host code in milliseconds.
constexpr int kSweepEveryGpu = 1;
constexpr int kSweepEveryHost = 20;

// The heap on the backend the options choose, or the exit status (2) after saying why not.
// `device` receives the CUDA device ordinal the handle sweep runs on.
int open_service_heap(const Options& o, std::unique_ptr<valet::Heap>& heap, int& device) {
  auto choice = valet::parse_backend_choice(o.backend);
  if (!choice.ok()) return std::fprintf(stderr, "valet-serve: %s\n", choice.error().message.c_str()), 2;
  std::size_t capacity = 0;
  if (!o.capacity.empty()) {
    auto c = valet::parse_size(o.capacity);
    if (!c.ok() || *c == 0) return std::fprintf(stderr, "valet-serve: --capacity: %s\n", c.ok() ? "must be positive" : c.error().message.c_str()), 2;
    capacity = *c;
  }
  constexpr std::size_t kHostDefault = std::size_t{1} << 30;
  valet::BackendOptions bo;
  bo.choice = *choice;
  bo.host_capacity = capacity ? capacity : kHostDefault;
  device = bo.device;
  std::string why_not_cuda;
  auto backend = valet::open_backend(bo, &why_not_cuda);
  if (!backend.ok()) return std::fprintf(stderr, "valet-serve: %s\n", backend.error().to_string().c_str()), 2;
  if (!why_not_cuda.empty())  // auto fell back: say why, so that a missing GPU is no mystery
    std::fprintf(stderr, "valet-serve: no usable GPU, running on the host backend: %s\n", why_not_cuda.c_str());
  valet::Config config;
  config.background_misses = o.background_misses;
  config.capacity = capacity ? capacity : ((*backend)->kind() == valet::BackendKind::host ? kHostDefault : 0);
  auto heap_or = valet::Heap::create(std::move(backend).value(), config);
  if (!heap_or.ok()) return std::fprintf(stderr, "valet-serve: %s\n", heap_or.error().to_string().c_str()), 2;
  heap = std::move(heap_or).value();
  return 0;
}

// What runs beside the serving loop: the control server, and the background compactor where this
// build has one. Stopped in the reverse order of starting.
struct Background {
#if defined(VALET_SERVE_HAS_COMPACTOR)
  std::unique_ptr<valet::Compactor> compactor;
#endif
  std::unique_ptr<valet::ControlServer> server;

  // Between steps no pin is held: a good moment for a compaction cycle. A failed cycle leaves the
  // heap consistent (validate() at exit says otherwise): the service goes on.
  void safepoint() {
#if defined(VALET_SERVE_HAS_COMPACTOR)
    if (compactor)
      if (auto r = compactor->safepoint(); !r.ok())
        std::fprintf(stderr, "\nvalet-serve: safepoint: %s\n", r.error().to_string().c_str());
#endif
  }

  // No new commands, no trace, no cycles.
  void stop(valet::TraceRecorder& trace) {
    server->stop();
    if (trace.recording()) (void)trace.stop();
#if defined(VALET_SERVE_HAS_COMPACTOR)
    if (compactor) compactor->stop();
#endif
  }
};

// Starts the compactor (where built) and the control server; 0, or 2 after saying why not.
int start_background(valet::Heap& heap, valet::TraceRecorder& trace, const Options& o, Background& bg) {
  valet::ControlServerOptions server_options;
  server_options.socket_path = o.socket;
  server_options.trace = &trace;
  server_options.log = [](const std::string& m) { std::fprintf(stderr, "\nvalet-serve: %s\n", m.c_str()); };
#if defined(VALET_SERVE_HAS_COMPACTOR)
  if (auto c = valet::Compactor::start(heap); c.ok()) bg.compactor = std::move(c).value();
  else std::fprintf(stderr, "valet-serve: no background compactor: %s\n", c.error().to_string().c_str());
  auto server = bg.compactor ? valet::ControlServer::start(heap, *bg.compactor, server_options)
                             : valet::ControlServer::start(heap, server_options);
#else
  // This build has no Compactor implementation: compaction runs on request only.
  auto server = valet::ControlServer::start(heap, server_options);
#endif
  if (!server.ok()) return std::fprintf(stderr, "valet-serve: control server: %s\n", server.error().to_string().c_str()), 2;
  bg.server = std::move(server).value();
  return 0;
}

// Steps the loop every o.step_ms until the run time is over or a stop signal came; a status line
// every second.
void serve_until_stopped(const Options& o, const valet::Heap& heap, serve::ServingLoop& loop, Background& bg) {
  const bool tty = ::isatty(STDERR_FILENO);
  const auto start = Clock::now();
  const auto step = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(o.step_ms));
  auto next_step = start, next_status = start + std::chrono::seconds(1);
  while (!g_stop_signal) {
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (o.seconds > 0 && elapsed >= o.seconds) break;
    loop.step();
    bg.safepoint();
    if (Clock::now() >= next_status) {
      status_line(heap, loop.counters(), elapsed, tty);
      next_status += std::chrono::seconds(1);
    }
    next_step = std::max(next_step + step, Clock::now() - step);
    std::this_thread::sleep_until(next_step);
  }
  if (tty) std::fprintf(stderr, "\n");
  if (g_stop_signal)
    std::fprintf(stderr, "valet-serve: %s received, stopping\n", g_stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
}

// The two closing lines: what the sweeps found, and what the service did and left behind.
void print_summary(const serve::LoopCounters& c, const valet::HeapStats& final_stats, const char* sweeper,
                   long long pages_left) {
  std::fprintf(stderr,
               "valet-serve: handle sweeps by %s: %llu sweeps (%llu skipped: heap full), %llu objects read through "
               "their handles (%.1f MiB checked), %llu bytes mismatched, %llu handles unresolved; %llu objects moved "
               "by %llu compaction cycles meanwhile\n",
               sweeper, (unsigned long long)c.sweeps, (unsigned long long)c.sweeps_skipped,
               (unsigned long long)c.swept_objects, mib(c.swept_bytes), (unsigned long long)c.swept_corrupt_bytes,
               (unsigned long long)c.swept_unresolved, (unsigned long long)final_stats.compaction.objects_moved,
               (unsigned long long)final_stats.compaction.cycles);
  std::fprintf(stderr,
               "valet-serve: stopped after %llu steps: %llu requests served, %llu rejected, %llu cut short; %llu objects "
               "checked, %llu bytes corrupt; live at exit %zu objects (freed); heap shut down, %s\n",
               (unsigned long long)c.steps, (unsigned long long)c.requests_finished,
               (unsigned long long)c.requests_rejected, (unsigned long long)c.requests_cut,
               (unsigned long long)c.checks, (unsigned long long)c.corrupt_bytes, final_stats.live_objects,
               pages_left < 0 ? "pages returned to the driver"
                              : (pages_left == 0 ? "every page back" : "PAGES STILL HELD"));
}

// Frees every object, validates and shuts the heap down, and reports. The exit status: 0, or 1
// where data was found corrupted, a step failed, or something was left behind.
int release_and_report(valet::Heap& heap, serve::ServingLoop& loop, serve::HandleSweep& sweep, const char* sweeper) {
  const serve::LoopCounters c = loop.counters();
  loop.free_all();
  int rc = 0;
  if (auto st = sweep.close(); !st.ok()) {
    std::fprintf(stderr, "valet-serve: freeing the sweep's argument object failed: %s\n",
                 st.error().to_string().c_str());
    rc = 1;
  }
  if (auto v = heap.validate(); !v.ok()) {
    std::fprintf(stderr, "valet-serve: heap validation failed: %s\n", v.error().to_string().c_str());
    rc = 1;
  }
  const auto final_stats = heap.stats();
  if (auto st = heap.shutdown(); !st.ok()) {
    std::fprintf(stderr, "valet-serve: shutdown failed: %s\n", st.error().to_string().c_str());
    rc = 1;
  }
  const long long pages_left = backend_pages(heap);
  print_summary(c, final_stats, sweeper, pages_left);
  if (pages_left > 0 || c.corrupt_bytes || c.swept_corrupt_bytes || c.swept_unresolved || c.errors ||
      final_stats.live_objects)
    rc = 1;
  return rc;
}

int run_service(const Options& o) {
  std::unique_ptr<valet::Heap> heap;
  int device = 0;
  if (int rc = open_service_heap(o, heap, device)) return rc;
  const std::size_t heap_capacity = heap->stats().capacity_bytes;
  valet::TraceRecorder trace("valet-serve", heap_capacity);
  Background bg;
  if (int rc = start_background(*heap, trace, o, bg)) return rc;

  auto access = serve::ObjectAccess::open(*heap);
  if (!access.ok()) return std::fprintf(stderr, "valet-serve: %s\n", access.error().to_string().c_str()), 2;
  auto sweep = serve::HandleSweep::open(*heap, access->stream(), device);
  if (!sweep.ok()) return std::fprintf(stderr, "valet-serve: handle sweep: %s\n", sweep.error().to_string().c_str()), 2;
  const int sweep_every = o.sweep_every >= 0 ? o.sweep_every : ((*sweep)->on_gpu() ? kSweepEveryGpu : kSweepEveryHost);
  const char* sweeper = (*sweep)->on_gpu() ? "a GPU kernel" : "host code";
  serve::TracedHeap traced(*heap, trace);
  serve::ServingLoop loop(traced, *access, sweep->get(), std::uint64_t(sweep_every), heap_capacity, o.seed);

  std::fprintf(stderr, "valet-serve: pid %d, %s, capacity %.0f MiB, objects touched by %s\n", int(::getpid()),
               heap->backend().name().c_str(), mib(heap_capacity), access->on_host() ? "host code" : "GPU kernels");
  if (sweep_every > 0)
    std::fprintf(stderr, "valet-serve: every %d step%s, %s reads every live object through its handle\n", sweep_every,
                 sweep_every == 1 ? "" : "s", sweeper);
  std::fprintf(stderr, "valet-serve: control socket %s (try: valetctl -s %s stats)\n", bg.server->socket_path().c_str(),
               bg.server->socket_path().c_str());

  serve_until_stopped(o, *heap, loop, bg);
  // Stop in the reverse order of starting: no new commands, no trace, no cycles; then the objects.
  bg.stop(trace);
  return release_and_report(*heap, loop, **sweep, sweeper);
}

}  // namespace

int main(int argc, char** argv) try {
  install_stop_handlers();
  Options o;
  CLI::App app{"valet-serve: an LLM serving loop on a Valet heap (KV caches that grow, small objects that linger,\n"
               "per-step temporaries), steerable with valetctl through its control socket. Runs until SIGINT/SIGTERM."};
  app.add_option("--backend", o.backend, "auto, cuda or host")->check(CLI::IsMember({"auto", "cuda", "host"}));
  app.add_option("--capacity", o.capacity, "physical memory of the heap, e.g. 512MiB (host default 1GiB; "
                                           "CUDA default: the device's free memory)");
  app.add_option("--seconds", o.seconds, "run time in seconds (default, or 0: until stopped)")
      ->check(number_in(0, 366 * 86400, "a number of seconds"));
  app.add_option("--socket", o.socket, "control socket path (default: $VALET_CONTROL_SOCKET, else "
                                       "$XDG_RUNTIME_DIR/valet/<pid>.sock or /tmp/valet-$UID/<pid>.sock)");
  app.add_option("--step-ms", o.step_ms, "milliseconds per serving step")
      ->check(number_in(0, 60000, "a number of milliseconds"));
  app.add_option("--seed", o.seed, "seed of the workload");
  app.add_option("--sweep-every", o.sweep_every,
                 "steps between handle sweeps, which read every live object through its handle (0: none; default " +
                     std::to_string(kSweepEveryGpu) + " with a GPU kernel, " + std::to_string(kSweepEveryHost) +
                     " with host code)")
      ->check(number_in(0, 1e6, "a whole number of steps", true));
  app.add_flag("--background-misses,!--no-background-misses", o.background_misses,
               "Config::background_misses (on by default): allocations that need new pages return at once and "
               "the heap's thread maps them. --no-background-misses: the allocating thread does");
  app.footer("Exit status: 0 stopped cleanly; 1 data found corrupted or the heap failed; 2 bad options or a heap "
             "that cannot be opened. See docs/cli.md.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // Bad usage exits 2 like every other tool of the project, in one line.
    std::fprintf(stderr, "valet-serve: %s (see valet-serve --help)\n", e.what());
    return 2;
  }
  return run_service(o);
} catch (const std::exception& e) {  // no exception escapes a tool: exit 2 with what it says
  std::fprintf(stderr, "valet-serve: unexpected error: %s\n", e.what());
  return 2;
}
