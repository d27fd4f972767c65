// valet-bench-batched-copy: bandwidth of the CUDA backend's batched copy (Backend::copy) for many
// objects of 4 KiB, 64 KiB and 1 MiB moved to destinations scattered over a large mapped region,
// next to one large device-to-device copy of the same bytes (a one-range batch, and the driver's
// cuMemcpyDtoDAsync). Bandwidth counts bytes read plus bytes written.
//
// Two timings per case:
// - "gpu": the stream is held by a gate (a host function that waits) while the iterations are
//   queued, then released; the time between two events around the iterations is GPU time on that
//   stream only. The backend uploads each batch's items on its own upload stream, which the gate
//   does not hold, so (as in a pipeline, where uploads overlap earlier work) the upload is not
//   counted. This is the number to compare with the plain copy: it measures the kernel.
// - "e2e": wall time of queueing the iterations and waiting for them, host work included (the
//   backend checks every range against its page table and stages the items).
// Before timing, each case fills the sources with a pattern, copies, and verifies every
// destination, and a self-check copies thousands of odd-sized unaligned ranges.
//
// Usage: valet-bench-batched-copy [--total-mib N] [--iters N] [--device N]
// (--help lists the options; a bad one exits with status 2 and a message.) Exits 0 with
// "skipped: <reason>" when no CUDA device is usable.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "valet/cuda_backend.h"
#include "valet/types.h"

namespace {

struct Args {
  std::size_t total_mib = 1024;
  int iters = 10;
  int device = 0;
};

// Parses the command line into `args`; an exit status when the run ends there (--help: 0; an
// error: 2, with CLI11's message). The options are checked on every build, CUDA or not.
std::optional<int> parse_arguments(int argc, char** argv, Args& args) {
  CLI::App app{"Bandwidth of the CUDA backend's batched copy for many small objects scattered over a large\n"
               "region, next to one large device-to-device copy of the same bytes.",
               "valet-bench-batched-copy"};
  app.add_option("--total-mib", args.total_mib, "MiB copied per object size (rounded up to whole pages)")
      ->check(CLI::Range(std::size_t{2}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--iters", args.iters, "Iterations of the end-to-end timing")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--device", args.device, "CUDA device ordinal")->check(CLI::Range(0, 1023))->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  const std::size_t page_mib = valet::kPageBytes >> 20;
  args.total_mib = (args.total_mib + page_mib - 1) / page_mib * page_mib;  // whole pages
  return std::nullopt;
}

int run_bench(const Args& args);

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (auto exit_status = parse_arguments(argc, argv, args)) return *exit_status;
  return run_bench(args);
}

#if !defined(VALET_BENCH_HAVE_CUDA_H)

namespace {
int run_bench(const Args&) {
  std::printf("skipped: this build has no CUDA backend (no CUDA toolkit at configure time)\n");
  return 0;
}
}  // namespace

#else

#include <cuda.h>
#include <dlfcn.h>

namespace {

using namespace valet;
using Clock = std::chrono::steady_clock;

// --- The few driver calls the benchmark makes itself (same loading rules as the library) -----

#define BENCH_DRIVER_FUNCTIONS(X) \
  X(cuGetErrorName)               \
  X(cuInit)                       \
  X(cuDeviceGet)                  \
  X(cuDevicePrimaryCtxRetain)     \
  X(cuDevicePrimaryCtxRelease)    \
  X(cuCtxPushCurrent)             \
  X(cuCtxPopCurrent)              \
  X(cuStreamCreate)               \
  X(cuStreamDestroy)              \
  X(cuStreamSynchronize)          \
  X(cuEventCreate)                \
  X(cuEventDestroy)               \
  X(cuEventRecord)                \
  X(cuEventSynchronize)           \
  X(cuEventElapsedTime)           \
  X(cuLaunchHostFunc)             \
  X(cuMemcpyDtoDAsync)

struct Driver {
#define BENCH_MEMBER(fn) decltype(&::fn) fn = nullptr;
  BENCH_DRIVER_FUNCTIONS(BENCH_MEMBER)
#undef BENCH_MEMBER
};

std::string load_driver(Driver& d) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return std::string("CUDA driver not found (") + dlerror() + ")";  // dlerror names the library
  using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto get = reinterpret_cast<GetProc>(dlsym(lib, "cuGetProcAddress_v2"));
  if (!get) return "no cuGetProcAddress_v2 in libcuda.so.1";
#define BENCH_RESOLVE(fn)                                                                             \
  {                                                                                                   \
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;                     \
    void* p = nullptr;                                                                                \
    if (get(#fn, &p, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &status) != CUDA_SUCCESS || !p ||     \
        status != CU_GET_PROC_ADDRESS_SUCCESS)                                                        \
      return std::string("the CUDA driver lacks ") + #fn;                                              \
    d.fn = reinterpret_cast<decltype(d.fn)>(p);                                                       \
  }
  BENCH_DRIVER_FUNCTIONS(BENCH_RESOLVE)
#undef BENCH_RESOLVE
  return {};
}

Driver g_drv;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "valet-bench-batched-copy: %s\n", what.c_str());
  std::exit(1);
}

