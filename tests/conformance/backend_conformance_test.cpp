// One conformance suite for every backend (typed tests): what the heap relies on, checked against
// every implementation of the Backend interface: the host emulation, the decorators the heap may
// be given (the fault injector disarmed, the call counter) over it, and the CUDA driver. A
// decorator must be invisible: it passes exactly what the backend under it passes. The CUDA
// instance skips without a usable GPU.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "valet/counting_backend.h"
#include "valet/cuda_backend.h"
#include "valet/fault_injection.h"
#include "valet/host_backend.h"
#include "valet/kernels/pattern.h"

namespace valet {
namespace {

constexpr std::size_t kPage = kPageBytes;

struct HostFactory {
  static constexpr const char* kName = "Host";
  static Result<std::unique_ptr<Backend>> open() {
    auto b = std::make_unique<BackendModel<HostBackend>>(HostBackendOptions{.capacity_bytes = 64 * kPage});
    VALET_TRY(b->impl().status());
    return std::unique_ptr<Backend>(std::move(b));
  }
  static std::size_t capacity_pages() { return 64; }
};

// The host backend under a decorator (BackendAdaptor): a FaultInjectingBackend with nothing
// armed, or a CountingBackend.
template <class Decorator>
Result<std::unique_ptr<Backend>> open_decorated_host() {
  auto host = HostFactory::open();
  if (!host.ok()) return host.error();
  return std::unique_ptr<Backend>(std::make_unique<Decorator>(std::move(host).value()));
}

struct FaultsDisarmedFactory {
  static constexpr const char* kName = "HostFaultsDisarmed";
  static Result<std::unique_ptr<Backend>> open() { return open_decorated_host<FaultInjectingBackend>(); }
  static std::size_t capacity_pages() { return HostFactory::capacity_pages(); }
};

struct CountingFactory {
  static constexpr const char* kName = "HostCounted";
  static Result<std::unique_ptr<Backend>> open() { return open_decorated_host<CountingBackend>(); }
  static std::size_t capacity_pages() { return HostFactory::capacity_pages(); }
};

struct CudaFactory {
  static constexpr const char* kName = "Cuda";
  static Result<std::unique_ptr<Backend>> open() { return open_cuda_backend(0); }
  static std::size_t capacity_pages() { return 0; }  // the device's own memory
};

struct FactoryNames {
  template <class T>
  static std::string GetName(int) {
    return T::kName;
  }
};

template <class Factory>
class BackendConformance : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = Factory::open();
    if (!b.ok()) {
      if (b.code() == Errc::unsupported) GTEST_SKIP() << b.error().to_string();
      FAIL() << b.error().to_string();
    }
    backend_ = std::move(b).value();
  }
  void TearDown() override {
    if (!backend_) return;
    ASSERT_TRUE(backend_->synchronize_stream(Stream{}).ok());
    for (auto [va, n] : mapped_) (void)backend_->unmap(va, n);
    for (auto p : pages_) (void)backend_->release_page(p);
    for (auto [va, n] : reservations_) EXPECT_TRUE(backend_->unreserve(va, n).ok());
  }

  DevicePtr reserve(std::size_t pages) {
    auto r = backend_->reserve(pages * kPage);
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    reservations_.emplace_back(*r, pages * kPage);
    return *r;
  }
  PhysicalPage create() {
    auto p = backend_->create_page();
    EXPECT_TRUE(p.ok()) << p.error().to_string();
    pages_.push_back(*p);
    return *p;
  }
  void map(DevicePtr va, PhysicalPage p) {
    auto s = backend_->map(va, p);
    ASSERT_TRUE(s.ok()) << s.error().to_string();
    ASSERT_TRUE(backend_->set_access(va, kPage).ok());
    mapped_.emplace_back(va, kPage);
  }
  void unmap(DevicePtr va) {
    ASSERT_TRUE(backend_->unmap(va, kPage).ok());
    auto it = std::find(mapped_.begin(), mapped_.end(), std::pair{va, kPage});
    if (it != mapped_.end()) mapped_.erase(it);
  }
  void fill(DevicePtr va, std::size_t n, std::uint64_t seed) {
    PatternRange r{va, n, seed};
    ASSERT_TRUE(backend_->fill_pattern({&r, 1}, Stream{}).ok());
    ASSERT_TRUE(backend_->synchronize_stream(Stream{}).ok());
  }
  std::uint64_t mismatches(DevicePtr va, std::size_t n, std::uint64_t seed) {
    PatternRange r{va, n, seed};
    auto v = backend_->verify_pattern({&r, 1}, Stream{});
    EXPECT_TRUE(v.ok()) << v.error().to_string();
    return v.ok() ? *v : ~0ull;
  }

  std::unique_ptr<Backend> backend_;
  std::vector<std::pair<DevicePtr, std::size_t>> reservations_, mapped_;
  std::vector<PhysicalPage> pages_;
};

