// Table-driven fault sweep: for each backend call the heap must survive failing mid-operation
// (create_page, map, set_access, copy) and each k = 1..N, where N is how many such calls a fixed
// workload makes, the k-th call fails. Whatever step that hits must fail cleanly (driver_error,
// or out_of_memory when the heap tried and gave up), leave validate() passing and every object's
// bytes intact, and after shutdown every page must be back with the backend.
// VALET_FAULT_SWEEP_STRIDE=S sweeps every S-th k only (k = 1, 1+S, ...): the sanitizer builds use
// it (.ci/sanitize), where each k costs ten times as much; the plain build sweeps every k.
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <tuple>

#include "heap_checks.h"

namespace valet::stress_test {
namespace {

// The fixed workload: allocations of every kind, frees that leave sparse slab pages, resizes of
// every kind (same class, slab to slab, slab to large, large grow/shrink/relocate, large to slab),
// compactions, and allocations up to out-of-memory (emergency compaction).
class Workload {
 public:
  explicit Workload(Heap& heap) : heap_(heap) {}

  void run() {
    for (std::size_t bytes : {std::size_t{100}, std::size_t{3000}, std::size_t{65536}, std::size_t{300000}, kMiB,
                              kMiB + 1, 3 * kMiB, 5 * kMiB})
      allocate(bytes);
    const std::size_t first_small = objs_.size();
    for (int i = 0; i < 300; ++i) allocate(20000);
    check_all("allocations");

    // Two of every three: three sparse pages of one class. Backwards, since free_at() moves the
    // last object into the freed place.
    for (std::size_t i = objs_.size(); i-- > first_small;)
      if ((i - first_small) % 3 != 0) free_at(i);
    check_all("frees");

    const std::pair<std::size_t, std::size_t> resizes[] = {
        {0, 5000},      // slab to another class (copy)
        {1, 3100},      // same class (nothing moves)
        {4, 4 * kMiB},  // slab to large (copy)
        {6, 7 * kMiB},  // large grow (map at the end, or relocate)
        {7, 2 * kMiB + 1},  // large shrink (unmap the tail)
        {5, 200000},    // large to slab (copy)
    };
    for (auto [i, bytes] : resizes) resize(i, bytes);
    check_all("resizes");

    compact(0.75);
    check_all("compaction");

    allocate(8 * kMiB);
    const std::size_t grown = objs_.size() - 1;
    for (int i = 0; i < 10; ++i)
      if (!allocate(4 * kMiB)) break;  // out of memory, after an emergency compaction
    check_all("filling up");

    if (grown < objs_.size() && objs_[grown].size == 8 * kMiB) resize(grown, 16 * kMiB);
    for (std::size_t i = objs_.size(); i-- > 0;)
      if (i % 2 == 0 && objs_[i].size >= kMiB) free_at(i);
    compact(0.95);
    allocate(6 * kMiB);
    check_all("the end");
  }

  std::vector<Obj>& objects() { return objs_; }
  // Steps that failed with driver_error, by name (the fault's visible trace).
  const std::map<std::string, int>& surfaced() const { return surfaced_; }

 private:
  bool clean(Errc code, const std::string& what) {
    if (code == Errc::out_of_memory) return true;
    if (code == Errc::driver_error) {
      ++surfaced_[what];
      return true;
    }
    ADD_FAILURE() << what << " failed with " << errc_name(code) << " (expected driver_error or out_of_memory)";
    return false;
  }

  bool allocate(std::size_t bytes) {
    auto h = heap_.allocate(bytes);
    if (!h.ok()) {
      clean(h.code(), "allocate " + std::to_string(bytes));
      return false;
    }
    objs_.push_back({*h, bytes, ++seed_});
    EXPECT_TRUE(fill(heap_, objs_.back()).ok());
    return true;
  }

  void free_at(std::size_t i) {
    EXPECT_EQ(mismatches(heap_, objs_[i]), 0u);
    EXPECT_TRUE(heap_.free(objs_[i].h).ok());
    objs_[i] = objs_.back();
    objs_.pop_back();
  }

  void resize(std::size_t i, std::size_t bytes) {
    Obj& o = objs_[i];
    auto st = heap_.resize(o.h, bytes);
    if (!st.ok()) {
      clean(st.code(), "resize " + std::to_string(o.size) + " -> " + std::to_string(bytes));
      EXPECT_EQ(*heap_.size_of(o.h), o.size) << "a failed resize changed the size";
      EXPECT_EQ(mismatches(heap_, o), 0u) << "a failed resize changed the contents";
      return;
    }
    const Obj kept{o.h, bytes, o.seed};
    EXPECT_EQ(mismatches(heap_, kept, std::min(o.size, bytes)), 0u) << "resize " << o.size << " -> " << bytes;
    o.size = bytes;
    o.seed = ++seed_;
    EXPECT_TRUE(fill(heap_, o).ok());
  }

