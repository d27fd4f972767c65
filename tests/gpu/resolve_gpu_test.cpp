// Kernels resolve handles on the device while the background compactor runs; every byte they
// read is checked. Skips cleanly where no GPU is usable.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "valet/compactor.h"
#include "valet/cuda_backend.h"
#include "valet/runtime.h"

extern const unsigned char valet_test_kernels_fatbin[];
extern const std::size_t valet_test_kernels_fatbin_size;

namespace valet {
namespace {

constexpr std::size_t kMebibyte = std::size_t{1} << 20;

// Objects the test holds, with the seed of each one's pattern.
using LiveObjects = std::vector<std::pair<Handle, std::uint64_t>>;

// A policy that compacts at every chance: any fragmentation, any page to gain, never idle enough.
PolicySettings aggressive_policy() {
  PolicySettings aggressive;
  aggressive.interval_ms = 1;
  aggressive.fragmentation_threshold = 0.01;
  aggressive.idle_allocs_per_second = 1e9;
  aggressive.min_reclaim_pages = 1;
  aggressive.max_occupancy = 0.95;
  return aggressive;
}

// Churn: new objects with patterns, random frees (so pages thin out and objects move).
void churn(Heap& heap, std::mt19937_64& rng, LiveObjects& live) {
  for (int i = 0; i < 300; ++i) {
    const std::size_t bytes = 1 + rng() % (rng() % 10 == 0 ? 3 * kMebibyte : 100000);
    auto h = heap.allocate(bytes);
    ASSERT_TRUE(h.ok()) << h.error().to_string();
    const std::uint64_t seed = rng();
    auto p = heap.pin(*h);
    PatternRange r{p->address(), p->size(), seed};
    ASSERT_TRUE(heap.backend().fill_pattern({&r, 1}, Stream{}).ok());
    live.emplace_back(*h, seed);
  }
  ASSERT_TRUE(heap.backend().synchronize_stream(Stream{}).ok());
  for (int i = 0; i < 200 && !live.empty(); ++i) {
    const std::size_t k = rng() % live.size();
    ASSERT_TRUE(heap.free(live[k].first).ok());
    live[k] = live.back();
    live.pop_back();
  }
}

// One launch of the kernel over every live object: it resolves each handle on the device, checks
// the object's pattern, and counts the bad bytes into `counter`. The arguments live in heap
// objects too (handles, seeds, counter), written here.
void launch_check(Heap& heap, CudaModule& module, CudaModule::Kernel kernel, Stream stream, const LiveObjects& live,
                  Handle handles, Handle seeds, Handle counter) {
  std::vector<kernels::DeviceHandle> hv;
  std::vector<std::uint64_t> sv;
  for (auto& [h, s] : live) {
    hv.push_back({h.index, h.generation, h.heap});
    sv.push_back(s);
  }
  const std::uint64_t zero = 0;
  auto scope = heap.pin_table(stream);
  ASSERT_TRUE(scope.ok()) << scope.error().to_string();
  auto hp = heap.pin(handles), sp = heap.pin(seeds), cp = heap.pin(counter);
  ASSERT_TRUE(heap.backend().write(hp->address(), hv.data(), hv.size() * sizeof(hv[0])).ok());
  ASSERT_TRUE(heap.backend().write(sp->address(), sv.data(), sv.size() * sizeof(sv[0])).ok());
  ASSERT_TRUE(heap.backend().write(cp->address(), &zero, sizeof zero).ok());
  kernels::DeviceHandleTable table = scope->table();
  const DevicePtr hptr = hp->address(), sptr = sp->address(), cptr = cp->address();
  const unsigned int count = unsigned(live.size());
  auto launched =
      module.launch(kernel, LaunchShape{.grid = 264, .block = 256}, stream, table, hptr, sptr, count, cptr);
  ASSERT_TRUE(launched.ok()) << launched.error().to_string();
  // The scope and the pins end here, on the host, while the kernel may still run: the
  // table scope's release is stream-ordered, so nothing moves until the kernel is done.
  ASSERT_TRUE(scope->release().ok());
}

// Allocates the kernel's arguments, launches it, waits for it, and checks that no byte was bad.
void check_round(Heap& heap, CudaModule& module, CudaModule::Kernel kernel, Stream stream, const LiveObjects& live,
                 int round) {
  const std::uint32_t n = std::uint32_t(live.size());
  auto handles = *heap.allocate(n * sizeof(kernels::DeviceHandle));
  auto seeds = *heap.allocate(n * sizeof(std::uint64_t));
  auto counter = *heap.allocate(sizeof(std::uint64_t));
  ASSERT_NO_FATAL_FAILURE(launch_check(heap, module, kernel, stream, live, handles, seeds, counter));
  ASSERT_TRUE(heap.backend().synchronize_stream(stream).ok());
  std::uint64_t bad = ~0ull;
  ASSERT_TRUE(heap.backend().read(&bad, heap.pin(counter)->address(), sizeof bad).ok());
  ASSERT_EQ(bad, 0u) << "round " << round;
  for (Handle h : {handles, seeds, counter}) ASSERT_TRUE(heap.free(h).ok());
}

TEST(ResolveOnGpu, KernelsReadObjectsThroughHandlesWhileTheCompactorRuns) {
  if (!cuda_usable()) GTEST_SKIP() << "no usable GPU: " << cuda_unusable_reason();
  Config c;
  c.capacity = 2048 * kMebibyte;
  auto heap = std::move(open_heap(BackendOptions{.choice = BackendChoice::cuda}, c)).value();
  auto module = CudaModule::load(valet_test_kernels_fatbin, 0);
  ASSERT_TRUE(module.ok()) << module.error().to_string();
  auto kernel = (*module)->kernel("valet_test_resolve_verify");
  ASSERT_TRUE(kernel.ok()) << kernel.error().to_string();
  auto stream = *heap->backend().create_stream();
  auto compactor = std::move(Compactor::start(*heap, aggressive_policy())).value();

  std::mt19937_64 rng(11);
  LiveObjects live;
  std::uint64_t launches = 0, objects_checked = 0;
  for (int round = 0; round < 40; ++round) {
    ASSERT_NO_FATAL_FAILURE(churn(*heap, rng, live));
    ASSERT_NO_FATAL_FAILURE(check_round(*heap, **module, *kernel, stream, live, round));
    ++launches;
    objects_checked += live.size();
  }
  compactor->stop();
  const auto stats = heap->stats();
  std::printf("launches %llu, objects resolved and checked %llu, compaction cycles %llu, objects moved %llu\n",
              (unsigned long long)launches, (unsigned long long)objects_checked,
              (unsigned long long)stats.compaction.cycles, (unsigned long long)stats.compaction.objects_moved);
  EXPECT_GT(stats.compaction.objects_moved, 0u) << "the compactor must have moved objects between launches";
  ASSERT_TRUE(heap->validate().ok());
  ASSERT_TRUE(heap->backend().destroy_stream(stream).ok());
}

}  // namespace
}  // namespace valet