using Factories = ::testing::Types<HostFactory, FaultsDisarmedFactory, CountingFactory, CudaFactory>;
TYPED_TEST_SUITE(BackendConformance, Factories, FactoryNames);

TYPED_TEST(BackendConformance, ReportsGranularityAndCapabilities) {
  EXPECT_EQ(this->backend_->granularity(), kPage);
  auto info = this->backend_->memory_info();
  ASSERT_TRUE(info.ok());
  EXPECT_GT(info->total_bytes, 0u);
  EXPECT_LE(info->free_bytes, info->total_bytes);
  EXPECT_FALSE(this->backend_->name().empty());
}

TYPED_TEST(BackendConformance, RemapKeepsBytes) {
  const DevicePtr a = this->reserve(2);
  const PhysicalPage p = this->create();
  this->map(a, p);
  this->fill(a, kPage, 42);
  this->unmap(a);
  this->map(a + kPage, p);  // the same physical page elsewhere
  EXPECT_EQ(this->mismatches(a + kPage, kPage, 42), 0u);
}

TYPED_TEST(BackendConformance, AliasedMappingsShowSameBytes) {
  const DevicePtr a = this->reserve(1), b = this->reserve(1);
  const PhysicalPage p = this->create();
  this->map(a, p);
  this->map(b, p);
  this->fill(a, kPage, 7);
  EXPECT_EQ(this->mismatches(b, kPage, 7), 0u);
  const std::uint64_t word = 0x1122334455667788ull;
  ASSERT_TRUE(this->backend_->write(b + 4096, &word, 8).ok());
  std::uint64_t back = 0;
  ASSERT_TRUE(this->backend_->read(&back, a + 4096, 8).ok());
  EXPECT_EQ(back, word);
}

TYPED_TEST(BackendConformance, SwappingPagesMovesContents) {
  const DevicePtr va = this->reserve(2);
  const PhysicalPage p = this->create(), q = this->create();
  this->map(va, p);
  this->map(va + kPage, q);
  this->fill(va, kPage, 1);
  this->fill(va + kPage, kPage, 2);
  this->unmap(va);
  this->unmap(va + kPage);
  this->map(va, q);
  this->map(va + kPage, p);
  EXPECT_EQ(this->mismatches(va, kPage, 2), 0u);
  EXPECT_EQ(this->mismatches(va + kPage, kPage, 1), 0u);
}

TYPED_TEST(BackendConformance, RefusesWhatCudaRefuses) {
  const DevicePtr va = this->reserve(2);
  const PhysicalPage p = this->create(), q = this->create();
  this->map(va, p);
  EXPECT_EQ(this->backend_->map(va, q).code(), Errc::invalid_state) << "map onto a mapped page";
  EXPECT_EQ(this->backend_->set_access(va + kPage, kPage).code(), Errc::invalid_state)
      << "set access on an unmapped page";
  EXPECT_EQ(this->backend_->unmap(va, 2 * kPage).code(), Errc::invalid_state) << "unmap of a half-mapped range";
  EXPECT_EQ(this->backend_->unmap(va + kPage, kPage).code(), Errc::invalid_state) << "unmap of unmapped page";
  this->unmap(va);
  EXPECT_EQ(this->backend_->unmap(va, kPage).code(), Errc::invalid_state) << "double unmap";
  EXPECT_EQ(this->backend_->release_page(PhysicalPage{0xdeadbeef}).code(), Errc::not_found);
  EXPECT_EQ(this->backend_->query_event(Event{0x1234}).code(), Errc::not_found);
  EXPECT_EQ(this->backend_->reserve(0).code(), Errc::invalid_argument);
  // The page that was mapped and unmapped is still usable.
  this->map(va + kPage, p);
  this->fill(va + kPage, 4096, 3);
  EXPECT_EQ(this->mismatches(va + kPage, 4096, 3), 0u);
}

TYPED_TEST(BackendConformance, ReleaseOfUnmappedPageAndDoubleRelease) {
  auto p = this->backend_->create_page();
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(this->backend_->release_page(*p).ok());
  EXPECT_EQ(this->backend_->release_page(*p).code(), Errc::not_found);
}

