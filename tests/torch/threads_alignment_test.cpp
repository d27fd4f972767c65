// The pointer map under many threads (allocations and frees of one another's pointers at once),
// the figures it keeps, and the 512-byte alignment PyTorch relies on, over sizes 1..4 MiB.
#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "torch_test_util.h"

namespace valet::torch::test {
namespace {

using Threads = TorchHeapTest;

struct Block {
  std::uint64_t* p;
  std::size_t size;
  std::uint64_t tag;
};

TEST_F(Threads, EightThreadsAllocateAndFreeOneAnothersPointers) {
  use_heap("256MiB", "background=true,interval_ms=1");  // the compactor runs meanwhile
  constexpr int kThreads = 8, kSteps = 3000;
  std::mutex handoff_mutex;
  std::deque<Block> handoff;  // blocks one thread allocated for another to free
  std::atomic<std::uint64_t> bad{0}, failed{0};
  auto worker = [&](int id) {
    std::mt19937_64 rng(std::uint64_t(id) * 7919 + 1);
    std::vector<Block> mine;
    auto release = [&](const Block& b) {
      if (*b.p != b.tag || b.p[b.size / 8 - 1] != ~b.tag) bad.fetch_add(1);
      valet_torch_free(b.p, b.size, 0, nullptr);
    };
    for (int step = 0; step < kSteps; ++step) {
      const std::uint64_t r = rng();
      if (mine.size() < 48 && r % 3 != 0) {
        std::size_t size = 8 * (2 + rng() % 4095);          // 16 bytes to 32 KiB: two tag words
        if (r % 97 == 0) size = (std::size_t{1} << 20) * (1 + rng() % 3);  // a few large objects
        auto* p = static_cast<std::uint64_t*>(valet_torch_malloc(size, 0, nullptr));
        if (!p) {
          failed.fetch_add(1);
          continue;
        }
        const std::uint64_t tag = (std::uint64_t(id) << 48) | std::uint64_t(step);
        p[0] = tag;
        p[size / 8 - 1] = ~tag;
        mine.push_back({p, size, tag});
      } else if (!mine.empty()) {
        const std::size_t i = rng() % mine.size();
        const Block b = mine[i];
        mine[i] = mine.back();
        mine.pop_back();
        if (r % 2) {
          release(b);
        } else {
          std::lock_guard lock(handoff_mutex);
          handoff.push_back(b);
        }
      }
      std::optional<Block> theirs;
      {
        std::lock_guard lock(handoff_mutex);
        if (!handoff.empty() && r % 5 == 0) {
          theirs = handoff.front();
          handoff.pop_front();
        }
      }
      if (theirs) release(*theirs);
    }
    for (const Block& b : mine) release(b);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  for (const Block& b : handoff) valet_torch_free(b.p, b.size, 0, nullptr);
  EXPECT_EQ(bad.load(), 0u) << "a block's bytes changed under its owner";
  EXPECT_EQ(failed.load(), 0u) << last_error();
  const auto s = stats();
  EXPECT_EQ(s["allocations"], 0u);
  EXPECT_EQ(s["allocated_bytes"], 0u);
  EXPECT_EQ(s["fixed_objects"], 0u);
  EXPECT_GT(s["peak_allocated_bytes"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(test_hooks::live_pointers(0), 0u);
  EXPECT_EQ(test_hooks::validate(0), "");
}

using Figures = TorchHeapTest;

TEST_F(Figures, RequestedAndRoundedBytesAndTheirPeaks) {
  void* a = valet_torch_malloc(1, 0, nullptr);
  void* b = valet_torch_malloc(1000, 0, nullptr);
  void* c = valet_torch_malloc(5 << 20, 0, nullptr);
  ASSERT_TRUE(a && b && c) << last_error();
  auto s = stats();
  EXPECT_EQ(s["allocations"], 3u);
  EXPECT_EQ(s["allocated_bytes"], 1u + 1000u + (5u << 20));
  EXPECT_EQ(s["allocated_rounded_bytes"], 512u + 1024u + (5u << 20));
  EXPECT_EQ(s["fixed_objects"], 3u);
  EXPECT_GE(s["mapped_bytes"].get<std::uint64_t>(), 6u << 20);
  valet_torch_free(c, 5 << 20, 0, nullptr);
  s = stats();
  EXPECT_EQ(s["allocated_bytes"], 1001u);
  EXPECT_EQ(s["peak_allocated_bytes"], 1u + 1000u + (5u << 20));
  EXPECT_EQ(s["peak_allocated_rounded_bytes"], 512u + 1024u + (5u << 20));
  EXPECT_GE(s["peak_mapped_bytes"].get<std::uint64_t>(), 6u << 20);
  EXPECT_GE(s["peak_mapped_bytes"].get<std::uint64_t>(), s["mapped_bytes"].get<std::uint64_t>());
  valet_torch_free(a, 1, 0, nullptr);
  valet_torch_free(b, 1000, 0, nullptr);
}

using Alignment = TorchHeapTest;

TEST_F(Alignment, EveryPointerIs512ByteAlignedForSizesUpTo4MiB) {
  use_heap("256MiB", "background=false");
  std::vector<std::size_t> sizes;
  for (std::size_t s = 1; s <= 4096; ++s) sizes.push_back(s);
  for (std::size_t k = 1; k <= (std::size_t{4} << 20) / 256; k *= 2)  // around every power of two
    for (std::size_t s : {k * 256 - 1, k * 256, k * 256 + 1}) sizes.push_back(s);
  std::mt19937_64 rng(42);
  for (int i = 0; i < 3000; ++i) sizes.push_back(1 + rng() % (std::size_t{4} << 20));
  std::vector<std::pair<void*, std::size_t>> live;
  for (std::size_t size : sizes) {
    void* p = valet_torch_malloc(size, 0, nullptr);
    ASSERT_NE(p, nullptr) << size << " bytes: " << last_error();
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % 512, 0u) << size << " bytes at " << p;
    static_cast<char*>(p)[0] = 1;  // the whole request is mapped and writable
    static_cast<char*>(p)[size - 1] = 1;
    live.emplace_back(p, size);
    if (live.size() == 16) {  // keep a few live so that objects share pages
      for (auto [q, n] : live) valet_torch_free(q, n, 0, nullptr);
      live.clear();
    }
  }
  for (auto [q, n] : live) valet_torch_free(q, n, 0, nullptr);
  EXPECT_EQ(test_hooks::validate(0), "");
}

}  // namespace
}  // namespace valet::torch::test
