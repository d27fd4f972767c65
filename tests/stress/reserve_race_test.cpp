// The reserve's races: the keeper trims reserve pages while allocations take runs from the same
// reserve; and a stream reuses a run it freed at once while an unpin on the same stream is still
// pending, the unpinned object's pages untouched until the stream passes it. Data written through
// the heap must stay intact, and the heap valid.
#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "../support/test_scale.h"
#include "heap_checks.h"
#include "valet/counting_backend.h"

namespace valet::stress_test {
namespace {

constexpr std::size_t kPage = kPageBytes;

TEST(ReserveRace, KeeperTrimsRaceAllocationsThatTakeTheSameRuns) {
  Config config = small_host_config(256 * kMiB);
  config.background_reserve = true;  // the keeper's thread trims while the workers allocate
  config.reserve_low_pages = 2;
  config.reserve_high_pages = 4;
  HostHeap hh = make_host_heap(config);
  ASSERT_TRUE(hh.heap);
  Heap& heap = *hh.heap;
  constexpr int kThreads = 4;
  std::atomic<std::uint64_t> worker_releases{0}, bad_bytes{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      ThreadDriverCalls mine(heap.driver_calls());
      std::mt19937_64 rng(7 + t);
      HeldObjects held{heap};
      for (int i = 0; i < test::scaled_ops(150); ++i) {
        // Large objects of 1-6 pages, a few held at once: each free returns a run to the reserve,
        // often beyond its limit, and the next allocations take runs from it.
        const std::size_t bytes = (1 + rng() % 6) * kPage - 4096 * (rng() % 3);
        auto h = heap.allocate(bytes);
        if (!h.ok()) {
          if (h.code() != Errc::out_of_memory) ++failures;
          continue;
        }
        Obj o{*h, bytes, rng()};
        if (!fill(heap, o).ok()) ++failures;
        held.keep(o, rng);
      }
      held.drain();
      bad_bytes += held.bad_bytes;
      failures += held.failures;
      worker_releases += mine.made()[DriverOp::release_page];
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_EQ(bad_bytes.load(), 0u) << "an object's bytes changed while the keeper trimmed";
  // The keeper trimmed meanwhile (releases the workers did not make themselves).
  EXPECT_GT(heap.driver_calls().calls(DriverOp::release_page), worker_releases.load());
  EXPECT_HEAP_VALID(heap);
  EXPECT_EQ(heap.stats().live_objects, 0u);
}

TEST(ReserveRace, AStreamReusesARunWhileAnUnpinOnItIsPending) {
  Config config = small_host_config(256 * kMiB);
  config.background_reserve = true;
  HostHeap hh = make_host_heap(config);
  ASSERT_TRUE(hh.heap);
  Heap& heap = *hh.heap;
  auto s = heap.backend().create_stream(), other = heap.backend().create_stream();
  ASSERT_TRUE(s.ok() && other.ok());
  // A "kernel" on s that runs until the test lets it go, then one that writes object a.
  auto go = std::make_shared<std::atomic<bool>>(false);
  ASSERT_TRUE(hh.host->enqueue_host_task(*s, [go] {
                       const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
                       while (!go->load() && std::chrono::steady_clock::now() < until)
                         std::this_thread::sleep_for(std::chrono::milliseconds(1));
                     }).ok());
  const std::size_t bytes = 3 * kPage + 8192;
  auto a = heap.allocate(bytes, *s);
  ASSERT_TRUE(a.ok());
  auto pin = heap.pin(*a, *s);
  ASSERT_TRUE(pin.ok());
  const DevicePtr a_at = pin->address();
  HostBackend* host = hh.host;
  auto kernel_wrote = std::make_shared<std::atomic<int>>(0);  // 1: written, -1: failed
  const PatternRange kernel_writes{a_at, bytes, 41};
  ASSERT_TRUE(hh.host->enqueue_host_task(*s, [host, kernel_writes, kernel_wrote] {
                       const bool ok = host->fill_pattern({&kernel_writes, 1}, Stream{}).ok() &&
                                       host->synchronize_stream(Stream{}).ok();
                       kernel_wrote->store(ok ? 1 : -1);
                     }).ok());
  // The unpin waits for the kernel; a's free on s waits for it too (deferred: nobody reuses a's
  // run, s included, until s has passed the unpin).
  ASSERT_TRUE(pin->release().ok());
  ASSERT_TRUE(heap.free(*a, *s).ok());
  EXPECT_EQ(heap.stats().stream_deferred_bytes, 4 * kPage);
  // Meanwhile s frees another object of the same size, with no pin: s reuses that run at once.
  auto b = heap.allocate(bytes, *s);
  ASSERT_TRUE(b.ok());
  DevicePtr b_at = 0;
  {
    auto p = heap.pin(*b);
    ASSERT_TRUE(p.ok());
    b_at = p->address();
  }
  ASSERT_TRUE(heap.free(*b, *s).ok());
  // Another stream, and churn that leaves the reserve above its limit (trims on the freeing
  // thread and the keeper's): neither may take or unmap a's pages or b's run.
  auto theirs_h = heap.allocate(bytes, *other);
  ASSERT_TRUE(theirs_h.ok());
  const Obj theirs{*theirs_h, bytes, 42};
  ASSERT_TRUE(fill(heap, theirs).ok());
  for (int i = 0; i < 40; ++i) {
    auto x = heap.allocate((1 + i % 7) * kPage, *other);
    ASSERT_TRUE(x.ok());
    ASSERT_TRUE(heap.free(*x).ok());
  }
  auto mine = heap.allocate(bytes, *s);
  ASSERT_TRUE(mine.ok());
  {
    auto p = heap.pin(*mine);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->address(), b_at) << "s did not reuse the run it freed";
    auto q = heap.pin(theirs.h);
    ASSERT_TRUE(q.ok());
    const DevicePtr t_at = q->address();
    EXPECT_TRUE(t_at + bytes <= a_at || t_at >= a_at + 4 * kPage) << "another stream got a's pending pages";
    EXPECT_TRUE(t_at + bytes <= b_at || t_at >= b_at + 4 * kPage) << "another stream got s's cached run";
  }
  EXPECT_HEAP_VALID(heap);
  go->store(true);
  ASSERT_TRUE(heap.backend().synchronize_stream(*s).ok());
  EXPECT_EQ(kernel_wrote->load(), 1) << "a's pages were not there for the kernel queued before its free";
  EXPECT_EQ(mismatches(heap, theirs), 0u);
  EXPECT_HEAP_VALID(heap);
  ASSERT_TRUE(heap.free(*mine, *s).ok());
  ASSERT_TRUE(heap.free(theirs.h).ok());
  ASSERT_TRUE(heap.flush_stream(*s).ok());
  ASSERT_TRUE(heap.flush_stream(*other).ok());
  ASSERT_TRUE(heap.backend().synchronize_stream(*s).ok());
  ASSERT_TRUE(heap.backend().synchronize_stream(*other).ok());
  EXPECT_HEAP_VALID(heap);
  ASSERT_TRUE(heap.backend().destroy_stream(*s).ok());
  ASSERT_TRUE(heap.backend().destroy_stream(*other).ok());
}

}  // namespace
}  // namespace valet::stress_test
