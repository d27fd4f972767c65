// Background misses (Config::background_misses, heap/src/miss_mapper.h): a large allocation that
// finds no mapped run returns at once; the heap's mapper thread makes its driver calls. Each test
// holds the mapper's calls at a gate (or fails them) and checks what the caller and other threads
// see meanwhile: no call on the allocating thread, pins that wait for the mapping and then read
// the bytes written, frees that do not wait, validate() at every step.
#include <atomic>
#include <chrono>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "../support/test_scale.h"
#include "gated_backend.h"
#include "heap_core.h"
#include "heap_test_util.h"

namespace valet {
namespace {

using namespace std::chrono_literals;
using test::GatedHeap;
using test::kMiB;

constexpr std::size_t kBig = 60 * kMiB;  // 30 pages: more than the reserve holds

Config background_config() {
  Config c = test::host_config();
  c.background_misses = true;
  return c;
}

// The address the allocation handed out (the entry's, set under the heap lock before it returned).
DevicePtr address_at_allocation(Heap& heap, Handle h) {
  return detail::HeapInternals::of(heap).handles.get(h.index)->address.load();
}

// Stops the mapper thread's calls of the gated kind (other threads' go through).
void gate_mapper(GatedHeap& g) { g.gate->arm_for(detail::HeapInternals::of(*g.heap).misses.thread_id()); }

// Gates the mapper's calls and allocates kBig: a pending object whose mapping the mapper holds at
// the gate (an error if the mapper never reached it).
Result<Handle> allocate_held(GatedHeap& g) {
  gate_mapper(g);
  auto h = g.heap->allocate(kBig);
  if (h.ok() && !g.gate->wait_entered()) return make_error(Errc::internal, "the mapper made no gated call");
  return h;
}

// Waits until the mapper settled `n` objects (mapped or lost) in all.
bool settled(Heap& heap, std::uint64_t n) {
  for (int i = 0; i < 10'000; ++i) {
    const auto s = heap.stats();
    if (s.ops.background_misses + s.ops.lost_allocations >= n) return true;
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

// A heap of 512 pages with background misses and chunks (the keeper's thread on), for tests of
// what frees leave to the keeper and the mapper.
Config chunked_background_config() {
  Config c;
  c.capacity = 1u << 30;
  c.background_misses = true;
  c.chunk_min_pages = 16;
  return c;
}

// `objects` whole 4-page objects, each pinned once, so that none is pending afterwards.
std::vector<Handle> allocate_mapped(Heap& heap, int objects) {
  std::vector<Handle> live;
  for (int i = 0; i < objects; ++i) live.push_back(*heap.allocate(4 * detail::kPageSize));
  for (Handle x : live) EXPECT_TRUE(heap.pin(x).ok());
  return live;
}

// An allocation and the driver calls the allocating thread made for it.
struct CountedAllocation {
  Result<Handle> handle;
  std::uint64_t calls;
};
CountedAllocation allocate_counting_calls(Heap& heap, std::size_t bytes) {
  ThreadDriverCalls scope(heap.driver_calls());
  auto h = heap.allocate(bytes);
  return {std::move(h), scope.made().total()};
}

TEST(BackgroundMisses, AMissReturnsWithoutADriverCallAndItsFirstPinWaitsForTheMapping) {
  GatedHeap g(background_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  // A small object first, with a slab page (which the mapper may have placed: its pin waits).
  auto small = heap.allocate(100'000);
  ASSERT_TRUE(small.ok());
  test::fill(heap, *small, 3);
  const std::uint64_t settled_before = heap.stats().ops.background_misses;
  gate_mapper(g);
  const std::uint64_t misses_before = Heap::this_thread_background_misses();
  auto [big, calls] = allocate_counting_calls(heap, kBig);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  EXPECT_EQ(calls, 0u) << "the allocating thread made driver calls";
  EXPECT_EQ(Heap::this_thread_background_misses(), misses_before + 1) << "the thread's count of its misses";
  ASSERT_TRUE(g.gate->wait_entered()) << "the mapper made no map";
  const DevicePtr handed_out = address_at_allocation(heap, *big);
  EXPECT_VALID(heap);  // a pending object: its run is a batch in flight
  EXPECT_EQ(heap.stats().ops.background_misses, settled_before);
  EXPECT_EQ(heap.stats().live_bytes, kBig + 100'000);
  // Other allocations and frees go on meanwhile (one on the small object's slab page: not a
  // miss); a pin of the pending object waits.
  auto other = heap.allocate(100'000);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(Heap::this_thread_background_misses(), misses_before + 1) << "a slab object with room counted as a miss";
  test::fill(heap, *other, 4);
  EXPECT_TRUE(heap.free(*other).ok());
  auto pinning = std::async(std::launch::async, [&] {
    auto pin = heap.pin(*big);
    return pin.ok() ? pin->address() : DevicePtr{0};
  });
  EXPECT_EQ(pinning.wait_for(50ms), std::future_status::timeout) << "a pin did not wait for the mapping";
  g.gate->open();
  EXPECT_EQ(pinning.get(), handed_out) << "the object is not where its allocation said";
  test::fill(heap, *big, 9);
  EXPECT_EQ(test::mismatches(heap, *big, 9), 0u);
  EXPECT_EQ(test::mismatches(heap, *small, 3), 0u);
  EXPECT_EQ(heap.stats().ops.background_misses, settled_before + 1);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*big).ok());
  EXPECT_TRUE(heap.free(*small).ok());
  EXPECT_VALID(heap);
}

TEST(BackgroundMisses, FreesOfPendingObjectsReturnAtOnceAndTheirRunsComeBack) {
  GatedHeap g(background_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  const auto before = heap.stats();
  auto in_hand = allocate_held(g);  // the mapper takes it and stops at its first map
  ASSERT_TRUE(in_hand.ok()) << in_hand.error().to_string();
  auto queued = heap.allocate(kBig);  // queued behind it
  ASSERT_TRUE(queued.ok());
  EXPECT_VALID(heap);
  // The queued one is given up before its calls; the one in hand is released by the mapper.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(heap.free(*queued).ok());
  EXPECT_TRUE(heap.free(*in_hand).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "a free waited for the mapper";
  EXPECT_EQ(heap.free(*in_hand).code(), Errc::stale_handle) << "a double free of a pending object";
  EXPECT_EQ(heap.pin(*queued).code(), Errc::stale_handle);
  EXPECT_EQ(heap.stats().live_bytes, 0u);
  EXPECT_VALID(heap);  // the freed object's entry and run are still the mapper's
  g.gate->open();
  ASSERT_TRUE(settled(heap, 1));
  const auto after = heap.stats();
  EXPECT_EQ(after.pages.large, before.pages.large) << "a freed pending object's run is still held";
  EXPECT_EQ(after.ops.background_misses, 1u) << "the queued object's calls were made";
  EXPECT_VALID(heap);
  auto again = heap.allocate(kBig);
  ASSERT_TRUE(again.ok());
  test::fill(heap, *again, 4);
  EXPECT_EQ(test::mismatches(heap, *again, 4), 0u);
  EXPECT_VALID(heap);
}

// Config::pins_serve_misses: a pin of an object whose miss is still queued (the mapper held at the
// gate on another) makes the miss's calls on the pinning thread and returns without waiting for the
// mapper, its bytes in place. Off, the same pin waits for the mapper.
TEST(BackgroundMisses, APinOfAQueuedMissMakesItsCallsItselfAndNeedsNoMapper) {
  for (const bool serve : {true, false}) {
    SCOPED_TRACE(serve ? "pins serve" : "pins wait");
    Config c = background_config();
    c.pins_serve_misses = serve;
    GatedHeap g(c);
    ASSERT_TRUE(g.heap);
    Heap& heap = *g.heap;
    auto in_hand = allocate_held(g);  // the mapper takes it and stops at its first map
    ASSERT_TRUE(in_hand.ok()) << in_hand.error().to_string();
    auto queued = heap.allocate(kBig);  // queued behind it
    ASSERT_TRUE(queued.ok());
    EXPECT_VALID(heap);
    auto pinning = std::async(std::launch::async, [&] {
      auto p = heap.pin(*queued);
      return p.ok() ? p->address() : DevicePtr{0};
    });
    if (serve) {
      ASSERT_EQ(pinning.wait_for(5s), std::future_status::ready) << "the pin waited for the mapper";
      EXPECT_NE(pinning.get(), DevicePtr{0}) << "the pin failed";
      EXPECT_EQ(heap.stats().ops.misses_served_by_pins, 1u);
      EXPECT_VALID(heap);  // the mapper still holds the other one at the gate
      test::fill(heap, *queued, 5);
      g.gate->open();
    } else {
      EXPECT_EQ(pinning.wait_for(50ms), std::future_status::timeout) << "a pin did not wait for the mapping";
      g.gate->open();
      EXPECT_NE(pinning.get(), DevicePtr{0}) << "the pin failed";
      EXPECT_EQ(heap.stats().ops.misses_served_by_pins, 0u);
      test::fill(heap, *queued, 5);
    }
    ASSERT_TRUE(settled(heap, 2));
    EXPECT_EQ(test::mismatches(heap, *queued, 5), 0u);
    test::fill(heap, *in_hand, 6);
    EXPECT_EQ(test::mismatches(heap, *in_hand, 6), 0u);
    EXPECT_VALID(heap);
    EXPECT_TRUE(heap.free(*queued).ok());
    EXPECT_TRUE(heap.free(*in_hand).ok());
    EXPECT_VALID(heap);
  }
}

// A pin serving a queued miss whose object is freed meanwhile (the pinning thread's calls held at
// the gate beside the mapper's): the free returns at once, the pin fails with a stale handle, and
// the run comes back and is trimmed.
TEST(BackgroundMisses, AnObjectFreedWhileAPinServesItsMissGoesBackWhole) {
  Config c = background_config();
  c.pins_serve_misses = true;
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  const auto before = heap.stats();
  auto in_hand = allocate_held(g);
  ASSERT_TRUE(in_hand.ok()) << in_hand.error().to_string();
  auto queued = heap.allocate(kBig);
  ASSERT_TRUE(queued.ok());
  std::promise<std::thread::id> pinner_id;
  std::atomic<bool> gated{false};
  auto pinning = std::async(std::launch::async, [&] {
    pinner_id.set_value(std::this_thread::get_id());
    while (!gated.load()) std::this_thread::yield();
    return heap.pin(*queued).code();
  });
  g.gate->also_for(pinner_id.get_future().get());
  gated = true;
  ASSERT_TRUE(g.gate->wait_held(2)) << "the pin made no call of the queued miss";
  EXPECT_TRUE(heap.free(*queued).ok());  // at once: the miss is in the pinning thread's hand
  EXPECT_EQ(heap.stats().live_bytes, kBig);
  EXPECT_VALID(heap);
  g.gate->open();
  EXPECT_EQ(pinning.get(), Errc::stale_handle);
  EXPECT_TRUE(heap.pin(*in_hand).ok());  // waits for the mapper's (unpinned at once)
  EXPECT_EQ(heap.stats().ops.misses_served_by_pins, 1u);
  EXPECT_VALID(heap);
  // The run the freed object returned (no ordinary demand: half the pages in use) is trimmed by
  // the mapper in a turn of its own, not left until a later miss (which would create its pages
  // beside it).
  bool trimmed = false;
  for (int i = 0; i < 2000 && !trimmed; ++i) {
    trimmed = heap.stats().pages.reserve <= before.pages.reserve;
    if (!trimmed) std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(trimmed) << "the freed object's run waits in the reserve (" << heap.stats().pages.reserve << " pages)";
  EXPECT_TRUE(heap.free(*in_hand).ok());
  EXPECT_TRUE(heap.maintain().ok());
  EXPECT_VALID(heap);
  EXPECT_EQ(heap.stats().live_bytes, 0u);
  EXPECT_LE(heap.stats().pages.large, before.pages.large) << "a freed pending object's run is still held";
}

// Where the allocating thread places the miss (Config::mapper_places_misses off, or no pages to
// promise), its address is out before the calls: a retry keeps it.
TEST(BackgroundMisses, AFailedCallIsRetriedAtTheSameAddress) {
  Config c = background_config();
  c.mapper_places_misses = false;
  auto f = test::make_faultable_heap(c);
  ASSERT_TRUE(f.heap);
  Heap& heap = *f.heap;
  f.faults->fail_nth(FaultOp::set_access, 1);
  auto big = heap.allocate(kBig);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  const DevicePtr handed_out = address_at_allocation(heap, *big);
  auto pin = heap.pin(*big);
  ASSERT_TRUE(pin.ok()) << pin.error().to_string();
  EXPECT_EQ(pin->address(), handed_out);
  EXPECT_EQ(f.faults->faults(FaultOp::set_access), 1u);
  pin = make_error(Errc::internal, "released");
  test::fill(heap, *big, 11);
  EXPECT_EQ(test::mismatches(heap, *big, 11), 0u);
  const auto s = heap.stats();
  EXPECT_EQ(s.ops.background_misses, 1u);
  EXPECT_EQ(s.ops.lost_allocations, 0u);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*big).ok());
  EXPECT_VALID(heap);
}

// The mapper places a miss (Config::mapper_places_misses): queued behind another, the object has
// no address and no slot, only its promised pages; a free gives the promise back; placed, it is
// where its first pin says, and its bytes hold.
TEST(BackgroundMisses, AQueuedMissHasNoAddressOnlyPromisedPagesUntilTheMapperPlacesIt) {
  GatedHeap g(background_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto& core = detail::HeapInternals::of(heap);
  auto promised = [&] {
    std::lock_guard lock(core.mu);
    return core.pool.promised_pages();
  };
  const std::size_t pages = kBig / detail::kPageSize;
  auto in_hand = allocate_held(g);  // placed, the mapper stopped at its first call
  ASSERT_TRUE(in_hand.ok()) << in_hand.error().to_string();
  EXPECT_NE(address_at_allocation(heap, *in_hand), DevicePtr{0});
  EXPECT_EQ(promised(), 0u);
  auto dropped = heap.allocate(kBig);
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(address_at_allocation(heap, *dropped), DevicePtr{0});
  EXPECT_EQ(promised(), pages);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*dropped).ok());
  EXPECT_EQ(promised(), 0u) << "a freed queued miss kept its promise";
  EXPECT_VALID(heap);
  auto queued = heap.allocate(kBig);
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(promised(), pages);
  EXPECT_VALID(heap);
  g.gate->open();
  auto pin = heap.pin(*queued);
  ASSERT_TRUE(pin.ok()) << pin.error().to_string();
  EXPECT_NE(pin->address(), DevicePtr{0});
  EXPECT_EQ(pin->address(), address_at_allocation(heap, *queued));
  pin = make_error(Errc::internal, "released");
  test::fill(heap, *queued, 5);
  test::fill(heap, *in_hand, 6);
  EXPECT_EQ(test::mismatches(heap, *queued, 5), 0u);
  EXPECT_EQ(test::mismatches(heap, *in_hand, 6), 0u);
  const auto s = heap.stats();
  EXPECT_EQ(s.ops.misses_placed_by_mapper, 2u);
  EXPECT_EQ(s.ops.background_misses, 2u);
  EXPECT_EQ(promised(), 0u);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*queued).ok());
  EXPECT_TRUE(heap.free(*in_hand).ok());
  EXPECT_VALID(heap);
}

// With the placement left to the allocating thread, the mapper only makes the calls.
TEST(BackgroundMisses, WithTheCallerPlacingMissesTheAddressIsOutAtOnce) {
  Config c = background_config();
  c.mapper_places_misses = false;
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto in_hand = allocate_held(g);
  ASSERT_TRUE(in_hand.ok()) << in_hand.error().to_string();
  auto queued = heap.allocate(kBig);
  ASSERT_TRUE(queued.ok());
  const DevicePtr handed_out = address_at_allocation(heap, *queued);
  EXPECT_NE(handed_out, DevicePtr{0});
  EXPECT_VALID(heap);
  g.gate->open();
  auto pin = heap.pin(*queued);
  ASSERT_TRUE(pin.ok()) << pin.error().to_string();
  EXPECT_EQ(pin->address(), handed_out);
  pin = make_error(Errc::internal, "released");
  EXPECT_EQ(heap.stats().ops.misses_placed_by_mapper, 0u);
  EXPECT_TRUE(heap.free(*queued).ok());
  EXPECT_TRUE(heap.free(*in_hand).ok());
  EXPECT_VALID(heap);
}

// A queued miss's promised pages are not created by the allocations after it: with the mapper
// held, another thread allocates 4 MiB objects until out-of-memory; the queued object is then
// placed on its promised pages (not lost) and the heap never held more than its capacity.
TEST(BackgroundMisses, AllocationsAfterAQueuedMissLeaveItsPromisedPages) {
  Config c = background_config();
  c.capacity = 128 * kMiB;  // 64 pages: the two misses take 60
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto in_hand = allocate_held(g);
  ASSERT_TRUE(in_hand.ok()) << in_hand.error().to_string();
  auto queued = heap.allocate(kBig);
  ASSERT_TRUE(queued.ok()) << queued.error().to_string();
  ASSERT_EQ(address_at_allocation(heap, *queued), DevicePtr{0}) << "the mapper was to place it";
  // Past the pending bound these place on their own thread; out-of-memory waits for the held
  // batch (make_room), so the gate opens meanwhile.
  auto filling = std::async(std::launch::async, [&] {
    std::vector<Handle> got;
    for (int i = 0; i < 32; ++i) {
      auto h = heap.allocate(4 * kMiB);
      if (!h.ok()) {
        EXPECT_EQ(h.code(), Errc::out_of_memory) << h.error().to_string();
        break;
      }
      got.push_back(*h);
    }
    return got;
  });
  std::this_thread::sleep_for(100ms);
  g.gate->open();
  const std::vector<Handle> got = filling.get();
  EXPECT_LT(got.size(), 32u) << "the capacity was never reached";
  auto pin = heap.pin(*queued);
  ASSERT_TRUE(pin.ok()) << pin.error().to_string() << " (its promised pages were taken)";
  pin = make_error(Errc::internal, "released");
  test::fill(heap, *queued, 8);
  EXPECT_EQ(test::mismatches(heap, *queued, 8), 0u);
  const auto s = heap.stats();
  EXPECT_EQ(s.ops.lost_allocations, 0u);
  EXPECT_LE(s.mapped_bytes, c.capacity);
  EXPECT_VALID(heap);
  for (Handle h : got) EXPECT_TRUE(heap.free(h).ok());
  EXPECT_TRUE(heap.free(*queued).ok());
  EXPECT_TRUE(heap.free(*in_hand).ok());
  EXPECT_VALID(heap);
}

// Threads allocating large objects near the capacity, with the keeper's thread creating and
// trimming: the promises keep every miss the mapper places backed (none is lost), allocations
// past the capacity fail with out_of_memory only, every byte holds, and nothing stays promised.
TEST(BackgroundMisses, ThreadsNearTheCapacityLoseNoMissTheMapperPlaces) {
  Config c = background_config();
  c.capacity = 96 * kMiB;  // 48 pages for four threads holding up to three objects of 1-8 pages
  c.background_reserve = true;
  auto made = Heap::create(test::open_host_backend(c.capacity), c);
  ASSERT_TRUE(made.ok()) << made.error().to_string();
  Heap& heap = **made;
  std::atomic<std::uint64_t> failures{0}, bad_bytes{0}, out_of_memory{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(31 + t);
      std::vector<std::pair<Handle, std::uint64_t>> held;
      for (int i = 0; i < test::scaled_ops(120); ++i) {
        const std::size_t bytes = (1 + rng() % 8) * detail::kPageSize - 4096 * (rng() % 3);
        auto h = heap.allocate(bytes);
        if (!h.ok()) {
          (h.code() == Errc::out_of_memory ? out_of_memory : failures) += 1;
        } else {
          const std::uint64_t seed = rng();
          test::fill(heap, *h, seed);  // its first pin waits for the mapper
          held.emplace_back(*h, seed);
        }
        if (held.size() > 2 || (!h.ok() && !held.empty())) {
          const std::size_t k = rng() % held.size();
          bad_bytes += test::mismatches(heap, held[k].first, held[k].second);
          if (!heap.free(held[k].first).ok()) ++failures;
          held.erase(held.begin() + std::ptrdiff_t(k));
        }
      }
      for (const auto& [h, seed] : held) {
        bad_bytes += test::mismatches(heap, h, seed);
        if (!heap.free(h).ok()) ++failures;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_EQ(bad_bytes.load(), 0u);
  const auto s = heap.stats();
  EXPECT_EQ(s.ops.lost_allocations, 0u) << "a promised miss found no pages";
  if (test::test_scale() == 1) {  // the run in full: both ways of placing, and the capacity reached
    EXPECT_GT(s.ops.misses_placed_by_mapper, 0u);
    EXPECT_GT(s.ops.background_misses, s.ops.misses_placed_by_mapper) << "no promise was refused";
    EXPECT_GT(out_of_memory.load(), 0u) << "the capacity was never reached";
  }
  EXPECT_EQ(s.live_objects, 0u);
  {
    auto& core = detail::HeapInternals::of(heap);
    std::lock_guard lock(core.mu);
    EXPECT_EQ(core.pool.promised_pages(), 0u);
  }
  EXPECT_VALID(heap);
}

TEST(BackgroundMisses, AnObjectWhoseCallsKeepFailingIsLostAndTheHeapStaysWhole) {
  auto f = test::make_faultable_heap(background_config());
  ASSERT_TRUE(f.heap);
  Heap& heap = *f.heap;
  auto kept = heap.allocate(100'000);
  ASSERT_TRUE(kept.ok());
  test::fill(heap, *kept, 2);
  const auto before = heap.stats();
  f.faults->fail_randomly(FaultOp::map, 1.0, 1);
  auto big = heap.allocate(kBig);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  ASSERT_TRUE(settled(heap, 1));
  f.faults->disarm_all();
  EXPECT_EQ(heap.pin(*big).code(), Errc::stale_handle) << "a lost object's handle must read an error";
  EXPECT_EQ(heap.free(*big).code(), Errc::stale_handle);
  const auto s = heap.stats();
  EXPECT_EQ(s.ops.lost_allocations, 1u);
  EXPECT_EQ(s.live_bytes, before.live_bytes);
  EXPECT_EQ(s.pages.large, before.pages.large);
  EXPECT_VALID(heap);
  auto again = heap.allocate(kBig);
  ASSERT_TRUE(again.ok());
  test::fill(heap, *again, 6);
  EXPECT_EQ(test::mismatches(heap, *again, 6), 0u);
  EXPECT_EQ(test::mismatches(heap, *kept, 2), 0u);
  EXPECT_VALID(heap);
}

// 40 objects of 64 KiB: the second slab page's free low span fits the last 512 KiB of kTailed
// (as place_batch_test's shared tail at allocation).
constexpr std::size_t kSmall = 64 * 1024, kTailed = 10 * kMiB + 512 * 1024;

// No reserve (the large object misses) and no thread cache (frees reach their slab pages).
Config tailed_config() {
  Config c = test::uncached(background_config());
  c.reserve_low_pages = 0;
  c.reserve_high_pages = 0;
  return c;
}

// `n` objects of kSmall, each filled with its own seed (empty where an allocation failed).
std::vector<Handle> filled_small(Heap& heap, int n) {
  std::vector<Handle> small;
  for (int i = 0; i < n; ++i) {
    auto h = heap.allocate(kSmall);
    EXPECT_TRUE(h.ok());
    if (!h.ok()) return {};
    test::fill(heap, *h, test::seed_of(*h));
    small.push_back(*h);
  }
  return small;
}

TEST(BackgroundMisses, ASharedTailsBodyAndAliasAreMappedByTheMapper) {
  GatedHeap g(tailed_config(), DriverOp::set_access);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  std::vector<Handle> small = filled_small(heap, 40);
  ASSERT_EQ(small.size(), 40u);
  gate_mapper(g);
  auto [big, calls] = allocate_counting_calls(heap, kTailed);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  EXPECT_EQ(calls, 0u);
  ASSERT_TRUE(g.gate->wait_entered());  // the body's access grant
  EXPECT_VALID(heap);
  // The slab page the tail will go on is still in use meanwhile: frees and allocations go on.
  EXPECT_TRUE(heap.free(small.back()).ok());
  small.pop_back();
  EXPECT_VALID(heap);
  g.gate->open();
  test::fill(heap, *big, 5);  // its pin waits for both steps
  EXPECT_EQ(heap.stats().pages.shared_tails, 1u) << "the large object's last page is no slab page's";
  EXPECT_EQ(test::mismatches(heap, *big, 5), 0u);
  for (Handle h : small) EXPECT_EQ(test::mismatches(heap, h, test::seed_of(h)), 0u);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*big).ok());
  for (Handle h : small) EXPECT_EQ(test::mismatches(heap, h, test::seed_of(h)), 0u);
  EXPECT_VALID(heap);
}

std::size_t creatable_pages(Heap& heap) {
  auto& core = detail::HeapInternals::of(heap);
  std::lock_guard lock(core.mu);
  return core.pool.creatable_pages();
}

std::size_t last_page_promises(Heap& heap) {
  auto& core = detail::HeapInternals::of(heap);
  std::lock_guard lock(core.mu);
  return core.last_page_promises;
}

// Objects of one or two pages, pending behind a gated miss, until no page can be created (up to
// the capacity, not past it: an allocation past it waits for the gated mapper).
std::vector<Handle> take_the_rest_of_the_capacity(Heap& heap) {
  std::vector<Handle> others;
  for (std::size_t n = creatable_pages(heap); n > 0 && others.size() < 64; n = creatable_pages(heap)) {
    auto h = heap.allocate(std::min<std::size_t>(n, 2) * detail::kPageSize);
    EXPECT_TRUE(h.ok()) << h.error().to_string();
    if (!h.ok()) break;
    others.push_back(*h);
  }
  return others;
}

// Once the gate is open: `big` is usable and whole, nothing was lost, every other object is
// usable and the small ones hold their bytes; then all of them are freed.
void check_nothing_lost_and_free(Heap& heap, Handle big, const std::vector<Handle>& others,
                                 const std::vector<Handle>& small) {
  test::fill(heap, big, 5);  // its pin waits for the mapper's steps
  EXPECT_EQ(test::mismatches(heap, big, 5), 0u);
  EXPECT_EQ(heap.stats().ops.lost_allocations, 0u) << "an allocation that returned a handle was lost";
  EXPECT_EQ(last_page_promises(heap), 0u);
  for (Handle h : others) EXPECT_TRUE(heap.pin(h).ok());
  for (Handle h : small) EXPECT_EQ(test::mismatches(heap, h, test::seed_of(h)), 0u);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(big).ok());
  for (Handle h : others) EXPECT_TRUE(heap.free(h).ok());
  for (Handle h : small) EXPECT_TRUE(heap.free(h).ok());
  EXPECT_VALID(heap);
}

// A shared tail's body is mapped first and its slab page chosen after: should the page fill up
// meanwhile, the last slot needs a page of its own, and the capacity may be spoken for by then.
// The body holds a page promised for it, so the object is never lost: other allocations meet
// out_of_memory one page earlier instead.
TEST(BackgroundMisses, ABodysLastPageIsPromisedSoItsSlabPageFillingUpAtTheCapacityLosesNothing) {
  Config c = tailed_config();
  c.capacity = 64 * kMiB;  // 32 pages
  GatedHeap g(c, DriverOp::set_access);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  std::vector<Handle> small = filled_small(heap, 40);
  ASSERT_EQ(small.size(), 40u);
  const auto slab_pages = heap.stats().pages.slab;
  gate_mapper(g);
  auto big = heap.allocate(kTailed);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  ASSERT_TRUE(g.gate->wait_entered());  // the body's access grant
  ASSERT_EQ(last_page_promises(heap), 1u) << "the object is not a shared tail's body in flight";
  EXPECT_VALID(heap);
  // The slab page that would take the tail fills up, until a small object needs a new slab
  // page (pending behind the body: not filled here, its pin would wait), and the rest of the
  // capacity goes to other objects, pending too.
  std::vector<Handle> others;
  for (int i = 0; i < 200 && others.empty(); ++i) {
    const std::uint64_t misses_before = Heap::this_thread_background_misses();
    auto h = heap.allocate(kSmall);
    ASSERT_TRUE(h.ok());
    if (Heap::this_thread_background_misses() != misses_before) {
      others.push_back(*h);
    } else {
      test::fill(heap, *h, test::seed_of(*h));
      small.push_back(*h);
    }
  }
  ASSERT_EQ(others.size(), 1u) << "the slab pages never filled up";
  EXPECT_EQ(heap.stats().pages.slab, slab_pages);
  for (Handle h : take_the_rest_of_the_capacity(heap)) others.push_back(h);
  EXPECT_GT(others.size(), 1u);
  EXPECT_EQ(creatable_pages(heap), 0u);
  EXPECT_VALID(heap);
  g.gate->open();
  check_nothing_lost_and_free(heap, *big, others, small);
}

// The same promise holds through the alias step: an alias whose call fails begins the whole run
// again, its last slot on a page of its own, and meanwhile the capacity may be spoken for.
TEST(BackgroundMisses, AFailedAliasOfABodyAtTheCapacityBeginsTheRunAgainAndLosesNothing) {
  Config c = tailed_config();
  c.capacity = 64 * kMiB;  // 32 pages
  GatedHeap g(c, DriverOp::set_access);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  std::vector<Handle> small = filled_small(heap, 40);
  ASSERT_EQ(small.size(), 40u);
  // The body's access grant goes through; the alias's stops at the gate.
  g.gate->arm_for(detail::HeapInternals::of(heap).misses.thread_id(), /*pass=*/1);
  auto big = heap.allocate(kTailed);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  ASSERT_TRUE(g.gate->wait_entered());
  ASSERT_EQ(last_page_promises(heap), 1u) << "the object is not a shared tail's alias in flight";
  // The rest of the capacity goes to other objects, pending behind it.
  const std::vector<Handle> others = take_the_rest_of_the_capacity(heap);
  EXPECT_EQ(creatable_pages(heap), 0u);
  EXPECT_VALID(heap);
  g.gate->open_failing();  // the alias fails: the run is begun again
  check_nothing_lost_and_free(heap, *big, others, small);
}

// A pending object's pages are its own from the allocation on: used pages (the keeper's budget
// is measured against them) and large pages in stats(), not reserve pages.
TEST(BackgroundMisses, APendingObjectsPagesCountAsItsOwnNotAsTheReserves) {
  Config c = background_config();
  c.reserve_low_pages = 0;
  c.reserve_high_pages = 0;
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto big = allocate_held(g);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  const std::size_t pages = kBig / detail::kPageSize;
  auto s = heap.stats();
  EXPECT_EQ(s.pages.large, pages);
  EXPECT_EQ(s.pages.reserve, 0u);
  EXPECT_EQ(s.reserve_bytes, 0u);
  EXPECT_GE(s.mapped_bytes, s.live_bytes);
  EXPECT_EQ(detail::HeapInternals::of(heap).pool.used_pages(), pages);
  g.gate->open();
  ASSERT_TRUE(settled(heap, 1));
  s = heap.stats();
  EXPECT_EQ(s.pages.large, pages);
  EXPECT_EQ(detail::HeapInternals::of(heap).pool.used_pages(), pages);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*big).ok());
}

// A pending object of no ordinary demand (a probe's size) freed while the mapper holds it: the
// mapper releases its run and trims what lies beyond the peak bound, as the free would have
// (the keeper, paused here, is not needed for it); the freeing thread makes no call.
TEST(BackgroundMisses, AFreedPendingProbeIsTrimmedByTheMapperNotLeftToTheKeeper) {
  Config c = chunked_background_config();
  c.reserve_peak_ratio = 1.0;
  GatedHeap g(c);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto& core = detail::HeapInternals::of(heap);
  const std::vector<Handle> live = allocate_mapped(heap, 50);  // ~200 pages, none pending at the gate
  gate_mapper(g);
  auto probe = heap.allocate(120 * detail::kPageSize);  // more than an eighth of the pages in use
  ASSERT_TRUE(probe.ok()) << probe.error().to_string();
  ASSERT_TRUE(g.gate->wait_entered()) << "the mapper made no gated call";
  {
    ThreadDriverCalls scope(heap.driver_calls());
    ASSERT_TRUE(heap.free(*probe).ok());
    const DriverCallCounts made = scope.made();
    EXPECT_EQ(made.total(), 0u) << "the free of a pending object made driver calls (unmap " << made[DriverOp::unmap]
                                << ", release " << made[DriverOp::release_page] << ", map " << made[DriverOp::map] << ")";
  }
  {
    std::lock_guard lock(core.mu);
    core.keeper.pause();
  }
  const std::uint64_t before = heap.stats().ops.background_misses;
  g.gate->open();
  ASSERT_TRUE(settled(heap, before + 1));
  std::size_t reserve = 0, ceiling = 0;
  for (int i = 0; i < 1000; ++i) {  // the trim follows the settle, on the mapper's thread
    {
      std::lock_guard lock(core.mu);
      reserve = core.pool.reserve_pages() + core.pool.chunk_reserve_pages();
      ceiling = core.keeper.targets().ceiling;
      if (reserve <= ceiling && !core.pool.batch_in_flight()) break;
    }
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_LE(reserve, ceiling) << "the probe's pages were left beyond the peak bound";
  {
    std::lock_guard lock(core.mu);
    core.keeper.resume();
  }
  EXPECT_VALID(heap);
  for (Handle x : live) EXPECT_TRUE(heap.free(x).ok());
}

// A miss that must create pages while a free chunk waits for the keeper releases it first, in
// the mapper's calls; meanwhile the chunk counts as released, and stats() still adds up.
TEST(BackgroundMisses, AMissReleasesAWaitingFreeChunkFirstAndTheStatsAddUpMeanwhile) {
  GatedHeap g(chunked_background_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto& core = detail::HeapInternals::of(heap);
  const std::vector<Handle> live = allocate_mapped(heap, 100);  // ~400 pages, none pending at the gate
  auto first = heap.allocate(48 * detail::kPageSize);           // ordinary demand, most of it one chunk
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(heap.pin(*first).ok());
  ASSERT_EQ(heap.stats().pages.chunks, 1u) << "the object got no chunk (the test's case is gone)";
  {
    std::lock_guard lock(core.mu);
    core.keeper.pause();  // the emptied chunk waits
  }
  ASSERT_TRUE(heap.free(*first).ok());
  ASSERT_TRUE(core.pool.free_chunk_waits());
  const std::size_t mapped_before = heap.stats().mapped_bytes;
  gate_mapper(g);
  auto second = heap.allocate(54 * detail::kPageSize);  // another shape: new pages
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE(g.gate->wait_entered()) << "the mapper made no gated call";
  // Held at its first map: the chunk's release and the creates are done.
  const HeapStats held = heap.stats();
  const auto& p = held.pages;
  EXPECT_EQ((p.slab - p.shared_tails + p.large + p.reserve + p.releasing + p.moving) * detail::kPageSize, held.mapped_bytes)
      << "slab " << p.slab << " - tails " << p.shared_tails << " + large " << p.large << " + reserve " << p.reserve
      << " + releasing " << p.releasing << " + moving " << p.moving;
  EXPECT_EQ(p.chunk_reserve, 0u) << "the waiting chunk was not taken for release";
  // The new object's 54 pages against the chunk's 48, and the reserve's floor: a miss's batch
  // leaves the reserve's last reserve_low_pages to slab pages and creates instead (whether the
  // reserve held them when the keeper was paused is a matter of timing).
  EXPECT_LE(held.mapped_bytes, mapped_before + (6 + heap.config().reserve_low_pages) * detail::kPageSize)
      << "the chunk was held beside the new pages";
  EXPECT_VALID(heap);
  g.gate->open();
  ASSERT_TRUE(heap.pin(*second).ok());
  EXPECT_FALSE(core.pool.free_chunk_waits());
  {
    std::lock_guard lock(core.mu);
    core.keeper.resume();
  }
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*second).ok());
  for (Handle x : live) EXPECT_TRUE(heap.free(x).ok());
}

// While misses wait for the mapper (their pages promised), the keeper leaves a freed object's
// whole chunk alone: a queued miss that can hold it takes it where it lies (no chunk created),
// and what no miss took goes once the promises are through (docs/speed.md, "Session 39").
TEST(BackgroundMisses, AFreeChunkWaitsForTheQueuedMissesAndServesOneWhereItLies) {
  Config config = chunked_background_config();
  config.capacity = 2u << 30;  // 1,024 pages: room for three large objects beside the live ones
  GatedHeap g(config);
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto& core = detail::HeapInternals::of(heap);
  // ~400 pages: a free of 48 is ordinary demand (the keeper's, not the freeing thread's).
  const std::vector<Handle> live = allocate_mapped(heap, 100);
  auto first = heap.allocate(48 * detail::kPageSize);  // most of it one chunk
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(heap.pin(*first).ok());
  ASSERT_EQ(heap.stats().pages.chunks_created, 1u) << "the object got no chunk (the test's case is gone)";
  auto held = allocate_held(g);  // new pages (a second chunk), its calls held at the gate
  ASSERT_TRUE(held.ok()) << held.error().to_string();
  auto queued = heap.allocate(48 * detail::kPageSize);  // behind it, its pages promised
  ASSERT_TRUE(queued.ok());
  {
    std::lock_guard lock(core.mu);
    ASSERT_GT(core.pool.promised_pages(), 0u) << "the second miss is not queued (the test's case is gone)";
  }
  ASSERT_TRUE(heap.free(*first).ok());
  std::this_thread::sleep_for(100ms);  // the keeper's turns: the free's wake, then every 20 ms
  {
    std::lock_guard lock(core.mu);
    EXPECT_TRUE(core.pool.free_chunk_waits()) << "the keeper released the free chunk while a miss was queued";
  }
  g.gate->open();
  ASSERT_TRUE(heap.pin(*queued).ok());
  ASSERT_TRUE(heap.pin(*held).ok());
  const HeapStats s = heap.stats();
  EXPECT_EQ(s.pages.chunks_created, 2u) << "the queued miss created a chunk of its own";
  test::fill(heap, *queued, 3);
  EXPECT_EQ(test::mismatches(heap, *queued, 3), 0u);
  EXPECT_VALID(heap);
  // Nothing queued now: a chunk freed goes back, as before.
  ASSERT_TRUE(heap.free(*queued).ok());
  bool released = false;
  for (int i = 0; i < 5000 && !released; ++i) {
    released = heap.stats().pages.chunks == 1;  // the held object's
    if (!released) std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(released) << "a free chunk stayed with no miss queued";
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*held).ok());
  for (Handle x : live) EXPECT_TRUE(heap.free(x).ok());
}

// A small allocation that needs a new slab page takes a reserve page rather than map an alias of
// an open tail on its own thread (two calls); compaction moves the slab page's objects onto the
// tail later, and the page goes back.
TEST(BackgroundMisses, ANewSlabPageTakesAReservePageAndCompactionPutsItOnTheTail) {
  auto heap = test::make_heap(test::uncached(background_config()));
  auto spare = heap->allocate(4 * detail::kPageSize);  // freed below: its pages stay in the reserve
  auto large = heap->allocate(2 * detail::kPageSize + 512 * 1024);  // 1.5 MiB free on its last page
  ASSERT_TRUE(spare.ok() && large.ok());
  test::fill(*heap, *large, 7);  // its pin waits for the mapping, if it missed
  test::fill(*heap, *spare, 8);
  ASSERT_TRUE(heap->free(*spare).ok());
  ASSERT_EQ(heap->open_tail_bytes(), std::vector<std::uint32_t>{512u * 1024});
  ASSERT_GT(heap->stats().reserve_bytes, 0u);
  std::vector<Handle> small;
  std::uint64_t calls = 0;
  {
    ThreadDriverCalls scope(heap->driver_calls());
    for (int i = 0; i < 5; ++i) {
      auto h = heap->allocate(kSmall);
      ASSERT_TRUE(h.ok());
      small.push_back(*h);
    }
    calls = scope.made().total();
  }
  EXPECT_EQ(calls, 0u) << "the small allocations mapped an alias of the open tail";
  EXPECT_EQ(heap->stats().pages.shared_tails, 0u);
  EXPECT_EQ(heap->open_tail_bytes().size(), 1u);
  for (Handle h : small) test::fill(*heap, h, test::seed_of(h));
  EXPECT_VALID(*heap);
  const auto before = heap->stats();
  auto rec = heap->compact(CompactRequest{});
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  const auto after = heap->stats();
  EXPECT_EQ(after.pages.shared_tails, 1u) << "compaction left the tail open";
  EXPECT_EQ((before.mapped_bytes - before.reserve_bytes) - (after.mapped_bytes - after.reserve_bytes), detail::kPageSize);
  EXPECT_VALID(*heap);
  for (Handle h : small) EXPECT_EQ(test::mismatches(*heap, h, test::seed_of(h)), 0u);
  EXPECT_EQ(test::mismatches(*heap, *large, 7), 0u);
  EXPECT_TRUE(heap->free(*large).ok());
  for (Handle h : small) EXPECT_EQ(test::mismatches(*heap, h, test::seed_of(h)), 0u);
  for (Handle h : small) EXPECT_TRUE(heap->free(h).ok());
  EXPECT_VALID(*heap);
}

// A heap with background misses and no cached objects, its reserve empty, holding one large
// object (bytes 7) whose last page has 512 KiB used: an open tail. `standbys` as the config's.
struct OpenTailHeap {
  std::unique_ptr<Heap> heap;
  Handle large;
};
OpenTailHeap open_tail_heap(std::size_t standbys, std::size_t reserve_high_pages = 0) {
  Config c = test::uncached(background_config());
  c.reserve_low_pages = 0;
  c.reserve_high_pages = reserve_high_pages;
  c.standby_tail_aliases = standbys;
  OpenTailHeap t{test::make_heap(c), {}};
  auto large = t.heap->allocate(2 * detail::kPageSize + 512 * 1024);
  EXPECT_TRUE(large.ok());
  if (!large.ok()) return t;
  t.large = *large;
  test::fill(*t.heap, t.large, 7);
  EXPECT_EQ(t.heap->open_tail_bytes(), std::vector<std::uint32_t>{512u * 1024});
  EXPECT_EQ(t.heap->stats().reserve_bytes, 0u);
  return t;
}

// A heap with background misses, no cached objects and an empty reserve (no watermark).
Config empty_reserve_config() {
  Config c = test::uncached(background_config());
  c.reserve_low_pages = 0;
  c.reserve_high_pages = 0;
  return c;
}

// A large object (bytes 7) with 512 KiB used on its last page: an open tail of 1.5 MiB.
Result<Handle> allocate_open_tail(Heap& heap) {
  auto large = heap.allocate(2 * detail::kPageSize + 512 * 1024);
  if (!large.ok()) return large;
  test::fill(heap, *large, 7);
  if (heap.open_tail_bytes() != std::vector<std::uint32_t>{512u * 1024})
    return make_error(Errc::internal, "the large object left no open tail of 1.5 MiB");
  return large;
}

// With no reserve page a new slab page makes calls (an alias of an open tail: two; a page of its
// own: three), so the mapper places the small object: the allocating thread makes none and gets
// a pending object (no address yet, one page promised) whose first pin waits; the mapper puts it
// on the open tail, the cheaper page.
TEST(BackgroundMisses, ASmallObjectThatNeedsANewSlabPageWhileTheReserveIsEmptyIsPlacedByTheMapper) {
  GatedHeap g(empty_reserve_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto large = allocate_open_tail(heap);
  ASSERT_TRUE(large.ok());
  ASSERT_EQ(heap.stats().reserve_bytes, 0u);
  const std::uint64_t settled_before = heap.stats().ops.background_misses;
  gate_mapper(g);
  auto [small, calls] = allocate_counting_calls(heap, kSmall);
  ASSERT_TRUE(small.ok()) << small.error().to_string();
  EXPECT_EQ(calls, 0u) << "the allocating thread made driver calls for a new slab page";
  EXPECT_EQ(address_at_allocation(heap, *small), DevicePtr{0}) << "placed by the allocating thread";
  // The mapper maps the tail's page for the slab page without the heap lock: the heap is
  // consistent meanwhile, the object pending and unplaced, its page promised.
  ASSERT_TRUE(g.gate->wait_entered()) << "the mapper made no map";
  auto& core = detail::HeapInternals::of(heap);
  {
    std::lock_guard lock(core.mu);
    EXPECT_TRUE(core.misses.is_pending(small->index));
    EXPECT_EQ(core.pool.promised_pages(), 1u);
  }
  EXPECT_EQ(heap.stats().live_bytes, 2 * detail::kPageSize + 512 * 1024 + kSmall);
  EXPECT_VALID(heap);
  auto pinning = std::async(std::launch::async, [&] {
    auto pin = heap.pin(*small);
    return pin.ok() ? pin->address() : DevicePtr{0};
  });
  EXPECT_EQ(pinning.wait_for(50ms), std::future_status::timeout) << "a pin did not wait for the placement";
  g.gate->open();
  EXPECT_NE(pinning.get(), DevicePtr{0});
  const auto s = heap.stats();
  EXPECT_EQ(s.ops.small_misses_placed_by_mapper, 1u);
  EXPECT_EQ(s.ops.background_misses, settled_before + 1);
  EXPECT_EQ(s.pages.shared_tails, 1u) << "the mapper did not put the slab page on the open tail";
  test::fill(heap, *small, 3);
  EXPECT_EQ(test::mismatches(heap, *large, 7), 0u);
  EXPECT_EQ(test::mismatches(heap, *small, 3), 0u);
  EXPECT_VALID(heap);
  EXPECT_TRUE(heap.free(*small).ok());
  EXPECT_TRUE(heap.free(*large).ok());
  EXPECT_VALID(heap);
}

// A pending small object freed while the mapper maps the tail's page for its slab page: the
// free makes no call, the mapper gives the alias back (the keeper unmaps it) and places nothing;
// the tail stays open and the heap consistent.
TEST(BackgroundMisses, ASmallObjectFreedWhileItsSlabPagesAliasIsMappedLeavesNoSlabPage) {
  GatedHeap g(empty_reserve_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto large = allocate_open_tail(heap);
  ASSERT_TRUE(large.ok());
  const std::uint64_t settled_before = heap.stats().ops.background_misses;
  gate_mapper(g);
  auto small = heap.allocate(kSmall);
  ASSERT_TRUE(small.ok());
  ASSERT_TRUE(g.gate->wait_entered()) << "the mapper made no map";
  {
    ThreadDriverCalls scope(heap.driver_calls());
    ASSERT_TRUE(heap.free(*small).ok());
    EXPECT_EQ(scope.made().total(), 0u);
  }
  EXPECT_EQ(heap.stats().live_bytes, 2 * detail::kPageSize + 512 * 1024);
  EXPECT_VALID(heap);  // its page still promised, until the mapper's booking
  g.gate->open();
  ASSERT_TRUE(settled(heap, settled_before + 1));
  EXPECT_EQ(heap.stats().pages.shared_tails, 0u) << "a slab page was built for the freed object";
  EXPECT_EQ(heap.open_tail_bytes(), std::vector<std::uint32_t>{512u * 1024});
  EXPECT_TRUE(heap.pin(*small).code() == Errc::stale_handle);
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.maintain().ok());  // the alias's queued unmap
  EXPECT_EQ(heap.stats().mapped_bytes, 3 * detail::kPageSize);
  EXPECT_EQ(test::mismatches(heap, *large, 7), 0u);
  EXPECT_TRUE(heap.free(*large).ok());
  EXPECT_VALID(heap);
}

// A burst of one class while the reserve is empty and the mapper is busy: the pending small
// objects promise a page for each page's worth of them, not one each (a page holds 32 of 64 KiB),
// and all land once the mapper gets to them.
TEST(BackgroundMisses, ABurstOfPendingSmallObjectsOfOneClassPromisesAPageForEachPagesWorth) {
  GatedHeap g(empty_reserve_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto& core = detail::HeapInternals::of(heap);
  auto held = allocate_held(g);  // the mapper's calls for it held at the gate
  ASSERT_TRUE(held.ok()) << held.error().to_string();
  std::size_t promised_before = 0;
  {
    std::lock_guard lock(core.mu);
    promised_before = core.pool.promised_pages();
  }
  std::vector<Handle> burst;
  for (int i = 0; i < 40; ++i) {
    auto h = heap.allocate(kSmall);
    ASSERT_TRUE(h.ok());
    burst.push_back(*h);
  }
  {
    std::lock_guard lock(core.mu);
    EXPECT_EQ(core.pool.promised_pages(), promised_before + 2) << "not a page for each 32 objects";
    EXPECT_EQ(core.unplaced_small[detail::class_of(kSmall)], 40u);
  }
  EXPECT_VALID(heap);
  ASSERT_TRUE(heap.free(burst[1]).ok());  // one that rides along, given up while queued
  EXPECT_VALID(heap);
  g.gate->open();
  for (std::size_t i = 0; i < burst.size(); ++i)
    if (i != 1) {
      test::fill(heap, burst[i], std::uint32_t(i + 1));
    }
  for (std::size_t i = 0; i < burst.size(); ++i) {
    if (i != 1) {
      EXPECT_EQ(test::mismatches(heap, burst[i], std::uint32_t(i + 1)), 0u);
    }
  }
  {
    std::lock_guard lock(core.mu);
    EXPECT_EQ(core.pool.promised_pages(), 0u);
    EXPECT_EQ(core.unplaced_small[detail::class_of(kSmall)], 0u);
  }
  EXPECT_VALID(heap);
  for (std::size_t i = 0; i < burst.size(); ++i) {
    if (i != 1) {
      EXPECT_TRUE(heap.free(burst[i]).ok());
    }
  }
  EXPECT_TRUE(heap.free(*held).ok());
  EXPECT_VALID(heap);
}

// A pending small object queued behind a large miss: it goes before the large ones still queued,
// and a free of it while it waits gives its promise back (no call, nothing placed); the heap is
// consistent at every step.
TEST(BackgroundMisses, APendingSmallObjectGoesBeforeQueuedLargeMissesAndItsFreeGivesThePromiseBack) {
  GatedHeap g(empty_reserve_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto& core = detail::HeapInternals::of(heap);
  auto held = allocate_held(g);  // the mapper's calls for it held at the gate
  ASSERT_TRUE(held.ok()) << held.error().to_string();
  auto queued = heap.allocate(kBig);  // a large miss queued behind it
  ASSERT_TRUE(queued.ok());
  auto [small, calls] = allocate_counting_calls(heap, kSmall);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(calls, 0u);
  auto freed = heap.allocate(3 * kSmall);  // another class: another page
  ASSERT_TRUE(freed.ok());
  std::size_t promised = 0;
  {
    std::lock_guard lock(core.mu);
    promised = core.pool.promised_pages();
    EXPECT_TRUE(core.misses.is_pending(small->index) && core.misses.is_pending(freed->index));
  }
  EXPECT_GE(promised, kBig / detail::kPageSize + 2) << "the queued miss's pages and one for each small object";
  EXPECT_VALID(heap);
  {
    ThreadDriverCalls scope(heap.driver_calls());
    ASSERT_TRUE(heap.free(*freed).ok());
    EXPECT_EQ(scope.made().total(), 0u);
  }
  {
    std::lock_guard lock(core.mu);
    EXPECT_EQ(core.pool.promised_pages(), promised - 1) << "the freed small object's page is still promised";
    EXPECT_FALSE(core.misses.is_pending(freed->index));
    EXPECT_EQ(core.misses.queued_order(), (std::vector<std::uint32_t>{small->index, queued->index}))
        << "the small object does not go before the queued large miss";
  }
  EXPECT_VALID(heap);
  g.gate->open();
  ASSERT_TRUE(heap.pin(*queued).ok());
  ASSERT_TRUE(heap.pin(*small).ok());
  EXPECT_EQ(heap.stats().ops.small_misses_placed_by_mapper, 1u);
  test::fill(heap, *small, 5);
  EXPECT_EQ(test::mismatches(heap, *small, 5), 0u);
  EXPECT_TRUE(heap.free(*freed).code() == Errc::stale_handle);
  EXPECT_VALID(heap);
  for (Handle x : {*held, *queued, *small}) EXPECT_TRUE(heap.free(x).ok());
  EXPECT_VALID(heap);
}

// The keeper's standby alias: prepared for the roomiest open tail, it lets a new slab page that
// finds the reserve empty go on that tail with no driver call on the allocating thread; it is
// given back when its tail's object is freed, so that the page can be released.
TEST(BackgroundMisses, TheStandbyAliasTakesTheCallsOfANewSlabPageOnATailOffTheCaller) {
  auto [heap, large] = open_tail_heap(4);
  ASSERT_FALSE(HasFailure());
  auto& core = detail::HeapInternals::of(*heap);
  {
    std::unique_lock lock(core.mu);
    core.keep_standby_alias(lock);  // what the keeper's thread does after its turns
    ASSERT_EQ(core.prepared_aliases.size(), 1u);
    core.keep_standby_alias(lock);
    EXPECT_EQ(core.prepared_aliases.size(), 1u) << "one standby a tail at most";
  }
  EXPECT_VALID(*heap);
  ASSERT_EQ(heap->stats().reserve_bytes, 0u);
  auto [small, calls] = allocate_counting_calls(*heap, kSmall);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(calls, 0u) << "the slab page did not take the standby alias";
  EXPECT_EQ(heap->stats().pages.shared_tails, 1u);
  {
    std::lock_guard lock(core.mu);
    EXPECT_TRUE(core.prepared_aliases.empty()) << "the standby was used";
  }
  test::fill(*heap, *small, 3);
  EXPECT_EQ(test::mismatches(*heap, large, 7), 0u);
  EXPECT_EQ(test::mismatches(*heap, *small, 3), 0u);
  EXPECT_VALID(*heap);
  EXPECT_TRUE(heap->free(*small).ok());
  EXPECT_VALID(*heap);
  // A standby whose tail's object is freed goes with it.
  ASSERT_TRUE(heap->maintain().ok());  // the emptied slab page's alias goes: the tail is open again
  ASSERT_EQ(heap->open_tail_bytes(), std::vector<std::uint32_t>{512u * 1024});
  {
    std::unique_lock lock(core.mu);
    core.keep_standby_alias(lock);
    ASSERT_EQ(core.prepared_aliases.size(), 1u);
  }
  EXPECT_TRUE(heap->free(large).ok());
  {
    std::lock_guard lock(core.mu);
    EXPECT_TRUE(core.prepared_aliases.empty()) << "the freed tail's standby was kept";
  }
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->maintain().ok());  // the queued unmap of the discarded alias
  EXPECT_EQ(heap->stats().mapped_bytes, 0u);
  EXPECT_VALID(*heap);
}

// A standby of a tail still open on its page maps a live object's page and holds no memory: it
// outlives compaction cycles and a reserve that recovered, with no call to give it back and make
// it again (that churn, after each of the stress's cycles, kept the driver busy enough for the
// 8-thread GPU stress to run out of memory). Out-of-memory still gives every one back.
TEST(BackgroundMisses, AStandbyAliasOutlivesCyclesAndARecoveredReserveWhileItsTailIsOpen) {
  auto [heap, large] = open_tail_heap(4, /*reserve_high_pages=*/4);  // a freed page may stay
  ASSERT_FALSE(HasFailure());
  const Config c = heap->config();
  auto& core = detail::HeapInternals::of(*heap);
  std::uint32_t standby = 0;
  {
    std::unique_lock lock(core.mu);
    core.keep_standby_alias(lock);
    ASSERT_EQ(core.prepared_aliases.size(), 1u);
    standby = core.prepared_aliases.begin()->second;
  }
  const DriverCallCounts before = heap->driver_calls().totals();
  auto standby_kept = [&] {
    std::lock_guard lock(core.mu);
    return core.prepared_aliases.size() == 1 && core.prepared_aliases.begin()->second == standby;
  };
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(heap->compact().ok());
    ASSERT_TRUE(heap->maintain().ok());  // a discarded alias would be unmapped here
    EXPECT_TRUE(standby_kept()) << "cycle " << i;
  }
  // The reserve above its low watermark: no new standby is made, the open tail's one stays.
  auto other = heap->allocate(detail::kPageSize);
  ASSERT_TRUE(other.ok());
  test::fill(*heap, *other, 1);  // mapped (a pending object's free would map nothing)
  ASSERT_TRUE(heap->free(*other).ok());
  ASSERT_GT(heap->stats().reserve_bytes, 0u);
  {
    std::unique_lock lock(core.mu);
    core.keep_standby_alias(lock);
  }
  EXPECT_TRUE(standby_kept()) << "the reserve's recovery gave the standby back";
  const DriverCallCounts made = heap->driver_calls().totals().since(before);
  EXPECT_EQ(made[DriverOp::unmap], 0u);
  EXPECT_EQ(heap->stats().pages.large, 3u);
  EXPECT_EQ(test::mismatches(*heap, large, 7), 0u);
  EXPECT_VALID(*heap);
  // Out-of-memory gives it back with the rest before its retry.
  auto huge = heap->allocate(c.capacity - detail::kPageSize);
  EXPECT_EQ(huge.code(), Errc::out_of_memory);
  {
    std::lock_guard lock(core.mu);
    EXPECT_TRUE(core.prepared_aliases.empty());
  }
  EXPECT_VALID(*heap);
  EXPECT_TRUE(heap->free(large).ok());
  EXPECT_VALID(*heap);
}

// A resize closes the tail (its last page is given back, moved or grown over): the tail's standby
// goes at once, not at the keeper's next turn, since a shrink's freed page is not released while
// an alias maps it.
TEST(BackgroundMisses, AResizeGivesTheTailsStandbyAliasBack) {
  for (const std::size_t bytes : {std::size_t{detail::kPageSize + 256 * 1024}, std::size_t{6 * detail::kPageSize}}) {
    SCOPED_TRACE(bytes);  // a shrink that gives the last page back, a growth that moves or extends it
    const bool failed_before = HasFailure();
    auto [heap, large] = open_tail_heap(4);
    ASSERT_EQ(HasFailure(), failed_before);
    auto& core = detail::HeapInternals::of(*heap);
    {
      std::unique_lock lock(core.mu);
      core.keep_standby_alias(lock);
      ASSERT_EQ(core.prepared_aliases.size(), 1u);
    }
    ASSERT_TRUE(heap->resize(large, bytes).ok()) << bytes;
    {
      std::lock_guard lock(core.mu);
      EXPECT_TRUE(core.prepared_aliases.empty()) << bytes << ": the closed tail's standby was kept";
    }
    EXPECT_VALID(*heap);
    EXPECT_EQ(test::mismatches(*heap, large, 7, std::min(bytes, 2 * detail::kPageSize)), 0u) << bytes;
    ASSERT_TRUE(heap->maintain().ok());  // the discarded alias's unmap
    EXPECT_VALID(*heap);
    EXPECT_TRUE(heap->free(large).ok());
    EXPECT_VALID(*heap);
  }
}

// With the keeper's thread running, a standby appears for an open tail by itself.
TEST(BackgroundMisses, TheKeeperPreparesAStandbyAliasForAnOpenTailWhileTheReserveIsLow) {
  Config c = background_config();
  c.background_reserve = true;
  c.standby_tail_aliases = 4;
  c.reserve_low_pages = 64;  // the reserve stays at or below it (the keeper creates up to it only)
  c.reserve_high_pages = 64;
  auto heap = test::make_heap(c);
  auto& core = detail::HeapInternals::of(*heap);
  auto large = heap->allocate(2 * detail::kPageSize + 512 * 1024);
  ASSERT_TRUE(large.ok());
  test::fill(*heap, *large, 7);
  bool prepared = false;
  for (int i = 0; i < 200 && !prepared; ++i) {
    (void)heap->maintain();  // wakes nothing by itself; the keeper's periodic turn does the work
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::lock_guard lock(core.mu);
    prepared = !core.prepared_aliases.empty();
  }
  EXPECT_TRUE(prepared) << "no standby alias within 2 s";
  EXPECT_VALID(*heap);
  EXPECT_TRUE(heap->free(*large).ok());
  EXPECT_VALID(*heap);
  ASSERT_TRUE(heap->shutdown().ok());
}

// Kernels resolve handles through the device table: a scope must not give them a pending
// object's address before its run is mapped. Misses arriving meanwhile map on their callers.
TEST(BackgroundMisses, ATableScopeWaitsForPendingObjects) {
  GatedHeap g(background_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto big = allocate_held(g);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  auto scoping = std::async(std::launch::async, [&] {
    auto scope = heap.pin_table(Stream{});
    return scope.ok();
  });
  EXPECT_EQ(scoping.wait_for(50ms), std::future_status::timeout) << "the scope did not wait for the mapping";
  std::uint64_t calls = 0;
  {
    ThreadDriverCalls scope(heap.driver_calls());
    auto other = heap.allocate(kBig);
    ASSERT_TRUE(other.ok());
    calls = scope.made().total();
    EXPECT_TRUE(heap.free(*other).ok());
  }
  EXPECT_GT(calls, 0u) << "a miss went to the mapper while a scope waited for it";
  g.gate->open();
  EXPECT_TRUE(scoping.get());
  test::fill(heap, *big, 1);
  EXPECT_EQ(test::mismatches(heap, *big, 1), 0u);
  EXPECT_VALID(heap);
}

TEST(BackgroundMisses, ALimitOfNoPendingMissOrOfMoreThanAMillionIsRefused) {
  for (std::size_t limit : {std::size_t{0}, (std::size_t{1} << 20) + 1}) {
    Config c = background_config();
    c.background_miss_limit = limit;
    auto heap = Heap::create(test::open_host_backend(c.capacity), c);
    ASSERT_FALSE(heap.ok()) << limit;
    EXPECT_EQ(heap.error().code, Errc::invalid_argument);
    EXPECT_NE(heap.error().message.find("background_miss_limit"), std::string::npos) << heap.error().message;
  }
  Config c = background_config();
  c.background_miss_limit = 1;
  EXPECT_TRUE(Heap::create(test::open_host_backend(c.capacity), c).ok());
}

TEST(BackgroundMisses, AMapperSpinOfMoreThanATenthOfASecondIsRefused) {
  Config c = background_config();
  c.miss_mapper_spin_us = 100'001;
  auto heap = Heap::create(test::open_host_backend(c.capacity), c);
  ASSERT_FALSE(heap.ok());
  EXPECT_EQ(heap.error().code, Errc::invalid_argument);
  EXPECT_NE(heap.error().message.find("miss_mapper_spin_us"), std::string::npos) << heap.error().message;
  c.miss_mapper_spin_us = 100'000;
  EXPECT_TRUE(Heap::create(test::open_host_backend(c.capacity), c).ok());
}

// The poll's default: 200 us where the machine leaves a core for it (8 hardware threads or more),
// none on smaller machines (a 2-core CI runner), where it would take the allocating threads' core.
TEST(BackgroundMisses, TheMapperPollsByDefaultOnlyWhereACoreIsToSpare) {
  const unsigned threads = std::thread::hardware_concurrency();
  EXPECT_EQ(Config{}.miss_mapper_spin_us, threads >= 8 ? 200u : 0u) << threads << " hardware threads";
  EXPECT_LE(Config{}.miss_mapper_spin_us, 100'000u);
}

TEST(BackgroundMisses, MoreThanSixtyFourStandbyTailAliasesAreRefused) {
  Config c = background_config();
  c.standby_tail_aliases = 65;
  auto heap = Heap::create(test::open_host_backend(c.capacity), c);
  ASSERT_FALSE(heap.ok());
  EXPECT_EQ(heap.error().code, Errc::invalid_argument);
  EXPECT_NE(heap.error().message.find("standby_tail_aliases"), std::string::npos) << heap.error().message;
  c.standby_tail_aliases = 64;
  EXPECT_TRUE(Heap::create(test::open_host_backend(c.capacity), c).ok());
}

// Misses one after another, each used (pinned: it waits for its mapping) before the next: the
// mapper is asleep, or polling, whenever the next one comes. Returns the wakes their submits made.
std::uint64_t wakes_for_misses_in_turn(std::uint32_t spin_us, int misses) {
  Config c = background_config();
  c.capacity = 1u << 30;
  c.miss_mapper_spin_us = spin_us;
  auto heap = Heap::create(test::open_host_backend(c.capacity), c);
  EXPECT_TRUE(heap.ok());
  if (!heap.ok()) return 0;
  std::vector<Handle> live;
  for (int i = 0; i < misses; ++i) {
    const std::uint64_t before = Heap::this_thread_background_misses();
    auto h = (*heap)->allocate(kBig);
    EXPECT_TRUE(h.ok());
    if (!h.ok()) break;
    EXPECT_EQ(Heap::this_thread_background_misses(), before + 1) << "allocation " << i << " did not miss";
    EXPECT_TRUE((*heap)->pin(*h).ok());  // waits for the mapper; unpinned at once
    live.push_back(*h);
  }
  EXPECT_VALID(**heap);
  auto& core = detail::HeapInternals::of(**heap);
  std::lock_guard lock(core.mu);
  return core.misses.wakes();
}

TEST(BackgroundMisses, AMapperThatPollsTakesMissesWithoutAWakeAndStillStopsAtOnce) {
  constexpr int kMisses = 12;
  // Asleep between misses, the mapper is woken by (nearly) every submit.
  const std::uint64_t sleeping = wakes_for_misses_in_turn(0, kMisses);
  EXPECT_GE(sleeping, std::uint64_t(kMisses / 2));
  EXPECT_LE(sleeping, std::uint64_t(kMisses));
  // Polling for a tenth of a second after each, it finds the next miss itself: a wake only where
  // the test thread was held up longer than that. The heap's destruction then ends the poll at
  // once (no test timeout).
  EXPECT_LT(wakes_for_misses_in_turn(100'000, kMisses), std::uint64_t(kMisses / 2));
}

TEST(BackgroundMisses, CompactionLeavesAPendingObjectAloneAndShutdownWaitsForIt) {
  GatedHeap g(background_config());
  ASSERT_TRUE(g.heap);
  Heap& heap = *g.heap;
  auto kept = test::fragment(heap, 64, 48 * 1024, 4, 7);  // sparse slab pages to evacuate
  auto big = allocate_held(g);
  ASSERT_TRUE(big.ok()) << big.error().to_string();
  auto rec = heap.compact(CompactRequest{});
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_VALID(heap);
  for (const auto& k : kept) EXPECT_EQ(test::mismatches(heap, k.h, k.seed), 0u);
  Status shut = make_error(Errc::internal, "not run");
  std::thread stopping([&] { shut = heap.shutdown(); });
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(heap.is_shut_down()) << "the shutdown did not wait for the pending object";
  g.gate->open();
  stopping.join();
  EXPECT_TRUE(shut.ok()) << shut.error().to_string();
  EXPECT_TRUE(heap.is_shut_down());
}

}  // namespace
}  // namespace valet
