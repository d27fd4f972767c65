// Every wrong call gets the error code heap.h documents, and loses nothing: after each one the
// bystander objects (one of every kind) keep their bytes and validate() passes.
#include <cmath>
#include <limits>
#include <random>
#include <thread>
#include <atomic>

#include "heap_checks.h"

namespace valet::stress_test {
namespace {

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    hh_ = make_host_heap();
    ASSERT_TRUE(hh_.heap);
    heap_ = hh_.heap.get();
    std::uint64_t seed = 100;
    for (std::size_t bytes : {std::size_t{1}, std::size_t{300}, std::size_t{4096}, std::size_t{70000}, kMiB,
                              kMiB + 1, 5 * kMiB, 9 * kMiB + 3})
      bystanders_.push_back(allocate_filled(*heap_, bytes, seed++));
    auto s = heap_->backend().create_stream();
    ASSERT_TRUE(s.ok());
    stream_ = *s;
  }

  void TearDown() override {
    if (!heap_->is_shut_down()) expect_nothing_lost();
    EXPECT_TRUE(heap_->backend().destroy_stream(stream_).ok());
    EXPECT_TRUE(heap_->shutdown().ok());
    EXPECT_EQ(hh_.host->pages_in_use(), 0u) << "every page went back to the backend";
  }

  void expect_nothing_lost() {
    EXPECT_HEAP_VALID(*heap_);
    for (const Obj& o : bystanders_) EXPECT_EQ(mismatches(*heap_, o), 0u) << "bystander of " << o.size << " bytes";
  }

  Obj victim(std::size_t bytes = 5000) { return allocate_filled(*heap_, bytes, 4242 + bytes); }

  HostHeap hh_;
  Heap* heap_ = nullptr;
  std::vector<Obj> bystanders_;
  Stream stream_{};
};

TEST_F(BadInput, DoubleFreeIsAStaleHandle) {
  for (std::size_t bytes : {std::size_t{64}, 3 * kMiB}) {
    const Obj v = victim(bytes);
    ASSERT_TRUE(heap_->free(v.h).ok());
    EXPECT_EQ(heap_->free(v.h).code(), Errc::stale_handle) << bytes;
    expect_nothing_lost();
  }
}

TEST_F(BadInput, AStaleHandleStaysStaleWhenItsIndexIsReused) {
  const Obj old = victim();
  ASSERT_TRUE(heap_->free(old.h).ok());
  std::vector<Obj> fresh;
  for (int i = 0; i < 4; ++i) fresh.push_back(victim(5000 + i));  // one of them likely reuses the index
  EXPECT_EQ(heap_->free(old.h).code(), Errc::stale_handle);
  EXPECT_EQ(heap_->pin(old.h).code(), Errc::stale_handle);
  EXPECT_EQ(heap_->pin(old.h, stream_).code(), Errc::stale_handle);
  EXPECT_EQ(heap_->resize(old.h, 10).code(), Errc::stale_handle);
  EXPECT_EQ(heap_->size_of(old.h).code(), Errc::stale_handle);
  for (const Obj& o : fresh) {
    EXPECT_NE(o.h, old.h);
    EXPECT_EQ(mismatches(*heap_, o), 0u);
    EXPECT_TRUE(heap_->free(o.h).ok());
  }
}

TEST_F(BadInput, AnotherHeapsHandleIsForeignBothWays) {
  HostHeap other = make_host_heap();
  const Obj theirs = allocate_filled(*other.heap, 5000, 9);
  const Obj ours = victim();
  EXPECT_EQ(heap_->free(theirs.h).code(), Errc::foreign_handle);
  EXPECT_EQ(heap_->pin(theirs.h).code(), Errc::foreign_handle);
  EXPECT_EQ(heap_->pin(theirs.h, stream_).code(), Errc::foreign_handle);
  EXPECT_EQ(heap_->resize(theirs.h, 100).code(), Errc::foreign_handle);
  EXPECT_EQ(heap_->size_of(theirs.h).code(), Errc::foreign_handle);
  EXPECT_EQ(other.heap->free(ours.h).code(), Errc::foreign_handle);
  EXPECT_EQ(other.heap->resize(ours.h, 100).code(), Errc::foreign_handle);
  EXPECT_EQ(mismatches(*other.heap, theirs), 0u);
  EXPECT_EQ(mismatches(*heap_, ours), 0u);
  EXPECT_HEAP_VALID(*other.heap);
  ASSERT_TRUE(other.heap->shutdown().ok());
  EXPECT_EQ(other.host->pages_in_use(), 0u);
}

