// Evacuation and the move-safety protocol, on the host backend (asynchronous streams with
// injected delays, so ordering bugs show).
#include <algorithm>
#include <random>
#include <thread>

#include "heap_test_util.h"
#include "valet/fault_injection.h"

namespace valet::test {
namespace {

TEST(Compaction, EvacuatesSparsePagesAndKeepsEveryByte) {
  auto heap = make_heap();
  auto kept = fragment(*heap, 32 * 40, 64 * 1024, 4, 1);  // 40 pages at 25% occupancy
  auto before = heap->stats();
  EXPECT_GE(before.pages.slab, 40u);
  auto rec = heap->compact(evacuate_only());
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_GT(rec->objects_moved, 0u);
  EXPECT_EQ(rec->bytes_moved, rec->objects_moved * 64 * 1024);
  EXPECT_EQ(rec->pages_meshed, 0u);
  EXPECT_GT(heap->stats().driver_calls.copy, before.driver_calls.copy) << "the batched copies are counted";
  EXPECT_GE(rec->pages_freed, 25u);
  auto after = heap->stats();
  EXPECT_LE(after.pages.slab, 11u);
  EXPECT_LT(after.mapped_bytes, before.mapped_bytes);
  EXPECT_EQ(after.compaction.cycles, 1u);
  EXPECT_EQ(after.compaction.objects_moved, rec->objects_moved);
  EXPECT_VALID(*heap);
  for (auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
}

TEST(Compaction, RespectsTheByteAndPageBudgets) {
  auto heap = make_heap();
  auto kept = fragment(*heap, 32 * 20, 64 * 1024, 4, 2);
  CompactRequest req;
  req.max_bytes = 10 * 64 * 1024;
  auto rec = heap->compact(req);
  ASSERT_TRUE(rec.ok());
  EXPECT_LE(rec->bytes_moved, req.max_bytes);
  req.max_bytes = ~0ull;
  req.max_pages = 2;
  rec = heap->compact(req);
  ASSERT_TRUE(rec.ok());
  EXPECT_LE(rec->pages_freed, 2u);
  EXPECT_VALID(*heap);
  for (auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
}

TEST(Compaction, NeverMovesAPinnedObject) {
  auto heap = make_heap();
  auto kept = fragment(*heap, 32 * 10, 64 * 1024, 4, 3);
  std::vector<Pin> pins;
  std::vector<DevicePtr> where;
  for (std::size_t i = 0; i < kept.size(); i += 5) {
    pins.push_back(*heap->pin(kept[i].h));
    where.push_back(pins.back().address());
  }
  auto rec = heap->compact();
  ASSERT_TRUE(rec.ok());
  EXPECT_GT(rec->objects_skipped, 0u);
  for (std::size_t k = 0; k < pins.size(); ++k) {
    EXPECT_EQ(pins[k].address(), where[k]);
    auto again = heap->pin(pins[k].handle());
    EXPECT_EQ(again->address(), where[k]) << "a pinned object moved";
  }
  EXPECT_VALID(*heap);
  pins.clear();
  for (auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
}

TEST(Compaction, StreamOrderedUnpinHoldsTheObjectUntilTheStreamPasses) {
  auto heap = make_heap();
  auto& host = host_of(*heap);
  auto kept = fragment(*heap, 32 * 4, 64 * 1024, 8, 4);
  auto s = *host.create_stream();
  const Handle target = kept[1].h;
  DevicePtr addr;
  {
    auto sp = heap->pin(target, s);
    ASSERT_TRUE(sp.ok());
    addr = sp->address();
    // "Kernel" on the stream that still reads the object after the unpin is queued.
    // Only that task is slow (an injected delay would also slow the cycle's own copies and let
    // the stream pass before the cycle looks at the object).
    ASSERT_TRUE(host.enqueue_host_task(s, [] { std::this_thread::sleep_for(std::chrono::milliseconds(150)); }).ok());
  }  // unpinned on the stream, behind the slow task
  auto rec = heap->compact();
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(heap->pin(target)->address(), addr) << "moved while the stream had not passed the unpin";
  ASSERT_TRUE(host.synchronize_stream(s).ok());
  host.set_task_delay(std::chrono::microseconds(0));
  for (int i = 0; i < 3; ++i) rec = heap->compact();
  EXPECT_VALID(*heap);
  for (auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  ASSERT_TRUE(host.destroy_stream(s).ok());
}

TEST(Compaction, FreeWithPendingStreamUnpinDefersReuse) {
  auto heap = make_heap();
  auto& host = host_of(*heap);
  auto s = *host.create_stream();
  auto h = *heap->allocate(4096);
  DevicePtr addr;
  {
    auto sp = heap->pin(h, s);
    addr = sp->address();
    host.set_task_delay(std::chrono::milliseconds(100));
    ASSERT_TRUE(host.enqueue_host_task(s, [] {}).ok());
  }
  ASSERT_TRUE(heap->free(h).ok());
  // The slot is not handed out again while the stream may still use it.
  for (int i = 0; i < 64; ++i) EXPECT_NE(heap->pin(*heap->allocate(4096))->address(), addr);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(host.synchronize_stream(s).ok());
  host.set_task_delay(std::chrono::microseconds(0));
  ASSERT_TRUE(heap->maintain().ok());
  EXPECT_VALID(*heap);
  ASSERT_TRUE(host.destroy_stream(s).ok());
}

TEST(Compaction, EmergencyCompactionTurnsAnOomIntoSuccess) {
  // With the keeper's thread too: the cycle's meshing leaves aliases to drop (deferred to the
  // keeper), and the retry must not run before they are unmapped and their pages idle.
  for (auto [compact_on_oom, keeper] : {std::pair{false, false}, {true, false}, {true, true}}) {
    SCOPED_TRACE(keeper ? "with the keeper's thread" : "no keeper thread");
    auto cfg = host_config(64 * kMiB);
    cfg.compact_on_oom = compact_on_oom;
    cfg.background_reserve = keeper;
    auto heap = make_heap(cfg);
    // 30 of 32 pages hold small objects at 1/8 occupancy: 26 pages are free in total, but only
    // after moving objects.
    auto kept = fragment(*heap, 32 * 30, 64 * 1024, 8, 5);
    auto big = heap->allocate(40 * kMiB);
    if (!compact_on_oom) {
      EXPECT_EQ(big.code(), Errc::out_of_memory);
      continue;
    }
    ASSERT_TRUE(big.ok()) << big.error().to_string();
    EXPECT_GE(heap->stats().compaction.emergency_cycles, 1u);
    EXPECT_VALID(*heap);
    for (auto& o : kept) EXPECT_EQ(mismatches(*heap, o.h, o.seed), 0u);
  }
}

TEST(Compaction, PinsDuringAMoveSeeCompleteObjects) {
  // Copies are slow (injected delay) so pins land while objects are being copied: each such pin
  // cancels its object's move, and every pin reads a complete object.
  auto heap = make_heap();
  auto& host = host_of(*heap);
  auto kept = fragment(*heap, 32 * 12, 64 * 1024, 4, 6);
  host.set_task_delay(std::chrono::milliseconds(30));
  std::atomic<bool> done{false};
  std::atomic<int> bad{0};
  std::thread reader([&] {
    std::mt19937_64 rng(7);
    while (!done.load()) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      auto& o = kept[rng() % kept.size()];
      auto p = heap->pin(o.h);
      PatternRange r{p->address(), p->size(), o.seed};
      // Read directly on this thread: a host pin must only return once the bytes are there.
      std::vector<std::uint8_t> buf(p->size());
      std::memcpy(buf.data(), p->as<void>(), buf.size());
      for (std::size_t i = 0; i < buf.size(); i += 509)
        if (buf[i] != kernels::pattern_byte(o.seed, i)) {
          ++bad;
          break;
        }
      (void)r;
    }
  });
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(heap->compact().ok());
  done = true;
  reader.join();
  host.set_task_delay(std::chrono::microseconds(0));
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(heap->stats().compaction.objects_moved, 0u);
  EXPECT_VALID(*heap);
}

// A pin (host or stream) of an object whose copy is under way returns at once with the object
// where it is, and that object's move is cancelled; a later cycle moves it.
void pin_during_copy_cancels_the_move(const CompactRequest& request, bool stream_pin) {
  auto fh = make_faultable_heap();
  ASSERT_TRUE(fh.heap);
  auto* counting = fh.faults;  // counts the copy calls; injects nothing
  auto& host = fh.host();
  Heap& heap = *fh.heap;
  // Two pages of 64 KiB objects: the first keeps one object, the second (filled from its top
  // end) keeps eight, so the cycle either evacuates or meshes the lone object.
  std::vector<Handle> all;
  for (int i = 0; i < 64; ++i) all.push_back(*heap.allocate(64 * 1024));
  std::vector<Kept> kept;
  for (int i = 0; i < 64; ++i) {
    if (i == 0 || (i >= 32 && i < 40)) {
      fill(heap, all[std::size_t(i)], seed_of(all[std::size_t(i)]));
      kept.push_back({all[std::size_t(i)], seed_of(all[std::size_t(i)])});
    } else {
      ASSERT_TRUE(heap.free(all[std::size_t(i)]).ok());
    }
  }
  const Handle lone = all[0];
  const DevicePtr before = heap.pin(lone)->address();
  const std::uint64_t copies = counting->calls(FaultOp::copy);
  host.set_task_delay(std::chrono::seconds(2));
  std::atomic<bool> finished{false};
  Result<CompactionRecord> rec = make_error(Errc::internal, "not run");
  std::thread cycle([&] {
    rec = heap.compact(request);
    finished = true;
  });
  // The cycle has claimed the object and queued its copy, which sleeps for two seconds.
  while (counting->calls(FaultOp::copy) == copies) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  DevicePtr seen = 0;
  Stream s{};
  if (stream_pin) {
    s = *host.create_stream();
    auto p = heap.pin(lone, s);
    ASSERT_TRUE(p.ok());
    seen = p->address();
    EXPECT_FALSE(finished.load()) << "the stream pin waited for the copy";
    ASSERT_TRUE(p->release().ok());
  } else {
    auto p = heap.pin(lone);
    ASSERT_TRUE(p.ok());
    seen = p->address();
    EXPECT_FALSE(finished.load()) << "the pin waited for the copy";
  }
  EXPECT_EQ(seen, before) << "a pin during the copy must get the object where it is";
  cycle.join();
  host.set_task_delay(std::chrono::microseconds(0));
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->objects_moved, 0u);
  EXPECT_EQ(rec->pages_meshed, 0u);
  EXPECT_GE(rec->objects_skipped, 1u);
  EXPECT_VALID(heap);
  EXPECT_EQ(heap.pin(lone)->address(), before);
  for (const auto& k : kept) EXPECT_EQ(mismatches(heap, k.h, k.seed), 0u);
  // Nothing pins it now: the next cycle moves (or meshes) it.
  if (stream_pin) {
    ASSERT_TRUE(host.synchronize_stream(s).ok());
  }
  auto again = heap.compact(request);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->objects_moved + again->pages_meshed, 1u);
  EXPECT_VALID(heap);
  for (const auto& k : kept) EXPECT_EQ(mismatches(heap, k.h, k.seed), 0u);
  if (stream_pin) {
    ASSERT_TRUE(host.destroy_stream(s).ok());
  }
}

TEST(Compaction, APinDuringTheCopyCancelsTheMoveWithoutWaiting) {
  pin_during_copy_cancels_the_move(evacuate_only(), false);
}
TEST(Compaction, AStreamPinDuringTheCopyCancelsTheMoveWithoutWaiting) {
  pin_during_copy_cancels_the_move(evacuate_only(), true);
}
TEST(Compaction, APinDuringAMeshCopyCancelsThePairWithoutWaiting) {
  pin_during_copy_cancels_the_move(mesh_only(), false);
}

// An evacuation copy reads a meshed page's objects through its alias slot. If a pin cancels
// one object's move during the copy and the object is then freed, the alias loses its last user:
// it must stay mapped until the copy completed (on the host backend, unmapping it under the copy
// is a segfault on the copy thread; on a GPU, an illegal address).
TEST(Compaction, AnAliasStaysMappedUntilTheCopyReadingItCompleted) {
  auto fh = make_faultable_heap(uncached());
  ASSERT_TRUE(fh.heap);
  auto& host = fh.host();
  Heap& heap = *fh.heap;
  const std::size_t size = 64 * 1024;  // 32 a page
  // Two pages, one object each, at opposite ends (pages fill from opposite ends): they mesh.
  std::vector<Handle> all;
  for (int i = 0; i < 64; ++i) all.push_back(*heap.allocate(size));
  for (int i = 0; i < 64; ++i) {
    if (i != 0 && i != 32) {
      ASSERT_TRUE(heap.free(all[std::size_t(i)]).ok());
    }
  }
  const Handle a = all[0], b = all[32];
  fill(heap, a, seed_of(a));
  fill(heap, b, seed_of(b));
  CompactRequest mesh;
  mesh.evacuate = false;
  auto meshed = heap.compact(mesh);
  ASSERT_TRUE(meshed.ok()) << meshed.error().to_string();
  ASSERT_EQ(meshed->pages_meshed, 1u);
  // The meshed page is filled through its own slot, then a second page takes 30 objects, then
  // the fillers go: the meshed page (2 objects) is the sparse one, the second page the
  // destination of its two objects.
  std::vector<Handle> fillers, dense;
  for (int i = 0; i < 30; ++i) fillers.push_back(*heap.allocate(size));
  for (int i = 0; i < 30; ++i) dense.push_back(*heap.allocate(size));
  const std::uint64_t own_slot = heap.pin(fillers[0])->address() / kPage;
  for (Handle h : fillers) ASSERT_TRUE(heap.free(h).ok());
  const bool a_aliased = heap.pin(a)->address() / kPage != own_slot;
  ASSERT_NE(a_aliased, heap.pin(b)->address() / kPage != own_slot) << "one object must be behind the alias";
  const Handle through_alias = a_aliased ? a : b, other = a_aliased ? b : a;
  EXPECT_VALID(heap);

  const std::uint64_t copies = fh.faults->calls(FaultOp::copy);
  host.set_task_delay(std::chrono::milliseconds(800));
  CompactRequest evacuate;
  evacuate.mesh = false;
  evacuate.max_occupancy = 0.999;
  Result<CompactionRecord> rec = make_error(Errc::internal, "not run");
  std::thread cycle([&] { rec = heap.compact(evacuate); });
  while (fh.faults->calls(FaultOp::copy) == copies) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // The copy of both objects is queued and sleeping. Pin the one behind the alias (its move is
  // cancelled), let go, and free it: the alias has no user left while the copy still reads it.
  {
    auto pin = heap.pin(through_alias);
    ASSERT_TRUE(pin.ok()) << pin.error().to_string();
  }
  ASSERT_TRUE(heap.free(through_alias).ok());
  EXPECT_VALID(heap);  // held slots still map their pages
  cycle.join();
  host.set_task_delay(std::chrono::microseconds(0));
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_EQ(rec->objects_moved, 1u);
  EXPECT_GE(rec->objects_skipped, 1u);
  EXPECT_GE(rec->pages_freed, 1u) << "the emptied meshed page goes back";
  EXPECT_VALID(heap);
  EXPECT_EQ(heap.stats().pages.meshed, 0u) << "the unused alias was unmapped after the copy";
  EXPECT_EQ(mismatches(heap, other, seed_of(other)), 0u);
  for (Handle h : dense) ASSERT_TRUE(heap.free(h).ok());
  ASSERT_TRUE(heap.free(other).ok());
  EXPECT_VALID(heap);
}

TEST(Compaction, StreamPinsDuringAMoveSeeCompleteObjects) {
  auto heap = make_heap();
  auto& host = host_of(*heap);
  auto kept = fragment(*heap, 32 * 6, 64 * 1024, 4, 8);
  auto s = *host.create_stream();
  host.set_task_delay(std::chrono::milliseconds(40));
  std::atomic<bool> done{false};
  std::atomic<int> bad{0}, checked{0};
  std::thread pinner([&] {
    std::mt19937_64 rng(9);
    for (int round = 0; round < 40 && !done.load(); ++round) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      auto& o = kept[rng() % kept.size()];
      auto sp = heap->pin(o.h, s);
      if (!sp.ok()) continue;
      const DevicePtr a = sp->address();
      const std::size_t n = sp->size();
      const std::uint64_t seed = o.seed;
      // Work queued on the stream must see the object complete at the pinned address.
      (void)host.enqueue_host_task(s, [&, a, n, seed] {
        PatternRange r{a, n, seed};
        (void)r;
        const auto* p = reinterpret_cast<const std::uint8_t*>(a);
        for (std::size_t i = 0; i < n; i += 1021)
          if (p[i] != kernels::pattern_byte(seed, i)) {
            ++bad;
            break;
          }
        ++checked;
      });
    }
  });
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(heap->compact().ok());
  done = true;
  pinner.join();
  ASSERT_TRUE(host.synchronize_stream(s).ok());
  host.set_task_delay(std::chrono::microseconds(0));
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(checked.load(), 0);
  EXPECT_VALID(*heap);
  ASSERT_TRUE(host.destroy_stream(s).ok());
}

TEST(Compaction, ThousandsOfCyclesUnderConcurrentLoad) {
  auto cfg = host_config(512 * kMiB);
  cfg.background_reserve = true;
  auto heap = make_heap(cfg);
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::atomic<std::uint64_t> cycles{0};
  std::thread compactor([&] {
    while (!stop.load()) {
      CompactRequest req;
      req.max_occupancy = 0.9;
      auto r = heap->compact(req);
      if (!r.ok()) ++errors;
      ++cycles;
      if (cycles % 64 == 0 && !heap->validate().ok()) ++errors;
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::vector<std::pair<Handle, std::uint8_t>> mine;
      for (int op = 0; op < 8000; ++op) {
        // Grow to ~400 live objects, then churn at random: pages thin out behind the frees.
        if (mine.size() < 400 && (op < 800 || rng() % 2 == 0)) {
          auto h = heap->allocate(1 + rng() % 50000);
          if (!h.ok()) continue;
          const std::uint8_t v = std::uint8_t(rng());
          auto p = heap->pin(*h);
          std::memset(p->as<void>(), v, p->size());
          mine.emplace_back(*h, v);
        } else {
          const std::size_t i = rng() % mine.size();
          {
            auto p = heap->pin(mine[i].first);
            auto bytes = p->span<std::uint8_t>();
            if (std::any_of(bytes.begin(), bytes.end(), [&](std::uint8_t b) { return b != mine[i].second; })) ++errors;
          }
          if (!heap->free(mine[i].first).ok()) ++errors;
          mine[i] = mine.back();
          mine.pop_back();
        }
      }
      for (auto& [h, v] : mine) {
        auto p = heap->pin(h);
        auto bytes = p->span<std::uint8_t>();
        if (std::any_of(bytes.begin(), bytes.end(), [&](std::uint8_t b) { return b != v; })) ++errors;
      }
    });
  }
  for (auto& w : workers) w.join();
  stop = true;
  compactor.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(cycles.load(), 100u);
  EXPECT_GT(heap->stats().compaction.objects_moved, 0u);
  EXPECT_VALID(*heap);
}

}  // namespace
}  // namespace valet::test
