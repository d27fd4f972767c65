// Helpers of the bad-input and fault-sweep tests: a host heap whose HostBackend stays reachable
// (optionally under the fault adaptor), and pattern writes and checks of tracked objects.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "valet/fault_injection.h"
#include "valet/heap.h"
#include "valet/host_backend.h"
#include "valet/runtime.h"

namespace valet::stress_test {

inline constexpr std::size_t kMiB = std::size_t{1} << 20;

struct HostHeap {
  std::unique_ptr<Heap> heap;
  HostBackend* host = nullptr;
  FaultInjectingBackend* faults = nullptr;  // with_faults only
};

inline Config small_host_config(std::size_t capacity = 128 * kMiB) {
  Config c;
  c.capacity = capacity;
  c.background_reserve = false;  // deterministic: the k-th backend call is the same on every run
  c.reserve_low_pages = 2;
  c.reserve_high_pages = 6;
  return c;
}

inline HostHeap make_host_heap(const Config& config = small_host_config(), bool with_faults = false) {
  HostHeap out;
  auto host = std::make_unique<BackendModel<HostBackend>>(HostBackendOptions{.capacity_bytes = config.capacity});
  EXPECT_TRUE(host->impl().status().ok());
  out.host = &host->impl();
  std::unique_ptr<Backend> backend = std::move(host);
  if (with_faults) {
    auto faulty = std::make_unique<FaultInjectingBackend>(std::move(backend));
    out.faults = faulty.get();
    backend = std::move(faulty);
  }
  auto heap = Heap::create(std::move(backend), config);
  EXPECT_TRUE(heap.ok()) << heap.error().to_string();
  if (heap.ok()) out.heap = std::move(heap).value();
  return out;
}

struct Obj {
  Handle h;
  std::size_t size = 0;
  std::uint64_t seed = 0;
};

inline Status fill(Heap& heap, const Obj& o) {
  auto pin = heap.pin(o.h);
  if (!pin.ok()) return pin.error();
  const PatternRange r{pin->address(), o.size, o.seed};
  VALET_TRY(heap.backend().fill_pattern({&r, 1}, Stream{}));
  return heap.backend().synchronize_stream(Stream{});
}

// Differing bytes among the first `bytes` (default: all); ~0 when the object cannot be pinned or
// the heap reports another size.
inline std::uint64_t mismatches(Heap& heap, const Obj& o, std::size_t bytes = ~std::size_t{0}) {
  auto pin = heap.pin(o.h);
  if (!pin.ok() || pin->size() != o.size) return ~0ull;
  const PatternRange r{pin->address(), std::min(bytes, o.size), o.seed};
  auto bad = heap.backend().verify_pattern({&r, 1}, Stream{});
  return bad.ok() ? *bad : ~0ull;
}

inline Obj allocate_filled(Heap& heap, std::size_t bytes, std::uint64_t seed) {
  auto h = heap.allocate(bytes);
  EXPECT_TRUE(h.ok()) << bytes << ": " << h.error().to_string();
  if (!h.ok()) return {};
  Obj o{*h, bytes, seed};
  EXPECT_TRUE(fill(heap, o).ok());
  return o;
}

// The objects one racing thread holds, at most `most` at once: keeping one more checks and frees
// one of them at random; drain() checks and frees the rest. Bytes that differ and calls that fail
// are counted for the thread to report.
struct HeldObjects {
  explicit HeldObjects(Heap& h) : heap(h) {}
  Heap& heap;
  std::size_t most = 3;
  std::vector<Obj> objects;
  std::uint64_t bad_bytes = 0, failures = 0;

  template <class Rng>
  void keep(const Obj& o, Rng& rng) {
    objects.push_back(o);
    if (objects.size() <= most) return;
    const std::size_t k = rng() % objects.size();
    check_and_free(objects[k]);
    objects.erase(objects.begin() + std::ptrdiff_t(k));
  }
  void drain() {
    for (const Obj& o : objects) check_and_free(o);
    objects.clear();
  }

 private:
  void check_and_free(const Obj& o) {
    bad_bytes += mismatches(heap, o);
    if (!heap.free(o.h).ok()) ++failures;
  }
};

#define EXPECT_HEAP_VALID(heap)                                     \
  do {                                                              \
    auto valid_ = (heap).validate();                                \
    EXPECT_TRUE(valid_.ok()) << valid_.error().to_string();         \
  } while (0)

}  // namespace valet::stress_test