TYPED_TEST(BackendConformance, BatchedCopyOfMixedUnalignedRanges) {
  constexpr std::size_t kPages = 16;
  const DevicePtr src = this->reserve(kPages), dst = this->reserve(kPages);
  for (std::size_t i = 0; i < kPages; ++i) {
    this->map(src + i * kPage, this->create());
    this->map(dst + i * kPage, this->create());
  }
  std::random_device rd;
  const std::uint64_t seed = (std::uint64_t(rd()) << 32) | rd();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  // Thousands of non-overlapping ranges: odd lengths from 1 byte up, unaligned offsets, some
  // crossing page boundaries. Sources and destinations are laid out in shuffled orders.
  std::vector<std::size_t> lengths;
  std::size_t total = 0;
  while (true) {
    const int kind = int(rng() % 10);
    std::size_t n = kind < 5 ? 1 + rng() % 64 : kind < 9 ? 1 + rng() % 8192 : 1 + rng() % (128 << 10);
    if (8 + total + n + 8 > kPages * kPage) break;
    lengths.push_back(n);
    total += n + 8;  // room for the gaps (< 8 bytes) that leave offsets unaligned
    if (lengths.size() >= 4000) break;
  }
  const std::size_t count = lengths.size();
  ASSERT_GT(count, 1000u);
  auto layout = [&](DevicePtr base, std::vector<std::size_t> order) {
    std::vector<DevicePtr> at(count);
    DevicePtr cursor = base + rng() % 8;
    for (std::size_t k : order) {
      at[k] = cursor;
      cursor += lengths[k] + rng() % 8;
    }
    EXPECT_LE(cursor, base + kPages * kPage);
    return at;
  };
  std::vector<std::size_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  const auto src_at = layout(src, order);
  std::shuffle(order.begin(), order.end(), rng);
  const auto dst_at = layout(dst, order);

  std::vector<PatternRange> fills, checks;
  std::vector<CopyRange> copies;
  for (std::size_t k = 0; k < count; ++k) {
    fills.push_back({src_at[k], lengths[k], seed + k});
    checks.push_back({dst_at[k], lengths[k], seed + k});
    copies.push_back({src_at[k], dst_at[k], lengths[k]});
  }
  auto s = this->backend_->create_stream();
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(this->backend_->fill_pattern(fills, *s).ok());
  ASSERT_TRUE(this->backend_->copy(copies, *s).ok());
  copies.assign(copies.size(), CopyRange{});  // the span may be reused once copy() returned
  auto bad = this->backend_->verify_pattern(checks, *s);
  ASSERT_TRUE(bad.ok()) << bad.error().to_string();
  EXPECT_EQ(*bad, 0u);
  // And the verify really checks: one flipped byte is seen.
  std::uint8_t byte = 0;
  ASSERT_TRUE(this->backend_->read(&byte, dst_at[count / 2], 1).ok());
  byte ^= 0xff;
  ASSERT_TRUE(this->backend_->write(dst_at[count / 2], &byte, 1).ok());
  bad = this->backend_->verify_pattern(checks, *s);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(*bad, 1u);
  ASSERT_TRUE(this->backend_->destroy_stream(*s).ok());
}

TYPED_TEST(BackendConformance, EventCompletesAfterQueuedWork) {
  const DevicePtr va = this->reserve(4);
  for (int i = 0; i < 4; ++i) this->map(va + i * kPage, this->create());
  auto s = this->backend_->create_stream();
  auto e = this->backend_->create_event();
  ASSERT_TRUE(s.ok() && e.ok());
  auto never = this->backend_->query_event(*e);
  ASSERT_TRUE(never.ok());
  EXPECT_TRUE(*never) << "an event never recorded is complete";
  // Queue a lot of work, then the event: once the event reports done, the work must be visible.
  for (int round = 0; round < 8; ++round) {
    PatternRange r{va, 4 * kPage, std::uint64_t(100 + round)};
    ASSERT_TRUE(this->backend_->fill_pattern({&r, 1}, *s).ok());
    ASSERT_TRUE(this->backend_->record_event(*e, *s).ok());
    ASSERT_TRUE(this->backend_->synchronize_event(*e).ok());
    auto done = this->backend_->query_event(*e);
    ASSERT_TRUE(done.ok());
    EXPECT_TRUE(*done);
    std::uint8_t b = 0;
    ASSERT_TRUE(this->backend_->read(&b, va + 4 * kPage - 1, 1).ok());
    EXPECT_EQ(b, kernels::pattern_byte(100 + round, 4 * kPage - 1));
  }
  // A second stream that waits on the event runs after the first stream's work.
  auto s2 = this->backend_->create_stream();
  ASSERT_TRUE(s2.ok());
  PatternRange first{va, kPage, 500}, second{va, kPage, 501};
  ASSERT_TRUE(this->backend_->fill_pattern({&first, 1}, *s).ok());
  ASSERT_TRUE(this->backend_->record_event(*e, *s).ok());
  ASSERT_TRUE(this->backend_->stream_wait_event(*s2, *e).ok());
  ASSERT_TRUE(this->backend_->fill_pattern({&second, 1}, *s2).ok());
  ASSERT_TRUE(this->backend_->synchronize_stream(*s2).ok());
  EXPECT_EQ(this->mismatches(va, kPage, 501), 0u);
  ASSERT_TRUE(this->backend_->destroy_event(*e).ok());
  ASSERT_TRUE(this->backend_->destroy_stream(*s).ok());
  ASSERT_TRUE(this->backend_->destroy_stream(*s2).ok());
}

