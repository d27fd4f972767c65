// Misses made without the heap lock (Config::unlocked_misses), raced: threads allocate large
// objects while another thread holds the heap lock for walks of the heap (occupancy(), a
// policy's reading, and now and then validate()) and a third compacts, so that many allocations
// find the lock held and are made pending from their thread's credit. Some objects are pinned
// at once (the pin waits for the mapper's placement), some freed at once (a free of an object
// still in its thread's inbox), the rest written, held and checked. Every byte must hold, the
// heap stay valid, and nothing stay credited or promised once the threads are gone.
#include <atomic>
#include <random>
#include <thread>

#include "../support/test_scale.h"
#include "heap_checks.h"

namespace valet::stress_test {
namespace {

TEST(UnlockedMissRace, AllocationsMadeWithoutTheLockRaceItsHoldersFreesPinsAndCompaction) {
  Config config = small_host_config(512 * kMiB);  // credits of up to 8 pages a thread
  config.background_reserve = true;
  config.thread_cache_run_bytes = 0;  // every large allocation goes to the heap, none to a cached run
  config.unlocked_misses = true;
  HostHeap hh = make_host_heap(config);
  ASSERT_TRUE(hh.heap);
  Heap& heap = *hh.heap;
  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad_bytes{0}, failures{0}, invalid{0};
  std::thread holder([&] {
    for (int turn = 1; !stop.load(std::memory_order_relaxed); ++turn) {
      if (turn % 64 == 0) {
        if (!heap.validate().ok()) ++invalid;
      } else {
        (void)heap.occupancy();
      }
    }
  });
  std::thread compactor([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      (void)heap.compact();  // busy or nothing to do: both fine
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(11 + t);
      HeldObjects held{heap};
      for (int i = 0; i < test::scaled_ops(600); ++i) {
        // 1-6 pages (within a credit), not page multiples: tails may share their last pages.
        const std::size_t bytes = (1 + rng() % 6) * kPageBytes - 4096 * (rng() % 3);
        auto h = heap.allocate(bytes);
        if (!h.ok()) {
          if (h.code() != Errc::out_of_memory) ++failures;
          continue;
        }
        if (rng() % 4 == 0) {  // freed at once: most likely still pending, maybe in this thread's inbox
          if (!heap.free(*h).ok()) ++failures;
          continue;
        }
        Obj o{*h, bytes, rng()};
        if (!fill(heap, o).ok()) ++failures;  // the pin waits for the placement
        held.keep(o, rng);
      }
      held.drain();
      bad_bytes += held.bad_bytes;
      failures += held.failures;
    });
  for (auto& th : threads) th.join();
  stop = true;
  holder.join();
  compactor.join();
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_EQ(invalid.load(), 0u) << "validate() failed beside the allocating threads";
  EXPECT_EQ(bad_bytes.load(), 0u) << "an object's bytes changed";
  EXPECT_HEAP_VALID(heap);
  const HeapStats s = heap.stats();
  EXPECT_EQ(s.live_objects, 0u);
  // The race was run: allocations found the lock held and were made pending without it.
  EXPECT_GT(s.ops.unlocked_misses, 0u);
  std::printf("unlocked misses: %llu of %llu background misses\n", (unsigned long long)s.ops.unlocked_misses,
              (unsigned long long)s.ops.background_misses);
}

}  // namespace
}  // namespace valet::stress_test
