// Can an allocation that misses return before its pages are mapped, with the GPU waiting instead
// of the caller? (docs/stream_ready.md) The allocation would hand out addresses in a reserved
// range at once, queue on the caller's stream a wait for a ticket (cuStreamWaitValue32 on a word
// of pinned host memory), and leave the physical pages' create, map and access grant to a
// background thread that writes the ticket when they are done. Three questions, three phases:
//
//   sync        Does any VMM call wait for a stream blocked on such a wait? If one did, a mapper
//               thread making it would deadlock against the stream that waits for the mapper.
//               Each call is made while a stream is blocked; a watchdog releases the stream after
//               --hold-ms. A call that returns only then waited for it (cuMemFree, known to
//               synchronize, is the control that shows the probe can tell).
//   late        Are pages mapped after the work that uses them was queued seen by that work?
//               The caller queues the wait, a copy of a pattern into the range and a copy back,
//               then a mapper thread creates, maps and grants access and writes the ticket; every
//               byte that came back is compared. Timed: the caller's queueing against mapping
//               the same pages on the caller's thread (today's miss).
//   contention  Does queueing a wait (or a small copy) on the caller's thread wait for the VMM
//               calls another thread makes? Its latency with and without a thread that creates,
//               maps, grants, unmaps and releases pages back to back.
//
//   valet-bench-stream-ready [--device D] [--pages 1,8,64] [--repeats R] [--hold-ms M] [--json]
// Exits 0 when every phase ran (even if a finding is negative), 1 when the GPU or a call failed
// (the phases that ran are still reported), 2 for a bad option. Needs a CUDA GPU; built with the CUDA backend only.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cuda/cuda_driver.h"

namespace {

using Clock = std::chrono::steady_clock;
using valet::cuda::Driver;
constexpr std::size_t kPage = std::size_t{2} << 20;

double ns_since(Clock::time_point t0) { return double(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()); }

struct Arguments {
  int device = 0;
  std::vector<std::size_t> pages{1, 8, 64};
  int repeats = 30;
  int hold_ms = 300;
  int contention_ops = 2000;
  bool json = false;
};

// A failed driver call ends the run: the message names it.
struct Failure {
  std::string what;
};
void check(CUresult r, const char* call) {
  if (r != CUDA_SUCCESS) throw Failure{valet::cuda::driver_error(call, r).to_string()};
}
#define CU(call) check(d.call, #call)

// A thread whose failed call is rethrown where it is joined.
class GuardedThread {
 public:
  template <class F>
  explicit GuardedThread(F&& f) : thread_([this, f = std::forward<F>(f)]() mutable {
      try {
        f();
      } catch (const Failure& e) {
        failure_ = e;
      }
    }) {}
  ~GuardedThread() {
    if (thread_.joinable()) thread_.join();
  }
  void join() {
    thread_.join();
    if (failure_) throw *failure_;
  }

 private:
  std::optional<Failure> failure_;
  std::thread thread_;
};

struct Quantiles {
  double median = 0, p99 = 0, max = 0;
};
Quantiles quantiles(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, std::size_t(q * double(v.size())))]; };
  return {at(0.5), at(0.99), v.back()};
}
nlohmann::json to_json(const Quantiles& q) { return {{"median_ns", q.median}, {"p99_ns", q.p99}, {"max_ns", q.max}}; }