TYPED_TEST(BackendConformance, FailureMidMultiPageMapUnwinds) {
  // A fault injected at the third map: the caller unwinds what it did, and the backend is left
  // exactly as before (every page unmapped and releasable, the range mappable again).
  auto* raw = this->backend_.release();
  auto faulty = std::make_unique<FaultInjectingBackend>(std::unique_ptr<Backend>(raw));
  this->backend_ = std::move(faulty);
  auto& fb = static_cast<FaultInjectingBackend&>(*this->backend_);
  const DevicePtr va = this->reserve(4);
  std::vector<PhysicalPage> pages;
  for (int i = 0; i < 4; ++i) pages.push_back(this->create());
  fb.fail_nth(FaultOp::map, 3);
  std::size_t done = 0;
  Status failure;
  for (; done < 4; ++done) {
    auto st = fb.map(va + done * kPage, pages[done]);
    if (!st.ok()) {
      failure = st;
      break;
    }
  }
  ASSERT_EQ(done, 2u);
  EXPECT_EQ(failure.code(), Errc::driver_error);
  ASSERT_TRUE(fb.unmap(va, done * kPage).ok());
  EXPECT_EQ(fb.faults(FaultOp::map), 1u);
  for (int i = 0; i < 4; ++i) this->map(va + i * kPage, pages[i]);
  this->fill(va, 4 * kPage, 9);
  EXPECT_EQ(this->mismatches(va, 4 * kPage, 9), 0u);
}

TYPED_TEST(BackendConformance, OutOfMemoryAtCapacityIsCleanAndLeaksNothing) {
  if (TypeParam::capacity_pages() == 0) GTEST_SKIP() << "filling a real device's memory is not a unit test";
  std::vector<PhysicalPage> pages;
  Errc last = Errc::ok;
  for (std::size_t i = 0; i <= TypeParam::capacity_pages(); ++i) {
    auto p = this->backend_->create_page();
    if (!p.ok()) {
      last = p.code();
      break;
    }
    pages.push_back(*p);
  }
  EXPECT_EQ(last, Errc::out_of_memory);
  EXPECT_EQ(pages.size(), TypeParam::capacity_pages());
  auto info = this->backend_->memory_info();
  EXPECT_EQ(info->free_bytes, 0u);
  for (auto p : pages) ASSERT_TRUE(this->backend_->release_page(p).ok());
  info = this->backend_->memory_info();
  EXPECT_EQ(info->free_bytes, info->total_bytes);
  auto again = this->backend_->create_page();
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(this->backend_->release_page(*again).ok());
}

// Chunks (create_chunk): one physical allocation of several pages, mapped, unmapped and granted
// access to only as a whole, as the driver requires (docs/speed.md, session 21).
TYPED_TEST(BackendConformance, AChunkMapsWholeKeepsItsBytesAndMovesWhole) {
  const DevicePtr a = this->reserve(6), b = this->reserve(4);
  auto c = this->backend_->create_chunk(4);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  this->pages_.push_back(*c);
  EXPECT_EQ(this->backend_->create_chunk(0).code(), Errc::invalid_argument);
  // Mapped at a + 1 page: all four pages at once, then access over the whole mapping.
  ASSERT_TRUE(this->backend_->map(a + kPage, *c).ok());
  EXPECT_EQ(this->backend_->set_access(a + kPage, kPage).code(), Errc::invalid_state) << "access to part of a chunk";
  ASSERT_TRUE(this->backend_->set_access(a + kPage, 4 * kPage).ok());
  this->mapped_.emplace_back(a + kPage, 4 * kPage);
  this->fill(a + kPage, 4 * kPage, 31);
  // What the driver refuses: a page of it mapped over, part of it unmapped, a range that
  // straddles its end; each leaves the mapping and its bytes as they were.
  const PhysicalPage p = this->create();
  EXPECT_EQ(this->backend_->map(a + 2 * kPage, p).code(), Errc::invalid_state);
  EXPECT_EQ(this->backend_->unmap(a + kPage, kPage).code(), Errc::invalid_state) << "unmap of part of a chunk";
  EXPECT_EQ(this->backend_->unmap(a + 2 * kPage, 3 * kPage).code(), Errc::invalid_state) << "a range past its end";
  this->map(a + 5 * kPage, p);  // a page right after it
  EXPECT_EQ(this->backend_->unmap(a + 4 * kPage, 2 * kPage).code(), Errc::invalid_state)
      << "a range from its last page into the next mapping";
  EXPECT_EQ(this->mismatches(a + kPage, 4 * kPage, 31), 0u);
  // Mapped whole at a second address too: the same bytes.
  ASSERT_TRUE(this->backend_->map(b, *c).ok());
  ASSERT_TRUE(this->backend_->set_access(b, 4 * kPage).ok());
  EXPECT_EQ(this->mismatches(b, 4 * kPage, 31), 0u);
  // An unmap that covers it whole and the page after it, in one call.
  ASSERT_TRUE(this->backend_->unmap(a + kPage, 5 * kPage).ok());
  this->mapped_.clear();
  // Released while the alias still maps it: its memory stays until that mapping goes.
  ASSERT_TRUE(this->backend_->release_page(*c).ok());
  this->pages_.erase(std::find(this->pages_.begin(), this->pages_.end(), *c));
  EXPECT_EQ(this->backend_->map(a, *c).code(), Errc::not_found) << "map of a released chunk";
  EXPECT_EQ(this->mismatches(b, 4 * kPage, 31), 0u);
  ASSERT_TRUE(this->backend_->unmap(b, 4 * kPage).ok());
}

