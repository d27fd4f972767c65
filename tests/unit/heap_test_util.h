// Helpers shared by the heap's tests: a host heap, and pattern writes and checks through pins.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "valet/fault_injection.h"
#include "valet/heap.h"
#include "valet/host_backend.h"
#include "valet/kernels/pattern.h"
#include "valet/runtime.h"

namespace valet::test {

inline constexpr std::size_t kMiB = std::size_t{1} << 20;
inline constexpr std::size_t kPage = 2 * kMiB;

// The unit tests watch what each call does when it returns: no keeper, and no mapper (a miss
// is placed and mapped on the allocating thread). The suites of those threads turn them on.
inline Config host_config(std::size_t capacity = 256 * kMiB) {
  Config c;
  c.capacity = capacity;
  c.background_reserve = false;
  c.background_misses = false;
  c.reserve_low_pages = 2;
  c.reserve_high_pages = 8;
  return c;
}

// Frees that reach their slab pages and the reserve at once (no thread cache keeps them): for
// tests that watch what a free does to pages, aliases and tails.
inline Config uncached(Config c = host_config()) {
  c.thread_cache_bytes = 0;
  c.thread_cache_run_bytes = 0;
  return c;
}

// A host backend of `capacity` bytes, for tests of components on their own (null if it cannot
// be opened).
inline std::unique_ptr<Backend> open_host_backend(std::size_t capacity) {
  BackendOptions options;
  options.choice = BackendChoice::host;
  options.host_capacity = capacity;
  auto backend = open_backend(options);
  return backend.ok() ? std::move(backend).value() : nullptr;
}

// A heap of `c` on the host backend (of the heap's capacity).
inline std::unique_ptr<Heap> make_heap(const Config& c = host_config()) {
  BackendOptions host;
  host.choice = BackendChoice::host;
  auto h = open_heap(host, c);
  EXPECT_TRUE(h.ok()) << h.error().to_string();
  return std::move(h).value();
}

// A host heap whose backend is wrapped in a FaultInjectingBackend, to count, fail or delay its
// driver calls. `faults` lives as long as `heap`; `heap` is null if creation failed.
struct FaultableHeap {
  std::unique_ptr<Heap> heap;
  FaultInjectingBackend* faults = nullptr;
  HostBackend& host() { return static_cast<BackendModel<HostBackend>&>(faults->inner()).impl(); }
};

inline FaultableHeap make_faultable_heap(const Config& c = host_config()) {
  auto backend = open_host_backend(c.capacity);
  EXPECT_TRUE(backend);
  if (!backend) return {};
  auto faulty = std::make_unique<FaultInjectingBackend>(std::move(backend));
  FaultableHeap out;
  out.faults = faulty.get();
  auto created = Heap::create(std::move(faulty), c);
  EXPECT_TRUE(created.ok());
  if (created.ok()) out.heap = std::move(created).value();
  return out;
}

inline std::uint64_t seed_of(Handle h) { return (std::uint64_t(h.index) << 32) ^ h.generation ^ 0x5eed; }

// Writes the object's pattern (through a pin) and waits for it.
inline void fill(Heap& heap, Handle h, std::uint64_t seed) {
  auto pin = heap.pin(h);
  ASSERT_TRUE(pin.ok()) << pin.error().to_string();
  PatternRange r{pin->address(), pin->size(), seed};
  ASSERT_TRUE(heap.backend().fill_pattern({&r, 1}, Stream{}).ok());
  ASSERT_TRUE(heap.backend().synchronize_stream(Stream{}).ok());
}

// Writes a byte pattern into [at, at + bytes) through the backend and reads it back: true when
// no byte differs (the range is mapped and accessible, and its pages hold what was written).
inline bool pattern_holds(Backend& b, DevicePtr at, std::size_t bytes, std::uint64_t seed) {
  const PatternRange range{at, bytes, seed};
  if (!b.fill_pattern({&range, 1}, Stream{}).ok()) return false;
  auto differ = b.verify_pattern({&range, 1}, Stream{});
  return differ.ok() && *differ == 0;
}

// The same check over slots [slot, slot + n) of a page pool's arena (tests of the pool itself).
template <class Pool>
bool pattern_holds(Backend& b, const Pool& pool, std::uint32_t slot, std::uint32_t n, std::uint64_t seed) {
  return pattern_holds(b, pool.address(slot), std::size_t(n) * kPageBytes, seed);
}

// Bytes of the object's first `bytes` (default: all) that differ from its pattern.
inline std::uint64_t mismatches(Heap& heap, Handle h, std::uint64_t seed, std::size_t bytes = ~std::size_t{0}) {
  auto pin = heap.pin(h);
  EXPECT_TRUE(pin.ok()) << pin.error().to_string();
  if (!pin.ok()) return ~0ull;
  PatternRange r{pin->address(), std::min(bytes, pin->size()), seed};
  auto bad = heap.backend().verify_pattern({&r, 1}, Stream{});
  EXPECT_TRUE(bad.ok());
  return bad.ok() ? *bad : ~0ull;
}

struct Kept {
  Handle h;
  std::uint64_t seed;
};

// Allocates `count` objects of `bytes`, fills every `keep_every`-th with a pattern and frees the
// rest: sparse slab pages (pages fill from opposite ends by parity, so neighbours can mesh).
inline std::vector<Kept> fragment(Heap& heap, std::size_t count, std::size_t bytes, std::size_t keep_every,
                                  std::uint64_t seed) {
  std::vector<Kept> kept;
  std::mt19937_64 rng(seed);
  std::vector<Handle> all;
  for (std::size_t i = 0; i < count; ++i) all.push_back(*heap.allocate(bytes));
  for (std::size_t i = 0; i < count; ++i) {
    if (i % keep_every == 0) {
      const std::uint64_t s = rng();
      fill(heap, all[i], s);
      kept.push_back({all[i], s});
    } else {
      EXPECT_TRUE(heap.free(all[i]).ok());
    }
  }
  return kept;
}

// validate() of a heap or of one of its parts (a page pool) passes; ASSERT_VALID ends the test.
#define EXPECT_VALID(heap)                                  \
  do {                                                      \
    auto valid_ = (heap).validate();                        \
    EXPECT_TRUE(valid_.ok()) << valid_.error().to_string(); \
  } while (0)
#define ASSERT_VALID(heap)                                  \
  do {                                                      \
    auto valid_ = (heap).validate();                        \
    ASSERT_TRUE(valid_.ok()) << valid_.error().to_string(); \
  } while (0)

// The host backend beneath a heap opened on it (tests that delay its streams or count its pages).
inline HostBackend& host_of(Heap& heap) { return static_cast<BackendModel<HostBackend>&>(heap.backend()).impl(); }

// Compaction requests of one mechanism each.
inline CompactRequest mesh_only() {
  CompactRequest r;
  r.evacuate = false;
  return r;
}
inline CompactRequest evacuate_only() {
  CompactRequest r;
  r.mesh = false;
  return r;
}

}  // namespace valet::test