class Bench {
 public:
  Bench(const Driver& d, int device) : d(d) {
    CU(cuInit(0));
    CU(cuDeviceGet(&dev_, device));
    CU(cuDevicePrimaryCtxRetain(&ctx_, dev_));
    CU(cuCtxSetCurrent(ctx_));
    char name[256] = {};
    CU(cuDeviceGetName(name, sizeof name, dev_));
    name_ = name;
    CU(cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING));
    void* host = nullptr;
    CU(cuMemHostAlloc(&host, 4096, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE));
    flag_ = static_cast<std::uint32_t*>(host);
    *flag_ = 0;
    CU(cuMemHostGetDevicePointer(&flag_dev_, host, 0));
    prop_.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop_.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop_.location.id = dev_;
    access_.location = prop_.location;
    access_.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  }
  ~Bench() {
    (void)d.cuStreamSynchronize(stream_);
    (void)d.cuStreamDestroy(stream_);
    (void)d.cuMemFreeHost(flag_);
    (void)d.cuDevicePrimaryCtxRelease(dev_);
  }
  const std::string& name() const { return name_; }

  nlohmann::json sync_phase(int hold_ms);
  nlohmann::json late_phase(const std::vector<std::size_t>& pages, int repeats);
  nlohmann::json contention_phase(int ops);

 private:
  // Host writes the GPU sees: release order after everything the mapper did before.
  void signal(std::uint32_t value) { std::atomic_ref<std::uint32_t>(*flag_).store(value, std::memory_order_release); }
  void block_stream(std::uint32_t ticket) { CU(cuStreamWaitValue32(stream_, flag_dev_, ticket, CU_STREAM_WAIT_VALUE_GEQ)); }

  // Pages [va, va + n pages): created (one chunk, or a page each), mapped, access granted.
  void back(CUdeviceptr va, std::size_t n, bool chunk, std::vector<CUmemGenericAllocationHandle>& made) {
    const std::size_t pieces = chunk ? 1 : n, piece = chunk ? n * kPage : kPage;
    for (std::size_t i = 0; i < pieces; ++i) {
      CUmemGenericAllocationHandle h = 0;
      CU(cuMemCreate(&h, piece, &prop_, 0));
      made.push_back(h);
      CU(cuMemMap(va + i * piece, piece, 0, h, 0));
    }
    CU(cuMemSetAccess(va, n * kPage, &access_, 1));
  }
  void unback(CUdeviceptr va, std::size_t n, std::vector<CUmemGenericAllocationHandle>& made) {
    CU(cuMemUnmap(va, n * kPage));
    for (auto h : made) CU(cuMemRelease(h));
    made.clear();
  }

  const Driver& d;
  CUdevice dev_ = 0;
  CUcontext ctx_ = nullptr;
  CUstream stream_ = nullptr;
  std::uint32_t* flag_ = nullptr;
  CUdeviceptr flag_dev_ = 0;
  std::uint32_t ticket_ = 0;
  CUmemAllocationProp prop_{};
  CUmemAccessDesc access_{};
  std::string name_;
};