void check_cu(CUresult r, const char* call) {
  if (r == CUDA_SUCCESS) return;
  const char* name = nullptr;
  if (g_drv.cuGetErrorName) g_drv.cuGetErrorName(r, &name);
  die(std::string(call) + " failed: " + (name ? name : "?") + " (" + std::to_string(int(r)) + ")");
}

void check(const Status& s, const char* what) {
  if (!s.ok()) die(std::string(what) + ": " + s.error().to_string());
}

template <class T>
T check(Result<T> r, const char* what) {
  if (!r.ok()) die(std::string(what) + ": " + r.error().to_string());
  return std::move(r).value();
}

// --- Memory ------------------------------------------------------------------------------------

struct Region {
  DevicePtr base = 0;
  std::size_t bytes = 0;
  std::vector<PhysicalPage> pages;
};

Region make_region(Backend& b, std::size_t bytes) {
  Region r;
  r.bytes = bytes;
  r.base = check(b.reserve(bytes), "reserve");
  for (std::size_t off = 0; off < bytes; off += kPageBytes) {
    r.pages.push_back(check(b.create_page(), "create_page"));
    check(b.map(r.base + off, r.pages.back()), "map");
  }
  check(b.set_access(r.base, bytes), "set_access");
  return r;
}

void free_region(Backend& b, Region& r) {
  check(b.unmap(r.base, r.bytes), "unmap");
  for (auto p : r.pages) check(b.release_page(p), "release_page");
  check(b.unreserve(r.base, r.bytes), "unreserve");
  r = Region{};
}

// --- Timing ------------------------------------------------------------------------------------

struct Gate {
  std::atomic<bool> open{false};
  std::atomic<bool> timed_out{false};
};

void CUDA_CB hold_stream(void* p) {
  auto* g = static_cast<Gate*>(p);
  // A round that blocks behind its own gate (say, a driver call that waits for the device
  // while the stream is held) must not hang: give up after a while; the round is discarded.
  const auto deadline = Clock::now() + std::chrono::seconds(3);
  while (!g->open.load(std::memory_order_acquire)) {
    if (Clock::now() > deadline) {
      g->timed_out.store(true);
      return;
    }
    std::this_thread::yield();
  }
}

struct Timer {
  CUstream stream = nullptr;
  CUevent start = nullptr, stop = nullptr;

  // GPU milliseconds per iteration of `iters` calls of enqueue(), queued behind a closed gate;
  // negative if the gate timed out (the round is then worthless).
  template <class F>
  double gated_ms(int iters, F&& enqueue) {
    Gate gate;
    check_cu(g_drv.cuLaunchHostFunc(stream, hold_stream, &gate), "cuLaunchHostFunc");
    check_cu(g_drv.cuEventRecord(start, stream), "cuEventRecord");
    for (int i = 0; i < iters; ++i) enqueue();
    check_cu(g_drv.cuEventRecord(stop, stream), "cuEventRecord");
    gate.open.store(true, std::memory_order_release);
    check_cu(g_drv.cuEventSynchronize(stop), "cuEventSynchronize");
    if (gate.timed_out.load()) return -1;
    float ms = 0;
    check_cu(g_drv.cuEventElapsedTime(&ms, start, stop), "cuEventElapsedTime");
    return double(ms) / iters;
  }