TEST_F(BadInput, FreeAndResizeOfAHostPinnedObjectAreRefused) {
  for (std::size_t bytes : {std::size_t{5000}, 3 * kMiB}) {
    const Obj v = victim(bytes);
    {
      auto pin = heap_->pin(v.h);
      ASSERT_TRUE(pin.ok());
      EXPECT_EQ(heap_->free(v.h).code(), Errc::pinned);
      EXPECT_EQ(heap_->resize(v.h, bytes * 2).code(), Errc::pinned);
      EXPECT_EQ(heap_->shutdown().code(), Errc::pinned);
      EXPECT_FALSE(heap_->is_shut_down());
      EXPECT_EQ(*heap_->size_of(v.h), bytes);
    }
    EXPECT_EQ(mismatches(*heap_, v), 0u);
    expect_nothing_lost();
    EXPECT_TRUE(heap_->free(v.h).ok());
  }
}

TEST_F(BadInput, FreeOfAnObjectWithAnUnreleasedStreamPinIsRefused) {
  const Obj v = victim();
  auto pin = heap_->pin(v.h, stream_);
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(heap_->free(v.h).code(), Errc::pinned);
  EXPECT_EQ(heap_->resize(v.h, 100000).code(), Errc::pinned);
  EXPECT_EQ(heap_->shutdown().code(), Errc::pinned) << "an unreleased stream pin holds the heap up";
  EXPECT_FALSE(heap_->is_shut_down());
  EXPECT_TRUE(heap_->allocate(10).ok()) << "a refused shutdown changes nothing";
  expect_nothing_lost();
  ASSERT_TRUE(pin->release().ok());
  // Freed right after the stream-ordered unpin: allowed, the memory waits for the stream.
  EXPECT_TRUE(heap_->free(v.h).ok());
  EXPECT_TRUE(heap_->backend().synchronize_stream(stream_).ok());
}

TEST_F(BadInput, PinOfAFreedObjectIsAStaleHandle) {
  const Obj v = victim();
  ASSERT_TRUE(heap_->free(v.h).ok());
  EXPECT_EQ(heap_->pin(v.h).code(), Errc::stale_handle);
  EXPECT_EQ(heap_->pin(v.h, stream_).code(), Errc::stale_handle);
}

TEST_F(BadInput, ResizeToZeroOrBeyondTheCapacityLeavesTheObjectAlone) {
  for (std::size_t bytes : {std::size_t{5000}, 3 * kMiB}) {
    const Obj v = victim(bytes);
    EXPECT_EQ(heap_->resize(v.h, 0).code(), Errc::invalid_argument);
    EXPECT_EQ(heap_->resize(v.h, heap_->config().capacity + 1).code(), Errc::out_of_memory);
    EXPECT_EQ(heap_->resize(v.h, std::size_t{1} << 60).code(), Errc::invalid_argument);
    EXPECT_EQ(heap_->resize(v.h, std::numeric_limits<std::size_t>::max()).code(), Errc::invalid_argument);
    EXPECT_EQ(*heap_->size_of(v.h), bytes);
    EXPECT_EQ(mismatches(*heap_, v), 0u);
    expect_nothing_lost();
  }
}

TEST_F(BadInput, AllocationsOfZeroTooMuchOrAbsurdlyMuchFailCleanly) {
  const auto before = heap_->stats();
  EXPECT_EQ(heap_->allocate(0).code(), Errc::invalid_argument);
  EXPECT_EQ(heap_->allocate(heap_->config().capacity + 1).code(), Errc::out_of_memory);
  EXPECT_EQ(heap_->allocate(std::size_t{1} << 60).code(), Errc::invalid_argument);
  EXPECT_EQ(heap_->allocate((std::size_t{1} << 48) + 1).code(), Errc::invalid_argument);
  EXPECT_EQ(heap_->allocate(std::numeric_limits<std::size_t>::max()).code(), Errc::invalid_argument);
  const auto after = heap_->stats();
  EXPECT_EQ(after.live_objects, before.live_objects);
  EXPECT_EQ(after.live_bytes, before.live_bytes);
}