TYPED_TEST(BackendConformance, AChunkCountsItsPagesAgainstTheCapacity) {
  if (TypeParam::capacity_pages() == 0) GTEST_SKIP() << "filling a real device's memory is not a unit test";
  const std::size_t cap = TypeParam::capacity_pages();
  EXPECT_EQ(this->backend_->create_chunk(cap + 1).code(), Errc::out_of_memory);
  auto p = this->backend_->create_page();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(this->backend_->create_chunk(cap).code(), Errc::out_of_memory) << "one page is already taken";
  auto c = this->backend_->create_chunk(cap - 1);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_EQ(this->backend_->memory_info()->free_bytes, 0u);
  EXPECT_EQ(this->backend_->create_page().code(), Errc::out_of_memory);
  ASSERT_TRUE(this->backend_->release_page(*c).ok());
  ASSERT_TRUE(this->backend_->release_page(*p).ok());
  auto info = this->backend_->memory_info();
  EXPECT_EQ(info->free_bytes, info->total_bytes);
  // Pages freed one by one leave holes; a chunk still finds room while the capacity allows it.
  std::vector<PhysicalPage> pages;
  for (std::size_t i = 0; i < cap; ++i) pages.push_back(*this->backend_->create_page());
  for (std::size_t i = 0; i < cap; i += 2) ASSERT_TRUE(this->backend_->release_page(pages[i]).ok());
  auto half = this->backend_->create_chunk(cap / 2);
  ASSERT_TRUE(half.ok()) << half.error().to_string();
  ASSERT_TRUE(this->backend_->release_page(*half).ok());
  for (std::size_t i = 1; i < cap; i += 2) ASSERT_TRUE(this->backend_->release_page(pages[i]).ok());
}

// Host-only properties of the emulation.
TEST(HostBackend, ReleasedMemoryGoesBackToTheOs) {
  HostBackend b(HostBackendOptions{.capacity_bytes = 16 * kPage, .retained_bytes = 0});
  ASSERT_TRUE(b.status().ok());
  const std::size_t before = b.allocated_bytes();
  std::vector<PhysicalPage> pages;
  for (int i = 0; i < 8; ++i) pages.push_back(*b.create_page());
  EXPECT_GE(b.allocated_bytes(), before + 8 * kPage);
  auto va = b.reserve(kPage);
  ASSERT_TRUE(b.map(*va, pages[0]).ok());
  ASSERT_TRUE(b.release_page(pages[0]).ok());  // still mapped: memory stays until unmapped
  for (int i = 1; i < 8; ++i) ASSERT_TRUE(b.release_page(pages[i]).ok());
  EXPECT_GE(b.allocated_bytes(), before + kPage);
  EXPECT_LT(b.allocated_bytes(), before + 2 * kPage);
  ASSERT_TRUE(b.unmap(*va, kPage).ok());
  EXPECT_EQ(b.allocated_bytes(), before);
  EXPECT_EQ(b.pages_in_use(), 0u);
  ASSERT_TRUE(b.unreserve(*va, kPage).ok());
}