nlohmann::json Bench::sync_phase(int hold_ms) {
  // Everything each probe needs is prepared before the stream is blocked, so that the probe
  // times exactly one call.
  CUdeviceptr va = 0, spare = 0;
  CU(cuMemAddressReserve(&va, 16 * kPage, kPage, 0, 0));
  CU(cuMemAddressReserve(&spare, 16 * kPage, kPage, 0, 0));
  CUmemGenericAllocationHandle page = 0, other = 0;
  CUdeviceptr allocated = 0, reserved = 0;
  struct Probe {
    const char* call;
    std::function<void()> call_it;
  };
  std::vector<Probe> probes = {
      {"cuMemAddressReserve", [&] { CU(cuMemAddressReserve(&reserved, 16 * kPage, kPage, 0, 0)); }},
      {"cuMemAddressFree", [&] { CU(cuMemAddressFree(reserved, 16 * kPage)); }},
      {"cuMemCreate (1 page)", [&] { CU(cuMemCreate(&page, kPage, &prop_, 0)); }},
      {"cuMemCreate (8-page chunk)", [&] { CU(cuMemCreate(&other, 8 * kPage, &prop_, 0)); }},
      {"cuMemMap", [&] { CU(cuMemMap(va, kPage, 0, page, 0)); }},
      {"cuMemSetAccess", [&] { CU(cuMemSetAccess(va, kPage, &access_, 1)); }},
      {"cuMemMap (chunk)", [&] { CU(cuMemMap(spare, 8 * kPage, 0, other, 0)); }},
      {"cuMemSetAccess (chunk)", [&] { CU(cuMemSetAccess(spare, 8 * kPage, &access_, 1)); }},
      {"cuMemUnmap", [&] { CU(cuMemUnmap(va, kPage)); }},
      {"cuMemRelease", [&] { CU(cuMemRelease(page)); }},
      {"cuMemUnmap (chunk)", [&] { CU(cuMemUnmap(spare, 8 * kPage)); }},
      {"cuMemRelease (chunk)", [&] { CU(cuMemRelease(other)); }},
      {"cuMemAlloc", [&] { CU(cuMemAlloc(&allocated, kPage)); }},
      {"cuMemFree (control: synchronizes)", [&] { CU(cuMemFree(allocated)); }},
  };
  nlohmann::json rows = nlohmann::json::array();
  for (Probe& p : probes) {
    const std::uint32_t ticket = ++ticket_;
    block_stream(ticket);
    std::atomic<bool> returned{false};
    std::atomic<double> released_after_ns{-1};
    const auto t0 = Clock::now();
    GuardedThread watchdog([&] {
      const auto deadline = t0 + std::chrono::milliseconds(hold_ms);
      while (!returned.load() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (!returned.load()) released_after_ns = ns_since(t0);
      signal(ticket);
    });
    std::optional<Failure> failed;
    try {
      p.call_it();
    } catch (const Failure& f) {
      failed = f;
    }
    const double ns = ns_since(t0);
    returned = true;
    watchdog.join();
    CU(cuStreamSynchronize(stream_));
    if (failed) throw *failed;
    const bool waited = released_after_ns.load() >= 0 && ns >= released_after_ns.load();
    rows.push_back({{"call", p.call}, {"ns", ns}, {"waits_for_blocked_stream", waited}});
  }
  CU(cuMemAddressFree(va, 16 * kPage));
  CU(cuMemAddressFree(spare, 16 * kPage));
  return rows;
}

nlohmann::json Bench::late_phase(const std::vector<std::size_t>& sizes, int repeats) {
  nlohmann::json rows = nlohmann::json::array();
  for (const std::size_t n : sizes)
    for (const bool chunk : {false, true}) {
      if (chunk && n == 1) continue;
      const std::size_t bytes = n * kPage;
      CUdeviceptr va = 0;
      CU(cuMemAddressReserve(&va, bytes, kPage, 0, 0));
      void *src = nullptr, *dst = nullptr;
      CU(cuMemHostAlloc(&src, bytes, 0));
      CU(cuMemHostAlloc(&dst, bytes, 0));
      std::vector<double> queue_ns, wait_ns, mapper_ns, ready_ns, inline_ns;
      std::uint64_t wrong = 0;
      std::string refused;  // the driver refused to queue the copies (the range was not mapped yet)
      std::vector<CUmemGenericAllocationHandle> made;
      for (int r = 0; r < repeats; ++r) {
        auto* words = static_cast<std::uint32_t*>(src);
        for (std::size_t i = 0; i < bytes / 4; i += 1024) words[i] = std::uint32_t(i * 2654435761u + r);
        std::memset(dst, 0, bytes);
        // Today's miss: the caller maps, then queues.
        auto t0 = Clock::now();
        back(va, n, chunk, made);
        inline_ns.push_back(ns_since(t0));
        CU(cuStreamSynchronize(stream_));
        unback(va, n, made);
        // Ready on the stream: the caller queues the wait and the work; a mapper thread backs the
        // range and writes the ticket.
        const std::uint32_t ticket = ++ticket_;
        std::mutex mu;
        std::condition_variable cv;
        bool go = false;
        double mapped_ns = 0;
        Clock::time_point queued_at;
        GuardedThread mapper([&] {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return go; });
          lock.unlock();
          // The ticket is written whatever happens: a ticket never written would hang the stream
          // (and the synchronization below) for good.
          try {
            CU(cuCtxSetCurrent(ctx_));
            const auto m0 = Clock::now();
            back(va, n, chunk, made);
            mapped_ns = ns_since(m0);
          } catch (const Failure&) {
            signal(ticket);
            throw;
          }
          signal(ticket);
        });
        auto start_mapper = [&] {
          {
            std::lock_guard lock(mu);
            go = true;
          }
          cv.notify_one();
        };
        try {
          t0 = Clock::now();
          block_stream(ticket);
          wait_ns.push_back(ns_since(t0));
          CU(cuMemcpyHtoDAsync(va, src, bytes, stream_));
          CU(cuMemcpyDtoHAsync(dst, va, bytes, stream_));
          queue_ns.push_back(ns_since(t0));
        } catch (const Failure& f) {
          start_mapper();  // so that it ends; its ticket releases whatever was queued
          mapper.join();
          CU(cuStreamSynchronize(stream_));
          unback(va, n, made);
          // A finding, not a failure of the run: the driver checks a copy's range when it is
          // queued, so a copy cannot be queued on a range mapped later.
          refused = f.what;
          break;
        }
        queued_at = Clock::now();
        start_mapper();
        CU(cuStreamSynchronize(stream_));
        ready_ns.push_back(ns_since(queued_at));
        mapper.join();
        mapper_ns.push_back(mapped_ns);
        const auto* back_words = static_cast<const std::uint32_t*>(dst);
        for (std::size_t i = 0; i < bytes / 4; i += 1024) wrong += back_words[i] != words[i];
        unback(va, n, made);
      }
      CU(cuMemFreeHost(src));
      CU(cuMemFreeHost(dst));
      CU(cuMemAddressFree(va, bytes));
      rows.push_back({{"pages", n},
                      {"chunk", chunk},
                      {"copies_refused_at_queueing", refused},
                      {"repeats", repeats},
                      {"words_wrong", wrong},
                      {"caller_maps", to_json(quantiles(inline_ns))},
                      {"caller_queues_wait", to_json(quantiles(wait_ns))},
                      {"caller_queues_wait_and_copies", to_json(quantiles(queue_ns))},
                      {"mapper_maps", to_json(quantiles(mapper_ns))},
                      {"work_done_after_queueing", to_json(quantiles(ready_ns))}});
    }
  return rows;
}