  // The median of `rounds` gated measurements (a few timed-out rounds are retried: the first
  // round may grow the backend's staging pool while the stream is held).
  template <class F>
  double median_gated_ms(int rounds, int iters, F&& enqueue) {
    std::vector<double> v;
    for (int attempt = 0; attempt < rounds + 3 && int(v.size()) < rounds; ++attempt) {
      const double ms = gated_ms(iters, enqueue);
      if (ms >= 0) v.push_back(ms);
      else std::fprintf(stderr, "note: a gated round timed out and was discarded\n");
    }
    if (v.empty()) die("every gated round timed out: queueing work blocked while the stream was held");
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  }

  // Wall milliseconds per iteration, from the first call to the end of the last one's work; also
  // the host time per call spent inside enqueue().
  template <class F>
  double e2e_ms(int iters, F&& enqueue, double* host_ms_per_call) {
    check_cu(g_drv.cuStreamSynchronize(stream), "cuStreamSynchronize");
    double inside = 0;
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) {
      const auto c0 = Clock::now();
      enqueue();
      inside += std::chrono::duration<double, std::milli>(Clock::now() - c0).count();
    }
    check_cu(g_drv.cuStreamSynchronize(stream), "cuStreamSynchronize");
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (host_ms_per_call) *host_ms_per_call = inside / iters;
    return ms / iters;
  }
};

double gbps(std::size_t bytes_moved, double ms) { return 2.0 * double(bytes_moved) / (ms * 1e-3) / 1e9; }

// --- Self-check: odd lengths, unaligned offsets, relative misalignment of source and destination -

void self_check(Backend& b, Stream s, const Region& src, const Region& dst, std::size_t span) {
  std::mt19937_64 rng(12345);
  std::vector<std::size_t> lengths;
  std::size_t total = 0;
  while (lengths.size() < 6000) {
    const int kind = int(rng() % 10);
    const std::size_t n = kind < 4 ? 1 + rng() % 64 : kind < 8 ? 1 + rng() % 8192 : 1 + rng() % (200 << 10);
    if (total + n + 32 > span) break;
    lengths.push_back(n);
    total += n + 16;
  }
  const std::size_t count = lengths.size();
  auto layout = [&](DevicePtr base, const std::vector<std::size_t>& order) {
    std::vector<DevicePtr> at(count);
    DevicePtr cursor = base + rng() % 16;
    for (std::size_t k : order) {
      at[k] = cursor;
      cursor += lengths[k] + rng() % 16;
    }
    if (cursor > base + span) die("self-check layout overflow");
    return at;
  };
  std::vector<std::size_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  const auto src_at = layout(src.base, order);
  std::shuffle(order.begin(), order.end(), rng);
  const auto dst_at = layout(dst.base, order);
  std::vector<PatternRange> fills, checks;
  std::vector<CopyRange> copies;
  std::size_t bytes = 0;
  for (std::size_t k = 0; k < count; ++k) {
    fills.push_back({src_at[k], lengths[k], 777 + k});
    checks.push_back({dst_at[k], lengths[k], 777 + k});
    copies.push_back({src_at[k], dst_at[k], lengths[k]});
    bytes += lengths[k];
  }
  check(b.fill_pattern(fills, s), "fill_pattern");
  const std::uint64_t src_bad = check(b.verify_pattern(fills, s), "verify_pattern (sources)");
  check(b.copy(copies, s), "copy");
  const std::uint64_t dst_bad = check(b.verify_pattern(checks, s), "verify_pattern (destinations)");
  // The verify must see a damaged byte.
  unsigned char byte = 0;
  check(b.read(&byte, dst_at[count / 2], 1), "read");
  byte ^= 0x5a;
  check(b.write(dst_at[count / 2], &byte, 1), "write");
  const std::uint64_t one_bad = check(b.verify_pattern(checks, s), "verify_pattern (one damaged byte)");
  std::printf("self-check: %zu unaligned ranges, %.1f MiB: source mismatches %llu, copy mismatches %llu, "
              "damaged byte seen %s\n",
              count, double(bytes) / (1 << 20), (unsigned long long)src_bad, (unsigned long long)dst_bad,
              one_bad == 1 ? "yes" : "NO");
  if (src_bad || dst_bad || one_bad != 1) die("self-check FAILED");
}

// --- The benchmark -----------------------------------------------------------------------------

