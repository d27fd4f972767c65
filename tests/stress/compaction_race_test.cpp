// Deterministic reproductions of races the stress test found, kept as regression tests.
#include <chrono>
#include <thread>

#include "heap_checks.h"

namespace valet::stress_test {
namespace {

// A compaction cycle releases the heap lock while its batched copy runs. A source page whose
// objects were all skipped (pinned) can lose its last object to a free() in that window; the free
// then gives the page back, and the cycle's end must not give it back a second time.
TEST(CompactionRace, FreeingTheLastObjectOfASkippedSourcePageDuringTheCopy) {
  Config config = small_host_config(128 * kMiB);
  config.compact_on_oom = false;
  HostHeap hh = make_host_heap(config);
  ASSERT_TRUE(hh.heap);
  Heap& heap = *hh.heap;
  // The copy of the cycle takes ~300 ms: the window in which the main thread frees.
  hh.host->set_task_delay(std::chrono::milliseconds(300));

  // Class of 64 KiB: two pages at 1/32 occupancy, so the cycle has something to move.
  std::vector<Obj> movable;
  {
    std::vector<Handle> all;
    for (int i = 0; i < 64; ++i) all.push_back(*heap.allocate(64 * 1024));
    for (int i = 0; i < 64; ++i) {
      if (i == 0 || i == 32) {
        movable.push_back({all[i], 64 * 1024, std::uint64_t(i + 1)});
        continue;
      }
      ASSERT_TRUE(heap.free(all[i]).ok());
    }
  }
  // Class of 128 KiB (16 per page): page 1 full (not a candidate), pages 2 and 3 with one pinned
  // object each (candidates whose objects are all skipped).
  std::vector<Handle> big;
  for (int i = 0; i < 48; ++i) big.push_back(*heap.allocate(128 * 1024));
  for (int i = 16; i < 48; ++i)
    if (i != 16 && i != 32) {
      ASSERT_TRUE(heap.free(big[i]).ok());
    }
  auto pin_a = heap.pin(big[16]);
  auto pin_b = heap.pin(big[32]);
  ASSERT_TRUE(pin_a.ok() && pin_b.ok());
  hh.host->set_task_delay(std::chrono::microseconds(0));
  for (const Obj& o : movable) ASSERT_TRUE(fill(heap, o).ok());
  hh.host->set_task_delay(std::chrono::milliseconds(300));

  Result<CompactionRecord> rec = make_error(Errc::internal, "not run");
  // Evacuation only: the two 64 KiB pages would otherwise be meshed (no object moves).
  CompactRequest evacuate_only;
  evacuate_only.mesh = false;
  std::thread compactor([&] { rec = heap.compact(evacuate_only); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the cycle now waits for its copy
  pin_a->reset();
  pin_b->reset();
  EXPECT_TRUE(heap.free(big[16]).ok());
  EXPECT_TRUE(heap.free(big[32]).ok());
  compactor.join();
  hh.host->set_task_delay(std::chrono::microseconds(0));
  ASSERT_TRUE(rec.ok()) << rec.error().to_string();
  EXPECT_GT(rec->objects_moved, 0u) << "the scenario needs a cycle that moves something";
  EXPECT_HEAP_VALID(heap);
  for (const Obj& o : movable) EXPECT_EQ(mismatches(heap, o), 0u);
  for (int i = 0; i < 16; ++i) EXPECT_TRUE(heap.free(big[i]).ok());
  for (const Obj& o : movable) EXPECT_TRUE(heap.free(o.h).ok());
  EXPECT_HEAP_VALID(heap);
  EXPECT_TRUE(heap.shutdown().ok());
  EXPECT_EQ(hh.host->pages_in_use(), 0u);
}

}  // namespace
}  // namespace valet::stress_test