nlohmann::json Bench::contention_phase(int ops) {
  void* host = nullptr;
  CU(cuMemHostAlloc(&host, 4096, 0));
  CUdeviceptr small = 0;
  CU(cuMemAlloc(&small, 4096));
  nlohmann::json rows = nlohmann::json::array();
  for (const bool busy : {false, true}) {
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> vmm_calls{0};
    std::optional<GuardedThread> vmm;
    if (busy)
      vmm.emplace([&] {
        CU(cuCtxSetCurrent(ctx_));
        CUdeviceptr va = 0;
        CU(cuMemAddressReserve(&va, kPage, kPage, 0, 0));
        std::vector<CUmemGenericAllocationHandle> made;
        while (!stop.load()) {
          back(va, 1, false, made);
          unback(va, 1, made);
          vmm_calls += 5;
        }
        CU(cuMemAddressFree(va, kPage));
      });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::vector<double> wait_ns, copy_ns;
    for (int i = 0; i < ops; ++i) {
      const std::uint32_t ticket = ++ticket_;
      signal(ticket);  // already reached: the wait passes at once on the GPU
      auto t0 = Clock::now();
      block_stream(ticket);
      wait_ns.push_back(ns_since(t0));
      t0 = Clock::now();
      CU(cuMemcpyHtoDAsync(small, host, 64, stream_));
      copy_ns.push_back(ns_since(t0));
      if (i % 64 == 63) CU(cuStreamSynchronize(stream_));
    }
    stop = true;
    if (vmm) vmm->join();
    CU(cuStreamSynchronize(stream_));
    rows.push_back({{"vmm_thread_busy", busy},
                    {"vmm_calls_meanwhile", vmm_calls.load()},
                    {"queue_wait", to_json(quantiles(wait_ns))},
                    {"queue_copy_64B", to_json(quantiles(copy_ns))}});
  }
  CU(cuMemFree(small));
  CU(cuMemFreeHost(host));
  return rows;
}