// Up to retained_bytes of released pages keep their memory, and the next creates take them
// (no new memory); past the bound a release returns its memory. The emulated device counts
// retained pages as free, and a recycled page maps and holds bytes as a new one.
TEST(HostBackend, ReleasedPagesUpToTheRetainedBytesKeepTheirMemoryForTheNextCreates) {
  HostBackend b(HostBackendOptions{.capacity_bytes = 8 * kPage, .retained_bytes = 2 * kPage});
  ASSERT_TRUE(b.status().ok());
  const std::size_t before = b.allocated_bytes();
  std::vector<PhysicalPage> pages;
  for (int i = 0; i < 8; ++i) pages.push_back(*b.create_page());
  EXPECT_EQ(b.create_page().error().code, Errc::out_of_memory);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(b.release_page(pages[i]).ok());
  EXPECT_EQ(b.retained_pages(), 2u);
  EXPECT_EQ(b.pages_in_use(), 4u);
  EXPECT_EQ(b.memory_info()->free_bytes, 4 * kPage);
  EXPECT_GE(b.allocated_bytes(), before + 6 * kPage);
  EXPECT_LT(b.allocated_bytes(), before + 7 * kPage);
  // The two retained pages come back without new memory, then two fresh ones commit theirs.
  const std::size_t kept = b.allocated_bytes();
  for (int i = 0; i < 2; ++i) pages[i] = *b.create_page();
  EXPECT_EQ(b.retained_pages(), 0u);
  EXPECT_EQ(b.allocated_bytes(), kept);
  for (int i = 2; i < 4; ++i) pages[i] = *b.create_page();
  EXPECT_GE(b.allocated_bytes(), kept + 2 * kPage);
  EXPECT_EQ(b.create_page().error().code, Errc::out_of_memory);
  // A recycled page maps, takes access and holds what is written through it.
  auto va = *b.reserve(kPage);
  ASSERT_TRUE(b.map(va, pages[0]).ok());
  ASSERT_TRUE(b.set_access(va, kPage).ok());
  std::memset(reinterpret_cast<void*>(va), 0x5a, kPage);
  EXPECT_EQ(reinterpret_cast<const unsigned char*>(va)[kPage - 1], 0x5a);
  ASSERT_TRUE(b.unmap(va, kPage).ok());
  ASSERT_TRUE(b.unreserve(va, kPage).ok());
  // A chunk that no retained run holds takes new memory, and the retained pages beyond the peak
  // of pages in use go back first; its release keeps what the bound allows.
  for (auto p : pages) ASSERT_TRUE(b.release_page(p).ok());
  EXPECT_EQ(b.retained_pages(), 2u);
  auto chunk = b.create_chunk(8);
  ASSERT_TRUE(chunk.ok()) << chunk.error().to_string();
  EXPECT_EQ(b.retained_pages(), 0u);
  ASSERT_TRUE(b.release_page(*chunk).ok());
  EXPECT_EQ(b.retained_pages(), 2u);
  EXPECT_EQ(b.pages_in_use(), 0u);
  EXPECT_LT(b.allocated_bytes(), before + 3 * kPage);
}

// Retained memory never takes the emulation past the most pages it had in use at once.
TEST(HostBackend, RetainedMemoryStaysWithinThePeakInUse) {
  HostBackend b(HostBackendOptions{.capacity_bytes = 8 * kPage});
  ASSERT_TRUE(b.status().ok());
  const std::size_t before = b.allocated_bytes();
  std::vector<PhysicalPage> pages;
  for (int i = 0; i < 4; ++i) pages.push_back(*b.create_page());
  ASSERT_TRUE(b.release_page(pages[0]).ok());
  ASSERT_TRUE(b.release_page(pages[2]).ok());
  EXPECT_EQ(b.retained_pages(), 2u);
  auto chunk = b.create_chunk(3);  // the two retained pages and one of new memory
  ASSERT_TRUE(chunk.ok()) << chunk.error().to_string();
  EXPECT_EQ(b.retained_pages(), 0u);
  EXPECT_EQ(b.pages_in_use(), 5u);
  EXPECT_LE(b.allocated_bytes(), before + 5 * kPage);
  ASSERT_TRUE(b.release_page(*chunk).ok());
  ASSERT_TRUE(b.release_page(pages[1]).ok());
  ASSERT_TRUE(b.release_page(pages[3]).ok());
  EXPECT_EQ(b.retained_pages(), 5u);
  EXPECT_LE(b.allocated_bytes(), before + 5 * kPage);
}

// A chunk takes retained memory of other sizes (runs of indices apart) before new memory: two
// pages retained apart make a chunk of two with no new memory (new memory would fit the peak
// here: the retained bytes are bounded below it), mapped as one range that holds what is written
// through it, unmapped only whole.
TEST(HostBackend, AChunkTakesRetainedPagesApartBeforeNewMemory) {
  HostBackend b(HostBackendOptions{.capacity_bytes = 8 * kPage, .retained_bytes = 2 * kPage});
  ASSERT_TRUE(b.status().ok());
  std::vector<PhysicalPage> pages;
  for (int i = 0; i < 8; ++i) pages.push_back(*b.create_page());
  for (int i : {0, 2, 4, 6}) ASSERT_TRUE(b.release_page(pages[i]).ok());
  EXPECT_EQ(b.retained_pages(), 2u);  // two of the four kept, one page each
  const std::size_t kept = b.allocated_bytes();
  auto chunk = b.create_chunk(2);
  ASSERT_TRUE(chunk.ok()) << chunk.error().to_string();
  EXPECT_EQ(b.retained_pages(), 0u);
  EXPECT_EQ(b.allocated_bytes(), kept) << "the chunk committed new memory while retained memory waited";
  auto va = *b.reserve(2 * kPage);
  ASSERT_TRUE(b.map(va, *chunk).ok());
  EXPECT_EQ(b.unmap(va, kPage).error().code, Errc::invalid_state) << "a chunk's mapping is unmapped whole";
  ASSERT_TRUE(b.set_access(va, 2 * kPage).ok());
  auto* bytes = reinterpret_cast<unsigned char*>(va);
  for (std::size_t i = 0; i < 2 * kPage; i += 4096) bytes[i] = static_cast<unsigned char>(1 + i / 4096);
  for (std::size_t i = 0; i < 2 * kPage; i += 4096) ASSERT_EQ(bytes[i], static_cast<unsigned char>(1 + i / 4096)) << i;
  ASSERT_TRUE(b.release_page(*chunk).ok());  // still mapped: its memory stays until the unmap
  EXPECT_EQ(bytes[kPage], static_cast<unsigned char>(1 + kPage / 4096));
  ASSERT_TRUE(b.unmap(va, 2 * kPage).ok());
  ASSERT_TRUE(b.unreserve(va, 2 * kPage).ok());
  EXPECT_EQ(b.retained_pages(), 2u);
  for (int i : {1, 3, 5, 7}) ASSERT_TRUE(b.release_page(pages[i]).ok());
  EXPECT_EQ(b.pages_in_use(), 0u);
}