  void compact(double max_occupancy) {
    CompactRequest req;
    req.max_occupancy = max_occupancy;
    auto rec = heap_.compact(req);
    if (!rec.ok()) clean(rec.code(), "compact");
  }

  void check_all(const char* phase) {
    auto valid = heap_.validate();
    EXPECT_TRUE(valid.ok()) << "after " << phase << ": " << valid.error().to_string();
    std::size_t bad = 0;
    for (const Obj& o : objs_) bad += mismatches(heap_, o) != 0;
    EXPECT_EQ(bad, 0u) << "objects changed by " << phase;
  }

  Heap& heap_;
  std::vector<Obj> objs_;
  std::uint64_t seed_ = 1000;
  std::map<std::string, int> surfaced_;
};

// `mapper`: Config::background_misses (the default). Off, every miss is placed on the workload's
// thread and the k-th call is the same on every run; on, the mapper's calls interleave with the
// workload's, and a failure there must be tried again (the allocation returned already).
Config sweep_config(bool mapper) {
  Config c = small_host_config(48 * kMiB);
  c.background_misses = mapper;
  return c;
}

// Runs the workload with the k-th call of `op` failing (k = 0: no fault); returns calls of `op`.
std::uint64_t run_with_fault(FaultOp op, bool mapper, std::uint64_t k, std::map<std::string, int>& surfaced) {
  HostHeap hh = make_host_heap(sweep_config(mapper), true);
  if (!hh.heap) return 0;
  // Heap::create made calls of its own (the first reserve): count from here, as fail_nth does.
  const std::uint64_t calls_before = hh.faults->calls(op);
  if (k) hh.faults->fail_nth(op, k);
  Workload w(*hh.heap);
  w.run();
  const std::uint64_t calls = hh.faults->calls(op) - calls_before;
  if (k) {
    EXPECT_EQ(hh.faults->faults(op), 1u) << "the fault at call " << k << " never fired";
  }
  hh.faults->disarm_all();
  for (const Obj& o : w.objects()) {
    EXPECT_EQ(mismatches(*hh.heap, o), 0u);
    EXPECT_TRUE(hh.heap->free(o.h).ok());
  }
  EXPECT_HEAP_VALID(*hh.heap);
  EXPECT_TRUE(hh.heap->shutdown().ok());
  EXPECT_EQ(hh.host->pages_in_use(), 0u) << "pages leaked";
  for (auto& [step, n] : w.surfaced()) surfaced[step] += n;
  return calls;
}

// VALET_FAULT_SWEEP_STRIDE, or 1.
std::uint64_t sweep_stride() {
  const char* v = std::getenv("VALET_FAULT_SWEEP_STRIDE");
  const long s = v ? std::strtol(v, nullptr, 10) : 1;
  return s > 1 ? std::uint64_t(s) : 1;
}

class FaultSweep : public ::testing::TestWithParam<std::tuple<FaultOp, bool>> {};

TEST_P(FaultSweep, EveryKthCallFailsCleanlyAndLosesNothing) {
  const auto [op, mapper] = GetParam();
  std::map<std::string, int> surfaced;
  const std::uint64_t calls = run_with_fault(op, mapper, 0, surfaced);
  ASSERT_GT(calls, 0u) << "the workload never calls " << fault_op_name(op);
  EXPECT_TRUE(surfaced.empty()) << "driver errors without any fault injected";
  const std::uint64_t stride = sweep_stride();
  for (std::uint64_t k = 1; k <= calls; k += stride) {
    SCOPED_TRACE(std::string(fault_op_name(op)) + " fails at call " + std::to_string(k) + " of " +
                 std::to_string(calls));
    run_with_fault(op, mapper, k, surfaced);
    if (HasFailure()) break;  // one broken k says enough; the trace names it
  }
  int total = 0;
  for (auto& [step, n] : surfaced) total += n;
  std::cout << "[ fault    ] " << fault_op_name(op) << (mapper ? " (mapper)" : "") << ": " << calls << " calls swept";
  if (stride > 1) std::cout << " (one k in " << stride << ")";
  std::cout << ", " << total
            << " faults surfaced as driver_error";
  for (auto& [step, n] : surfaced) std::cout << "; " << step << " x" << n;
  std::cout << "\n";
}

INSTANTIATE_TEST_SUITE_P(Ops, FaultSweep,
                         ::testing::Combine(::testing::Values(FaultOp::create_page, FaultOp::map, FaultOp::set_access,
                                                              FaultOp::copy),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(fault_op_name(std::get<0>(info.param))) +
                                  (std::get<1>(info.param) ? "_mapper" : "_caller");
                         });

}  // namespace
}  // namespace valet::stress_test