void print_table(const nlohmann::json& j) {
  std::printf("device: %s\n\nsync: does the call wait for a stream blocked on a wait?\n", j["device"].get<std::string>().c_str());
  for (const auto& r : j["sync"])
    std::printf("  %-36s %10.1f us  %s\n", r["call"].get<std::string>().c_str(), r["ns"].get<double>() / 1e3,
                r["waits_for_blocked_stream"].get<bool>() ? "WAITS" : "no");
  std::printf("\nlate: medians (p99) in us\n  pages chunk wrong  caller-maps   caller-queues  mapper-maps  work-done\n");
  for (const auto& r : j["late"])
    std::printf("  %5zu %5s %5llu  %8.1f (%7.1f) %7.1f (%6.1f) %8.1f %10.1f\n", r["pages"].get<std::size_t>(),
                r["chunk"].get<bool>() ? "yes" : "no", (unsigned long long)r["words_wrong"].get<std::uint64_t>(),
                r["caller_maps"]["median_ns"].get<double>() / 1e3, r["caller_maps"]["p99_ns"].get<double>() / 1e3,
                r["caller_queues_wait_and_copies"]["median_ns"].get<double>() / 1e3,
                r["caller_queues_wait_and_copies"]["p99_ns"].get<double>() / 1e3,
                r["mapper_maps"]["median_ns"].get<double>() / 1e3, r["work_done_after_queueing"]["median_ns"].get<double>() / 1e3);
  for (const auto& r : j["late"])
    if (!r["copies_refused_at_queueing"].get<std::string>().empty())
      std::printf("  %zu pages: copies refused at queueing: %s\n", r["pages"].get<std::size_t>(),
                  r["copies_refused_at_queueing"].get<std::string>().c_str());
  std::printf("\ncontention: queueing on the caller's thread, median / p99 / max in us\n");
  for (const auto& r : j["contention"])
    std::printf("  vmm thread %-4s wait %6.2f / %7.2f / %8.1f   copy %6.2f / %7.2f / %8.1f  (%llu vmm calls)\n",
                r["vmm_thread_busy"].get<bool>() ? "busy" : "idle", r["queue_wait"]["median_ns"].get<double>() / 1e3,
                r["queue_wait"]["p99_ns"].get<double>() / 1e3, r["queue_wait"]["max_ns"].get<double>() / 1e3,
                r["queue_copy_64B"]["median_ns"].get<double>() / 1e3, r["queue_copy_64B"]["p99_ns"].get<double>() / 1e3,
                r["queue_copy_64B"]["max_ns"].get<double>() / 1e3, (unsigned long long)r["vmm_calls_meanwhile"].get<std::uint64_t>());
  if (j.contains("failed"))
    for (const auto& [phase, what] : j["failed"].items()) std::printf("\nphase %s failed: %s\n", phase.c_str(), what.get<std::string>().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args;
  CLI::App app{"Whether a miss can be mapped after allocate returns, the GPU waiting on the caller's stream\n"
               "(cuStreamWaitValue32) instead of the caller: VMM calls against a blocked stream, late\n"
               "mapping's correctness and cost, and queueing latency beside a busy VMM thread.",
               "valet-bench-stream-ready"};
  app.add_option("--device", args.device, "CUDA device index")->check(CLI::Range(0, 63))->capture_default_str();
  app.add_option("--pages", args.pages, "Range sizes for the late phase, in 2 MiB pages")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024));
  app.add_option("--repeats", args.repeats, "Rounds per size in the late phase")->check(CLI::Range(1, 10000))->capture_default_str();
  app.add_option("--hold-ms", args.hold_ms, "How long the sync phase keeps the stream blocked")
      ->check(CLI::Range(50, 10000))
      ->capture_default_str();
  app.add_option("--contention-ops", args.contention_ops, "Queueings timed in the contention phase")
      ->check(CLI::Range(10, 1000000))
      ->capture_default_str();
  app.add_flag("--json", args.json, "One JSON object on stdout instead of the tables");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  auto loaded = valet::cuda::load_driver();
  if (!loaded.ok()) {
    std::fprintf(stderr, "valet-bench-stream-ready: %s\n", loaded.error().to_string().c_str());
    return 1;
  }
  try {
    Bench bench(**loaded, args.device);
    nlohmann::json j;
    j["device"] = bench.name();
    j["hold_ms"] = args.hold_ms;
    // A phase whose call failed reports it and the others still run.
    auto phase = [&](const char* name, auto&& run) {
      try {
        j[name] = run();
      } catch (const Failure& f) {
        j[name] = nlohmann::json::array();
        j["failed"][name] = f.what;
      }
    };
    phase("sync", [&] { return bench.sync_phase(args.hold_ms); });
    phase("late", [&] { return bench.late_phase(args.pages, args.repeats); });
    phase("contention", [&] { return bench.contention_phase(args.contention_ops); });
    if (args.json)
      std::printf("%s\n", j.dump().c_str());
    else
      print_table(j);
    return j.contains("failed") ? 1 : 0;
  } catch (const Failure& f) {
    std::fprintf(stderr, "valet-bench-stream-ready: %s\n", f.what.c_str());
    return 1;
  }
}