TEST(HostBackend, InjectedDelayHoldsEventsBack) {
  HostBackend b(HostBackendOptions{.capacity_bytes = 4 * kPage});
  auto va = *b.reserve(kPage);
  auto p = *b.create_page();
  ASSERT_TRUE(b.map(va, p).ok());
  ASSERT_TRUE(b.set_access(va, kPage).ok());
  b.set_task_delay(std::chrono::milliseconds(50));
  auto s = *b.create_stream();
  auto e = *b.create_event();
  PatternRange r{va, kPage, 11};
  ASSERT_TRUE(b.fill_pattern({&r, 1}, s).ok());
  ASSERT_TRUE(b.record_event(e, s).ok());
  EXPECT_FALSE(*b.query_event(e)) << "the delayed fill cannot have finished yet";
  ASSERT_TRUE(b.synchronize_event(e).ok());
  EXPECT_TRUE(*b.query_event(e));
  b.set_task_delay(std::chrono::microseconds(0));
  EXPECT_EQ(*b.verify_pattern({&r, 1}, s), 0u);
  ASSERT_TRUE(b.destroy_stream(s).ok());
  ASSERT_TRUE(b.unmap(va, kPage).ok());
  ASSERT_TRUE(b.release_page(p).ok());
}

// Resident memory of this process (/proc/self/statm), to see what a backend costs up front.
std::size_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? std::size_t(resident) * std::size_t(sysconf(_SC_PAGESIZE)) : 0;
}

// HostBackendOptions::gpu_pace: each page call lasts at least a GPU driver's time for it, an
// access grant and an unmap per mapping in their range, so that eight pages mapped one by one
// cost several times what one chunk of eight does; calls from two threads take turns.
TEST(HostBackend, GpuPaceMakesPageCallsAsSlowAsADriversAndChunksCheaper) {
  using Clock = std::chrono::steady_clock;
  HostBackend b(HostBackendOptions{.capacity_bytes = 64 * kPage, .gpu_pace = true});
  ASSERT_TRUE(b.status().ok());
  auto va = b.reserve(16 * kPage);
  ASSERT_TRUE(va.ok());
  const auto us_since = [](Clock::time_point t0) {
    return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  };
  // Eight pages: eight creates, maps, releases; one access grant and one unmap over all eight,
  // each paced per mapping: at least 8 x (13.7 + 3.2 + 37.3 + 22.5 + 10.4) = 697 us.
  auto t0 = Clock::now();
  std::vector<PhysicalPage> pages;
  for (std::size_t i = 0; i < 8; ++i) {
    auto p = b.create_page();
    ASSERT_TRUE(p.ok());
    ASSERT_TRUE(b.map(*va + i * kPage, *p).ok());
    pages.push_back(*p);
  }
  ASSERT_TRUE(b.set_access(*va, 8 * kPage).ok());
  ASSERT_TRUE(b.unmap(*va, 8 * kPage).ok());
  for (const PhysicalPage p : pages) ASSERT_TRUE(b.release_page(p).ok());
  const double by_pages = us_since(t0);
  EXPECT_GE(by_pages, 697.0);
  // One chunk of the same eight pages: one of each, at least 8.8 + 1.5 + 25.7 + 17.7 + 15.3 = 69 us.
  t0 = Clock::now();
  auto chunk = b.create_chunk(8);
  ASSERT_TRUE(chunk.ok());
  ASSERT_TRUE(b.map(*va, *chunk).ok());
  ASSERT_TRUE(b.set_access(*va, 8 * kPage).ok());
  ASSERT_TRUE(b.unmap(*va, 8 * kPage).ok());
  ASSERT_TRUE(b.release_page(*chunk).ok());
  const double by_chunk = us_since(t0);
  EXPECT_GE(by_chunk, 69.0);
  EXPECT_GT(by_pages, 3 * by_chunk) << "a chunk is one mapping to pace, eight pages eight";
  // Two threads creating at once take turns: 2 x 20 creates of 13.7 us take at least 548 us.
  t0 = Clock::now();
  std::vector<PhysicalPage> made[2];
  std::thread other([&] {
    for (int i = 0; i < 20; ++i) made[1].push_back(*b.create_page());
  });
  for (int i = 0; i < 20; ++i) made[0].push_back(*b.create_page());
  other.join();
  EXPECT_GE(us_since(t0), 548.0);
  for (auto& v : made)
    for (const PhysicalPage p : v) ASSERT_TRUE(b.release_page(p).ok());
  ASSERT_TRUE(b.unreserve(*va, 16 * kPage).ok());
}