// The CUDA backend of the device, or null after printing "skipped: ..." where there is no usable
// device, driver, or enough free memory for `total` bytes of sources and twice that of destinations.
std::unique_ptr<Backend> open_or_skip(const Args& args, std::size_t total) {
  auto opened = open_cuda_backend(args.device);
  if (!opened.ok()) {
    std::printf("skipped: %s\n", opened.error().message.c_str());
    return nullptr;
  }
  std::unique_ptr<Backend> backend = std::move(opened).value();
  if (const std::string why = load_driver(g_drv); !why.empty()) {
    std::printf("skipped: %s\n", why.c_str());
    return nullptr;
  }
  const auto info = check(backend->memory_info(), "memory_info");
  if (info.free_bytes < 3 * total + (std::size_t{512} << 20)) {
    std::printf("skipped: needs %zu MiB of free device memory, %zu MiB free (try --total-mib)\n",
                (3 * total + (std::size_t{512} << 20)) >> 20, info.free_bytes >> 20);
    return nullptr;
  }
  return backend;
}

// The benchmark's own stream and events, made with the driver in the primary context. The stream
// is handed to the backend as is (as a CUDA runtime stream would be).
struct Session {
  CUdevice dev = 0;
  CUcontext ctx = nullptr;
  Timer t;