TEST_F(BadInput, EveryCallAfterShutdownFailsWithShutDown) {
  const Obj v = victim();
  ASSERT_TRUE(heap_->shutdown().ok());
  EXPECT_TRUE(heap_->is_shut_down());
  EXPECT_EQ(hh_.host->pages_in_use(), 0u);
  EXPECT_EQ(heap_->allocate(10).code(), Errc::shut_down);
  EXPECT_EQ(heap_->free(v.h).code(), Errc::shut_down);
  EXPECT_EQ(heap_->resize(v.h, 10).code(), Errc::shut_down);
  EXPECT_EQ(heap_->pin(v.h).code(), Errc::shut_down);
  EXPECT_EQ(heap_->pin(v.h, stream_).code(), Errc::shut_down);
  EXPECT_EQ(heap_->compact().code(), Errc::shut_down);
  EXPECT_EQ(heap_->maintain().code(), Errc::shut_down);
  EXPECT_EQ(heap_->size_of(v.h).code(), Errc::shut_down) << "heap.h: after shutdown every call fails with shut_down";
  EXPECT_TRUE(heap_->shutdown().ok()) << "shutdown is idempotent";
  EXPECT_HEAP_VALID(*heap_);
}

// A refused shutdown changes nothing, for anyone: while it is being refused (a pin is held),
// other threads' allocations, frees and pins go on as before, and none fails with shut_down.
TEST_F(BadInput, ARefusedShutdownIsInvisibleToOtherThreads) {
  const Obj held = victim(3000);
  auto pin = heap_->pin(held.h);
  ASSERT_TRUE(pin.ok());
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> calls{0}, shut_down{0}, other{0};
  auto worker = [&](std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<Handle> mine;
    while (!stop.load(std::memory_order_relaxed)) {
      Status st;
      if (mine.size() < 64 && rng() % 3 != 0) {
        auto h = heap_->allocate(64 + rng() % (3 * kMiB));
        if (h.ok()) mine.push_back(*h);
        st = h.ok() ? Status{} : Status(h.error());
      } else if (!mine.empty()) {
        const std::size_t i = rng() % mine.size();
        {
          auto p = heap_->pin(mine[i]);
          st = p.ok() ? Status{} : Status(p.error());
        }
        if (st.ok()) st = heap_->free(mine[i]);
        if (st.ok()) {
          mine[i] = mine.back();
          mine.pop_back();
        }
      }
      ++calls;
      if (st.code() == Errc::shut_down) ++shut_down;
      else if (!st.ok() && st.code() != Errc::out_of_memory) ++other;
    }
    for (Handle h : mine) EXPECT_TRUE(heap_->free(h).ok()) << "an object was lost";
  };
  std::thread a(worker, 1), b(worker, 2);
  int refused = 0;
  // 300 refusals at least, and more until the workers have made 300 calls between them (on a
  // loaded machine or under a sanitizer they may have made fewer by then), within a minute.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
  for (int i = 0; i < 300 || (calls.load() <= 300 && std::chrono::steady_clock::now() < deadline); ++i) {
    auto st = heap_->shutdown();
    ASSERT_EQ(st.code(), Errc::pinned);
    ++refused;
    EXPECT_FALSE(heap_->is_shut_down());
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  stop = true;
  a.join();
  b.join();
  EXPECT_GE(refused, 300);
  EXPECT_GT(calls.load(), 300u);
  EXPECT_EQ(shut_down.load(), 0u) << "a refused shutdown failed other threads' calls";
  EXPECT_EQ(other.load(), 0u);
  pin->reset();
  EXPECT_EQ(mismatches(*heap_, held), 0u);
  expect_nothing_lost();
}

// A capacity beyond what the backend has is refused at once, whatever its size (it used to size
// the heap's slot table first).
TEST(BadCapacity, BeyondTheBackendsMemoryIsRefused) {
  for (std::size_t capacity : {std::size_t{1} << 40, std::size_t{1} << 62, ~std::size_t{0}}) {
    auto host = std::make_unique<BackendModel<HostBackend>>(HostBackendOptions{.capacity_bytes = 64 * kMiB});
    Config c = small_host_config(64 * kMiB);
    c.capacity = capacity;
    auto heap = Heap::create(std::move(host), c);
    ASSERT_FALSE(heap.ok()) << capacity;
    EXPECT_EQ(heap.code(), Errc::invalid_argument);
    EXPECT_NE(heap.error().message.find("exceeds the backend's memory"), std::string::npos) << heap.error().message;
  }
}

// A reserve budget outside its range is refused by name, nothing created.
TEST(BadReserveBudget, OutOfRangeSettingsAreRefusedByName) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Case {
    double fraction, peak_ratio;
    std::size_t window_ms;
    const char* name;
    std::size_t hold_ms = 0;
    std::size_t hold_allocs = 0;
  };
  for (const Case& k : {Case{-0.1, 1.0, 1000, "reserve_fraction"}, Case{1.5, 1.0, 1000, "reserve_fraction"},
                        Case{nan, 1.0, 1000, "reserve_fraction"}, Case{0.0, 0.9, 1000, "reserve_peak_ratio"},
                        Case{0.0, 5.0, 1000, "reserve_peak_ratio"}, Case{0.0, nan, 1000, "reserve_peak_ratio"},
                        Case{0.0, 1.0, 0, "reserve_window_ms"}, Case{0.0, 1.0, 1000, "reserve_hold_ms", 60'001},
                        Case{0.0, 1.0, 1000, "reserve_hold_allocs", 0, 1'000'001}}) {
    auto host = std::make_unique<BackendModel<HostBackend>>(HostBackendOptions{.capacity_bytes = 64 * kMiB});
    Config c = small_host_config(64 * kMiB);
    c.reserve_fraction = k.fraction;
    c.reserve_peak_ratio = k.peak_ratio;
    c.reserve_window_ms = k.window_ms;
    c.reserve_hold_ms = k.hold_ms;
    c.reserve_hold_allocs = k.hold_allocs;
    auto heap = Heap::create(std::move(host), c);
    ASSERT_FALSE(heap.ok()) << k.name;
    EXPECT_EQ(heap.code(), Errc::invalid_argument);
    EXPECT_NE(heap.error().message.find(k.name), std::string::npos) << heap.error().message;
  }
}

TEST_F(BadInput, ForgedHandlesAreInvalidOrStaleNeverAccepted) {
  std::vector<Obj> live;
  for (int i = 0; i < 50; ++i) live.push_back(victim(100 + 37 * i));
  std::mt19937_64 rng(7);
  auto is_live = [&](Handle f) {
    for (const Obj& o : live)
      if (o.h == f) return true;
    for (const Obj& o : bystanders_)
      if (o.h == f) return true;
    return false;
  };
  for (int i = 0; i < 2000; ++i) {
    Handle forged{std::uint32_t(rng() % (i % 2 ? 64 : 0xffffffffu)), std::uint32_t(rng()), heap_->tag()};
    if (is_live(forged) || forged.is_null()) continue;
    for (Errc got : {heap_->free(forged).code(), heap_->pin(forged).code(), heap_->resize(forged, 8).code(),
                     heap_->size_of(forged).code()})
      EXPECT_TRUE(got == Errc::invalid_handle || got == Errc::stale_handle)
          << "index " << forged.index << " generation " << forged.generation << ": " << errc_name(got);
  }
  EXPECT_EQ(heap_->free(Handle{}).code(), Errc::invalid_handle);
  EXPECT_EQ(heap_->free(Handle{0, 1, heap_->tag()}).code(), Errc::invalid_handle);
  for (const Obj& o : live) EXPECT_EQ(mismatches(*heap_, o), 0u);
}

TEST_F(BadInput, HandlesOfADestroyedHeapAreForeignOnANewOne) {
  std::vector<Handle> dead;
  {
    HostHeap gone = make_host_heap();
    for (int i = 0; i < 20; ++i) dead.push_back(*gone.heap->allocate(1000 + i));
  }
  HostHeap fresh = make_host_heap();
  std::vector<Obj> objs;
  for (int i = 0; i < 20; ++i) objs.push_back(allocate_filled(*fresh.heap, 1000 + i, 50 + i));
  for (Handle h : dead) {
    EXPECT_EQ(fresh.heap->free(h).code(), Errc::foreign_handle);
    EXPECT_EQ(fresh.heap->pin(h).code(), Errc::foreign_handle);
    EXPECT_EQ(fresh.heap->resize(h, 5).code(), Errc::foreign_handle);
    EXPECT_EQ(heap_->free(h).code(), Errc::foreign_handle);
  }
  for (const Obj& o : objs) EXPECT_EQ(mismatches(*fresh.heap, o), 0u);
  EXPECT_HEAP_VALID(*fresh.heap);
  ASSERT_TRUE(fresh.heap->shutdown().ok());
  EXPECT_EQ(fresh.host->pages_in_use(), 0u);
}

TEST_F(BadInput, CompactionRequestsOutsideTheirRangeAreInvalid) {
  for (double occupancy : {0.0, 1.0, -0.5, 2.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    CompactRequest req;
    req.max_occupancy = occupancy;
    EXPECT_EQ(heap_->compact(req).code(), Errc::invalid_argument) << occupancy;
  }
  CompactRequest zero;
  zero.max_bytes = 0;
  zero.max_pages = 0;
  auto rec = heap_->compact(zero);
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->bytes_moved, 0u);
  EXPECT_EQ(rec->pages_freed, 0u);
}

}  // namespace
}  // namespace valet::stress_test
