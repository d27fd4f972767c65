// CountingBackend: totals over every thread, exact counts per calling thread, and the reading
// "calls this thread made since then" that a test of the allocation path needs.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <memory>
#include <thread>
#include <vector>

#include "valet/counting_backend.h"
#include "valet/fault_injection.h"
#include "valet/heap.h"
#include "heap_test_util.h"
#include "valet/host_backend.h"

namespace valet {
namespace {

std::unique_ptr<Backend> make_host_backend(std::size_t pages = 8) {
  auto b = std::make_unique<BackendModel<HostBackend>>(HostBackendOptions{.capacity_bytes = pages * kPageBytes});
  EXPECT_TRUE(b->impl().status().ok());
  return b;
}

TEST(CountingBackend, CountsEachDoorCallByOpWhetherItSucceedsOrNot) {
  CountingBackend c(make_host_backend());
  EXPECT_EQ(c.name(), c.inner().name()) << "counting is invisible";
  EXPECT_EQ(c.totals().total(), 0u);
  auto va = c.reserve(kPageBytes);
  auto p = c.create_page();
  ASSERT_TRUE(va.ok() && p.ok());
  EXPECT_EQ(c.unmap(*va, kPageBytes).code(), Errc::invalid_state);  // refused by the backend: counted
  ASSERT_TRUE(c.map(*va, *p).ok());
  ASSERT_TRUE(c.set_access(*va, kPageBytes).ok());
  PatternRange r{*va, kPageBytes, 3};
  ASSERT_TRUE(c.fill_pattern({&r, 1}, Stream{}).ok());  // a tool: not counted
  EXPECT_EQ(*c.verify_pattern({&r, 1}, Stream{}), 0u);
  ASSERT_TRUE(c.unmap(*va, kPageBytes).ok());
  ASSERT_TRUE(c.release_page(*p).ok());
  ASSERT_TRUE(c.unreserve(*va, kPageBytes).ok());

  const DriverCallCounts t = c.totals();
  EXPECT_EQ(t[DriverOp::reserve], 1u);
  EXPECT_EQ(t[DriverOp::create_page], 1u);
  EXPECT_EQ(t[DriverOp::map], 1u);
  EXPECT_EQ(t[DriverOp::set_access], 1u);
  EXPECT_EQ(t[DriverOp::unmap], 2u);
  EXPECT_EQ(t[DriverOp::release_page], 1u);
  EXPECT_EQ(t[DriverOp::unreserve], 1u);
  EXPECT_EQ(t.total(), 8u);
  EXPECT_EQ(c.calls(DriverOp::unmap), 2u);
  EXPECT_EQ(c.calls(DriverOp::copy), 0u);
  EXPECT_EQ(c.this_thread().by_op, t.by_op) << "every call was made on this thread";
}

TEST(CountingBackend, AChunkIsOneCreateAndOneMapHoweverManyPagesItHas) {
  CountingBackend c(make_host_backend());
  auto va = c.reserve(4 * kPageBytes);
  auto chunk = c.create_chunk(4);
  ASSERT_TRUE(va.ok() && chunk.ok());
  ASSERT_TRUE(c.map(*va, *chunk).ok());
  ASSERT_TRUE(c.set_access(*va, 4 * kPageBytes).ok());
  ASSERT_TRUE(c.unmap(*va, 4 * kPageBytes).ok());
  ASSERT_TRUE(c.release_page(*chunk).ok());
  ASSERT_TRUE(c.unreserve(*va, 4 * kPageBytes).ok());
  const DriverCallCounts t = c.totals();
  EXPECT_EQ(t[DriverOp::create_page], 1u);
  EXPECT_EQ(t[DriverOp::map], 1u);
  EXPECT_EQ(t[DriverOp::set_access], 1u);
  EXPECT_EQ(t[DriverOp::unmap], 1u);
  EXPECT_EQ(t[DriverOp::release_page], 1u);
}

TEST(CountingBackend, ThreadScopeSeesOnlyThisThreadsCallsSinceItBegan) {
  CountingBackend c(make_host_backend());
  ASSERT_TRUE(c.memory_info().ok());  // before the scope: not in it
  ThreadDriverCalls scope(c);
  EXPECT_EQ(scope.made().total(), 0u);
  std::thread other([&] {
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(c.memory_info().ok());
  });
  other.join();
  EXPECT_EQ(scope.made().total(), 0u) << "another thread's calls leaked into this thread's count";
  auto e = c.create_event();
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE(c.query_event(*e).ok());
  ASSERT_TRUE(c.destroy_event(*e).ok());
  const DriverCallCounts made = scope.made();
  EXPECT_EQ(made.total(), 3u);
  EXPECT_EQ(made[DriverOp::create_event], 1u);
  EXPECT_EQ(made[DriverOp::query_event], 1u);
  EXPECT_EQ(made[DriverOp::destroy_event], 1u);
  EXPECT_EQ(c.calls(DriverOp::memory_info), 11u);
}

// Threads making different numbers of calls at the same time: each thread's own count is exact,
// and the totals are their sum.
TEST(CountingBackend, PerThreadCountsAreExactUnderConcurrency) {
  constexpr int kThreads = 8;
  CountingBackend c(make_host_backend());
  std::barrier start(kThreads);
  std::vector<std::uint64_t> own(kThreads), own_records(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      ThreadDriverCalls scope(c);
      for (int i = 0; i < 200 * (t + 1); ++i) {
        auto e = c.create_event();
        if (!e.ok() || !c.record_event(*e, Stream{}).ok() || !c.synchronize_event(*e).ok() ||
            !c.destroy_event(*e).ok())
          failures.fetch_add(1);
      }
      own[t] = scope.made().total();
      own_records[t] = scope.made()[DriverOp::record_event];
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  std::uint64_t sum = 0;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(own[t], 4u * 200 * (t + 1)) << "thread " << t;
    EXPECT_EQ(own_records[t], 200u * (t + 1)) << "thread " << t;
    sum += own[t];
  }
  EXPECT_EQ(c.totals().total(), sum);
  EXPECT_EQ(c.this_thread().total(), 0u) << "the main thread made no call";
}

// A thread that calls through many backends, most of them short-lived (a test making a heap per
// case), keeps each live backend's count exact.
TEST(CountingBackend, BackendsOnOneThreadAreCountedApart) {
  CountingBackend kept(make_host_backend());
  ASSERT_TRUE(kept.memory_info().ok());
  for (int i = 0; i < 50; ++i) {
    CountingBackend brief(make_host_backend(1));
    for (int k = 0; k <= i % 3; ++k) ASSERT_TRUE(brief.memory_info().ok());
    EXPECT_EQ(brief.this_thread().total(), std::uint64_t(i % 3 + 1));
    ASSERT_TRUE(kept.memory_info().ok());
  }
  EXPECT_EQ(kept.this_thread().total(), 51u);
  EXPECT_EQ(kept.totals().total(), 51u);
}

// Stacked over the fault injector, the counter sees the calls that then fail.
TEST(CountingBackend, CountsCallsThatFailBelowIt) {
  auto faulty = std::make_unique<FaultInjectingBackend>(make_host_backend());
  FaultInjectingBackend& f = *faulty;
  CountingBackend c(std::move(faulty));
  f.fail_nth(FaultOp::create_page, 1);
  EXPECT_EQ(c.create_page().code(), Errc::driver_error);
  EXPECT_EQ(c.calls(DriverOp::create_page), 1u);
  EXPECT_EQ(f.calls(FaultOp::create_page), 1u);
  EXPECT_EQ(f.faults(FaultOp::create_page), 1u);
}

// Each call's time is added to its operation and to the kind of thread the probe names: a
// driver call delayed below the counter is timed at least that long, on the right kind.
std::size_t t_kind = 0;
TEST(CountingBackend, TimesEachCallByOpAndByTheKindOfThreadThatMadeIt) {
  auto faulty = std::make_unique<FaultInjectingBackend>(make_host_backend());
  FaultInjectingBackend& f = *faulty;
  CountingBackend c(std::move(faulty));
  c.set_thread_kind_probe([] { return t_kind; });
  EXPECT_EQ(c.times().total_ns(), 0u);
  f.delay_calls(FaultOp::create_page, std::chrono::milliseconds(3));
  t_kind = 2;
  auto p = c.create_page();
  ASSERT_TRUE(p.ok());
  f.disarm_all();
  std::thread other([&] {
    t_kind = 1;  // this thread's own kind
    ASSERT_TRUE(c.release_page(*p).ok());
  });
  other.join();
  t_kind = 0;
  ASSERT_TRUE(c.memory_info().ok());

  const DriverCallTimes t = c.times();
  EXPECT_GE(t.op_ns(DriverOp::create_page), 3'000'000u) << "the delay is inside the timed call";
  EXPECT_EQ(t.ns[2][std::size_t(DriverOp::create_page)], t.op_ns(DriverOp::create_page));
  EXPECT_GT(t.ns[1][std::size_t(DriverOp::release_page)], 0u);
  EXPECT_EQ(t.thread_kind_ns(1), t.ns[1][std::size_t(DriverOp::release_page)]);
  EXPECT_GT(t.ns[0][std::size_t(DriverOp::memory_info)], 0u);
  EXPECT_EQ(t.thread_kind_ns(3), 0u);
  EXPECT_EQ(t.total_ns(), t.thread_kind_ns(0) + t.thread_kind_ns(1) + t.thread_kind_ns(2));
  EXPECT_EQ(t.op_ns(DriverOp::map), 0u);
}

// The heap's door times its mapper's calls on the mapper's kind: stats() reports them apart.
TEST(CountingBackend, AHeapsStatsSplitTheDriversTimeByRole) {
  Config c;
  c.capacity = 256 * test::kMiB;
  auto heap = Heap::create(test::open_host_backend(c.capacity), c);
  ASSERT_TRUE(heap.ok());
  auto h = (*heap)->allocate(64 * kPageBytes);  // a miss: the mapper's calls (background misses)
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*heap)->pin(*h).ok());  // waits for the mapper's calls
  const HeapStats s = (*heap)->stats();
  const HeapStats::DriverTime& t = s.driver_calls.time;
  EXPECT_GT(t.total_ns, 0u);
  EXPECT_GT(t.mapper_ns, 0u) << "the miss's creates and maps ran on the mapper";
  EXPECT_EQ(t.total_ns, t.callers_ns + t.mapper_ns + t.keeper_ns + t.compaction_ns);
  EXPECT_EQ(t.total_ns, (*heap)->driver_calls().times().total_ns());
}

}  // namespace
}  // namespace valet