  explicit Session(int device) {
    check_cu(g_drv.cuInit(0), "cuInit");
    check_cu(g_drv.cuDeviceGet(&dev, device), "cuDeviceGet");
    check_cu(g_drv.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check_cu(g_drv.cuCtxPushCurrent(ctx), "cuCtxPushCurrent");
    check_cu(g_drv.cuStreamCreate(&t.stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    check_cu(g_drv.cuEventCreate(&t.start, CU_EVENT_DEFAULT), "cuEventCreate");
    check_cu(g_drv.cuEventCreate(&t.stop, CU_EVENT_DEFAULT), "cuEventCreate");
  }
  Stream stream() const { return Stream{reinterpret_cast<std::uintptr_t>(t.stream)}; }

  // Destroys the stream and events and pops the context (the stream's work is done: see
  // run_bench); the primary context is released after the backend is gone (release_context()).
  void close() {
    g_drv.cuEventDestroy(t.start);
    g_drv.cuEventDestroy(t.stop);
    g_drv.cuStreamDestroy(t.stream);
    CUcontext popped = nullptr;
    g_drv.cuCtxPopCurrent(&popped);
  }
  void release_context() { g_drv.cuDevicePrimaryCtxRelease(dev); }
};

// Milliseconds per copy of the plain large copies of the whole total: a one-range batch and
// cuMemcpyDtoDAsync, gated (GPU time) and end to end.
struct PlainCopies {
  double dtod_gpu = 0, dtod_e2e = 0, one_gpu = 0, one_e2e = 0;
};

PlainCopies time_plain_copies(Backend& b, Session& session, const Region& src, const Region& dst, std::size_t total,
                              int iters) {
  const Stream s = session.stream();
  Timer& t = session.t;
  const CopyRange whole{src.base, dst.base, total};
  auto one_range = [&] { check(b.copy({&whole, 1}, s), "copy (one range)"); };
  auto dtod = [&] { check_cu(g_drv.cuMemcpyDtoDAsync(dst.base, src.base, total, t.stream), "cuMemcpyDtoDAsync"); };
  for (int i = 0; i < 2; ++i) {
    one_range();
    dtod();
  }
  PlainCopies p;
  p.dtod_gpu = t.median_gated_ms(5, 4, dtod);
  p.dtod_e2e = t.e2e_ms(iters, dtod, nullptr);
  p.one_gpu = t.median_gated_ms(5, 4, one_range);
  p.one_e2e = t.e2e_ms(iters, one_range, nullptr);
  return p;
}

// One row of the table: objects of `size` bytes copied from the sources to slots scattered over
// the destinations, checked before and after the timings. False where a copy produced wrong bytes.
bool bench_object_size(Backend& b, Session& session, const Region& src, const Region& dst, std::size_t size,
                       std::size_t total, int iters, const PlainCopies& plain, std::mt19937_64& rng) {
  const Stream s = session.stream();
  const std::size_t count = total / size;
  const std::size_t slots = dst.bytes / size;
  std::vector<std::size_t> slot(slots);
  std::iota(slot.begin(), slot.end(), 0);
  std::shuffle(slot.begin(), slot.end(), rng);
  std::vector<CopyRange> copies(count);
  std::vector<PatternRange> fills(count), checks(count);
  for (std::size_t i = 0; i < count; ++i) {
    const DevicePtr from = src.base + i * size, to = dst.base + slot[i] * size;
    copies[i] = {from, to, size};
    fills[i] = {from, size, 1000 * size + i};
    checks[i] = {to, size, 1000 * size + i};
  }
  check(b.fill_pattern(fills, s), "fill_pattern");
  auto batch = [&] { check(b.copy(copies, s), "copy (batch)"); };
  batch();
  bool ok = true;
  const std::uint64_t bad = check(b.verify_pattern(checks, s), "verify_pattern");
  if (bad) {
    std::printf("%zu KiB objects: %llu bytes differ after the batched copy\n", size >> 10, (unsigned long long)bad);
    ok = false;
  }
  batch();  // warm the staging pool for the gated rounds
  double host_ms = 0;
  const double e2e = session.t.e2e_ms(iters, batch, &host_ms);
  const double gpu = session.t.median_gated_ms(5, 4, batch);
  if (check(b.verify_pattern(checks, s), "verify_pattern")) ok = false;
  char label[32];
  std::snprintf(label, sizeof label, "%zu KiB", size >> 10);
  std::printf("%-8s %9zu %11.0f %11.0f %9.3f | %11.0f %11.0f | %8.0f%% %8.0f%%\n", label, count, gbps(total, gpu),
              gbps(total, e2e), host_ms, gbps(total, plain.one_gpu), gbps(total, plain.dtod_gpu),
              100.0 * plain.dtod_gpu / gpu, 100.0 * plain.dtod_e2e / e2e);
  return ok;
}

int run_bench(const Args& args) {
  const std::size_t total = args.total_mib << 20;
  std::unique_ptr<Backend> backend = open_or_skip(args, total);
  if (!backend) return 0;
  Backend& b = *backend;
  Session session(args.device);

  std::printf("device: %s\n", b.name().c_str());
  std::printf("total per size: %zu MiB; destinations scattered over %zu MiB; %d iterations (e2e), "
              "4 per gated round (gpu, median of 5)\n",
              args.total_mib, 2 * args.total_mib, args.iters);
  Region src = make_region(b, total);
  Region dst = make_region(b, 2 * total);
  self_check(b, session.stream(), src, dst, std::min<std::size_t>(total, std::size_t{64} << 20));
  const PlainCopies plain = time_plain_copies(b, session, src, dst, total, args.iters);

  std::printf("\n%-8s %9s %11s %11s %9s | %11s %11s | %9s %9s\n", "object", "objects", "batch gpu", "batch e2e",
              "host/call", "1-range gpu", "DtoD gpu", "gpu/DtoD", "e2e/DtoD");
  std::printf("%-8s %9s %11s %11s %9s | %11s %11s | %9s %9s\n", "", "", "GB/s", "GB/s", "ms", "GB/s", "GB/s", "",
              "");
  std::mt19937_64 rng(2024);
  bool all_ok = true;
  for (const std::size_t size : {std::size_t{4} << 10, std::size_t{64} << 10, std::size_t{1} << 20})
    all_ok = bench_object_size(b, session, src, dst, size, total, args.iters, plain, rng) && all_ok;
  std::printf("\none large copy of %zu MiB: 1-range batch %.0f GB/s gpu, %.0f GB/s e2e; cuMemcpyDtoDAsync %.0f GB/s "
              "gpu, %.0f GB/s e2e (bytes read + written)\n",
              args.total_mib, gbps(total, plain.one_gpu), gbps(total, plain.one_e2e), gbps(total, plain.dtod_gpu),
              gbps(total, plain.dtod_e2e));

  check_cu(g_drv.cuStreamSynchronize(session.t.stream), "cuStreamSynchronize");
  free_region(b, src);
  free_region(b, dst);
  session.close();
  backend.reset();
  session.release_context();
  if (!all_ok) {
    std::printf("FAILED: a batched copy produced wrong bytes\n");
    return 1;
  }
  return 0;
}

}  // namespace

#endif  // VALET_BENCH_HAVE_CUDA_H