// Per-page state is made on first use: 64 TiB of emulated memory (2^25 pages) costs neither time
// nor host memory up front, and the emulation still refuses what CUDA refuses, at both ends of a
// 16 TiB reservation.
TEST(HostBackend, HugeCapacityIsCheapAndStillChecked) {
  const std::size_t rss_before = resident_bytes();
  const auto start = std::chrono::steady_clock::now();
  HostBackend b(HostBackendOptions{.capacity_bytes = std::size_t{1} << 46});
  ASSERT_TRUE(b.status().ok()) << b.status().error().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  EXPECT_LT(resident_bytes(), rss_before + (std::size_t{32} << 20)) << "per-page tables were built up front";
  auto info = b.memory_info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->total_bytes, std::size_t{1} << 46);
  EXPECT_EQ(info->free_bytes, info->total_bytes);

  const std::size_t span = std::size_t{1} << 44;
  auto va = b.reserve(span);
  ASSERT_TRUE(va.ok()) << va.error().to_string();
  const DevicePtr first = *va, last = *va + span - kPage;
  auto p = b.create_page(), q = b.create_page();
  ASSERT_TRUE(p.ok() && q.ok());
  ASSERT_TRUE(b.map(first, *p).ok());
  ASSERT_TRUE(b.map(last, *q).ok());
  EXPECT_EQ(b.map(first, *q).code(), Errc::invalid_state) << "map onto a mapped address";
  EXPECT_EQ(b.set_access(first + kPage, kPage).code(), Errc::invalid_state) << "access to an unmapped page";
  ASSERT_TRUE(b.set_access(first, kPage).ok());
  ASSERT_TRUE(b.set_access(last, kPage).ok());
  const std::uint64_t word = 0x0123456789abcdefull;
  std::uint64_t back = 0;
  ASSERT_TRUE(b.write(last + kPage - 8, &word, 8).ok());
  ASSERT_TRUE(b.read(&back, last + kPage - 8, 8).ok());
  EXPECT_EQ(back, word);
  EXPECT_EQ(b.unreserve(first, span).code(), Errc::invalid_state) << "unreserve under mapped pages";
  ASSERT_TRUE(b.unmap(first, kPage).ok());
  EXPECT_EQ(b.unmap(first, kPage).code(), Errc::invalid_state) << "double unmap";
  ASSERT_TRUE(b.release_page(*p).ok());
  EXPECT_EQ(b.release_page(*p).code(), Errc::not_found) << "double release";
  EXPECT_EQ(b.map(first, *p).code(), Errc::not_found) << "map of a released page";
  EXPECT_EQ(b.map(first, PhysicalPage{(std::uint64_t{1} << 25) + 1}).code(), Errc::not_found) << "page beyond the capacity";
  ASSERT_TRUE(b.unmap(last, kPage).ok());
  ASSERT_TRUE(b.release_page(*q).ok());
  EXPECT_EQ(b.pages_in_use(), 0u);
  ASSERT_TRUE(b.unreserve(first, span).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

// Beyond the most address space it can reserve, the emulation refuses the capacity at once.
TEST(HostBackend, RefusesCapacityItCannotBack) {
  for (std::size_t capacity : {(std::size_t{1} << 46) + kPage, std::size_t{1} << 49, std::size_t{1} << 62}) {
    HostBackend b(HostBackendOptions{.capacity_bytes = capacity});
    EXPECT_EQ(b.status().code(), Errc::invalid_argument) << capacity;
    if (!b.status().ok()) {
      EXPECT_NE(b.status().error().message.find("64 TiB"), std::string::npos);
    }
    EXPECT_EQ(b.create_page().code(), Errc::invalid_argument);
  }
}

using HostBackendDeathTest = ::testing::Test;
TEST_F(HostBackendDeathTest, TouchingUnmappedMemoryFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  HostBackend b(HostBackendOptions{.capacity_bytes = 4 * kPage});
  auto va = *b.reserve(kPage);
  auto p = *b.create_page();
  ASSERT_TRUE(b.map(va, p).ok());
  ASSERT_TRUE(b.set_access(va, kPage).ok());
  *reinterpret_cast<volatile int*>(va) = 1;  // mapped: fine
  ASSERT_TRUE(b.unmap(va, kPage).ok());
  EXPECT_DEATH(*reinterpret_cast<volatile int*>(va) = 2, "");
  ASSERT_TRUE(b.release_page(p).ok());
}

}  // namespace
}  // namespace valet
