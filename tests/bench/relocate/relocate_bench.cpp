// Zero-copy relocation of a large object: growing a 1 GiB object whose neighbour blocks it moves
// its pages to a new virtual range by remapping (Heap::resize), against moving it by copying
// (allocate the larger object, one device copy, free the old), in the same run. Time and peak
// physical memory of both.
//
//   valet-bench-relocate [--backend auto|cuda|host] [--mib N]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "valet/runtime.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMiB = std::size_t{1} << 20;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

}  // namespace

int main(int argc, char** argv) {
  std::string backend = "auto";
  std::size_t mib = 1024;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
    else if (!std::strcmp(argv[i], "--mib") && i + 1 < argc) mib = std::strtoull(argv[++i], nullptr, 10);
    else {
      std::fprintf(stderr, "usage: valet-bench-relocate [--backend auto|cuda|host] [--mib N]\n");
      return 2;
    }
  }
  valet::BackendOptions backend_options;
  backend_options.choice = *valet::parse_backend_choice(backend);
  valet::Config cfg;
  cfg.capacity = (3 * mib + 256) * kMiB;
  cfg.background_reserve = false;
  cfg.reserve_low_pages = 0;
  cfg.reserve_high_pages = 0;
  auto opened = valet::open_heap(backend_options, cfg);
  if (!opened.ok()) {
    std::fprintf(stderr, "valet-bench-relocate: %s\n", opened.error().to_string().c_str());
    return 1;
  }
  auto& heap = **opened;
  std::printf("backend: %s, object %zu MiB, grown by 2 MiB past a neighbour\n", heap.backend().name().c_str(), mib);
  const std::size_t bytes = mib * kMiB, grown = bytes + 2 * kMiB;
  auto check = [&](valet::Handle h, std::uint64_t seed) {
    auto p = heap.pin(h);
    valet::PatternRange r{p->address(), bytes, seed};
    return *heap.backend().verify_pattern({&r, 1}, valet::Stream{});
  };
  std::printf("%-10s %10s %16s %10s\n", "method", "ms", "peak_mapped_MiB", "bad_bytes");
  for (int rep = 0; rep < 3; ++rep) {
    // Remap: the object's own pages move under a new virtual range; nothing is copied.
    {
      auto a = *heap.allocate(bytes);
      auto blocker = *heap.allocate(2 * kMiB);
      {
        auto p = heap.pin(a);
        valet::PatternRange r{p->address(), bytes, 1};
        (void)heap.backend().fill_pattern({&r, 1}, valet::Stream{});
        (void)heap.backend().synchronize_stream(valet::Stream{});
      }
      const auto before = heap.pin(a)->address();
      const auto t0 = Clock::now();
      auto st = heap.resize(a, grown);
      const double ms = ms_since(t0);
      const std::size_t peak = heap.stats().mapped_bytes;
      if (!st.ok() || heap.pin(a)->address() == before) {
        std::fprintf(stderr, "relocation did not happen: %s\n", st.ok() ? "same address" : st.error().to_string().c_str());
        return 1;
      }
      std::printf("%-10s %10.3f %16zu %10llu\n", "remap", ms, peak / kMiB, (unsigned long long)check(a, 1));
      (void)heap.free(a);
      (void)heap.free(blocker);
      (void)heap.maintain();
    }
    // Copy: a new object of the grown size, one device-to-device copy, free the old one.
    {
      auto a = *heap.allocate(bytes);
      {
        auto p = heap.pin(a);
        valet::PatternRange r{p->address(), bytes, 2};
        (void)heap.backend().fill_pattern({&r, 1}, valet::Stream{});
        (void)heap.backend().synchronize_stream(valet::Stream{});
      }
      const auto t0 = Clock::now();
      auto b = *heap.allocate(grown);
      {
        auto pa = heap.pin(a), pb = heap.pin(b);
        valet::CopyRange c{pa->address(), pb->address(), bytes};
        (void)heap.backend().copy({&c, 1}, valet::Stream{});
        (void)heap.backend().synchronize_stream(valet::Stream{});
      }
      const std::size_t peak = heap.stats().mapped_bytes;
      (void)heap.free(a);
      const double ms = ms_since(t0);
      std::printf("%-10s %10.3f %16zu %10llu\n", "copy", ms, peak / kMiB, (unsigned long long)check(b, 2));
      (void)heap.free(b);
      (void)heap.maintain();
    }
  }
  return 0;
}
