// Zero-copy relocation of a large object: growing a 1 GiB object whose neighbour blocks it moves
// its pages to a new virtual range by remapping (Heap::resize), against moving it by copying
// (allocate the larger object, one device copy, free the old), in the same run. Time and peak
// physical memory of both.
//
//   valet-bench-relocate [--backend auto|cuda|host] [--mib N]
// (--help lists the options; a bad one exits with status 2 and a message, a heap that cannot be
// opened or a relocation that did not happen with status 1.)
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "valet/runtime.h"
#include "valet/types.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMiB = std::size_t{1} << 20;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

struct Arguments {
  std::string backend = "auto";
  std::size_t mib = 1024;
};

// Parses the command line into `args`; an exit status when the run ends there (--help: 0; an
// error: 2, with CLI11's message).
std::optional<int> parse_arguments(int argc, char** argv, Arguments& args) {
  CLI::App app{"Zero-copy relocation: grows a large object past a neighbour by remapping its pages\n"
               "(Heap::resize), against allocate-copy-free; time and peak mapped memory of both.",
               "valet-bench-relocate"};
  app.add_option("--backend", args.backend, "auto, cuda or host")
      ->check(CLI::IsMember({"auto", "cuda", "host"}))
      ->capture_default_str();
  app.add_option("--mib", args.mib, "Size of the object in MiB")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return std::nullopt;
}

// Fills the object's first `bytes` with the pattern of `seed`.
void fill(valet::Heap& heap, valet::Handle h, std::size_t bytes, std::uint64_t seed) {
  auto p = heap.pin(h);
  valet::PatternRange r{p->address(), bytes, seed};
  (void)heap.backend().fill_pattern({&r, 1}, valet::Stream{});
  (void)heap.backend().synchronize_stream(valet::Stream{});
}

// Bytes of the object's first `bytes` that differ from the pattern of `seed`.
std::uint64_t bad_bytes(valet::Heap& heap, valet::Handle h, std::size_t bytes, std::uint64_t seed) {
  auto p = heap.pin(h);
  valet::PatternRange r{p->address(), bytes, seed};
  return *heap.backend().verify_pattern({&r, 1}, valet::Stream{});
}

// Remap: the object's own pages move under a new virtual range; nothing is copied. False where
// the relocation did not happen.
bool time_remap(valet::Heap& heap, std::size_t bytes) {
  auto a = *heap.allocate(bytes);
  auto blocker = *heap.allocate(valet::kPageBytes);
  fill(heap, a, bytes, 1);
  const auto before = heap.pin(a)->address();
  const auto t0 = Clock::now();
  auto st = heap.resize(a, bytes + valet::kPageBytes);
  const double ms = ms_since(t0);
  const std::size_t peak = heap.stats().mapped_bytes;
  if (!st.ok() || heap.pin(a)->address() == before) {
    std::fprintf(stderr, "relocation did not happen: %s\n", st.ok() ? "same address" : st.error().to_string().c_str());
    return false;
  }
  std::printf("%-10s %10.3f %16zu %10llu\n", "remap", ms, peak / kMiB, (unsigned long long)bad_bytes(heap, a, bytes, 1));
  (void)heap.free(a);
  (void)heap.free(blocker);
  (void)heap.maintain();
  return true;
}

// Copy: a new object of the grown size, one device-to-device copy, free the old one.
void time_copy(valet::Heap& heap, std::size_t bytes) {
  auto a = *heap.allocate(bytes);
  fill(heap, a, bytes, 2);
  const auto t0 = Clock::now();
  auto b = *heap.allocate(bytes + valet::kPageBytes);
  {
    auto pa = heap.pin(a), pb = heap.pin(b);
    valet::CopyRange c{pa->address(), pb->address(), bytes};
    (void)heap.backend().copy({&c, 1}, valet::Stream{});
    (void)heap.backend().synchronize_stream(valet::Stream{});
  }
  const std::size_t peak = heap.stats().mapped_bytes;
  (void)heap.free(a);
  const double ms = ms_since(t0);
  std::printf("%-10s %10.3f %16zu %10llu\n", "copy", ms, peak / kMiB, (unsigned long long)bad_bytes(heap, b, bytes, 2));
  (void)heap.free(b);
  (void)heap.maintain();
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args;
  if (auto exit_status = parse_arguments(argc, argv, args)) return *exit_status;
  valet::BackendOptions backend_options;
  backend_options.choice = valet::parse_backend_choice(args.backend).value();  // checked by CLI11
  valet::Config cfg;
  cfg.capacity = (3 * args.mib + 256) * kMiB;
  cfg.background_reserve = false;
  cfg.reserve_low_pages = 0;
  cfg.reserve_high_pages = 0;
  auto opened = valet::open_heap(backend_options, cfg);
  if (!opened.ok()) {
    std::fprintf(stderr, "valet-bench-relocate: %s\n", opened.error().to_string().c_str());
    return 1;
  }
  auto& heap = **opened;
  std::printf("backend: %s, object %zu MiB, grown by %zu MiB past a neighbour\n",
              heap.backend().name().c_str(), args.mib, valet::kPageBytes / kMiB);
  const std::size_t bytes = args.mib * kMiB;
  std::printf("%-10s %10s %16s %10s\n", "method", "ms", "peak_mapped_MiB", "bad_bytes");
  for (int rep = 0; rep < 3; ++rep) {
    if (!time_remap(heap, bytes)) return 1;
    time_copy(heap, bytes);
  }
  return 0;
}
