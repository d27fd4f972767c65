// Device-side handle resolution on the host backend: "kernels" are host tasks on a stream that
// resolve handles through the table, exactly as device code does.
#include <thread>

#include "heap_test_util.h"
#include "valet/kernels/handle_table.h"

namespace valet::test {
namespace {

kernels::DeviceHandle dev(Handle h) { return {h.index, h.generation, h.heap}; }

TEST(DeviceTable, KernelsResolveLiveHandlesAndRefuseOthers) {
  auto heap = make_heap();
  auto& host = host_of(*heap);
  auto s = *host.create_stream();
  std::vector<Handle> hs;
  for (int i = 0; i < 100; ++i) {
    hs.push_back(*heap->allocate(100 + i * 1000));
    fill(*heap, hs.back(), seed_of(hs.back()));
  }
  auto dead = *heap->allocate(64);
  ASSERT_TRUE(heap->free(dead).ok());
  auto other = make_heap();
  auto foreign = *other->allocate(64);
  auto scope = heap->pin_table(s);
  ASSERT_TRUE(scope.ok()) << scope.error().to_string();
  const auto table = scope->table();
  auto late = *heap->allocate(64);  // after the upload: not in this scope's table
  std::atomic<int> bad{0}, resolved{0};
  ASSERT_TRUE(host.enqueue_host_task(s, [&, table] {
    for (Handle h : hs) {
      auto* p = static_cast<const std::uint8_t*>(kernels::resolve(table, dev(h)));
      if (!p || kernels::resolved_size(table, dev(h)) != *heap->size_of(h)) {
        ++bad;
        continue;
      }
      for (std::size_t i = 0; i < kernels::resolved_size(table, dev(h)); i += 97)
        if (p[i] != kernels::pattern_byte(seed_of(h), i)) ++bad;
      ++resolved;
    }
    if (kernels::resolve(table, dev(dead))) ++bad;
    if (kernels::resolve(table, dev(foreign))) ++bad;
    if (kernels::resolve(table, dev(Handle{}))) ++bad;
  }).ok());
  ASSERT_TRUE(host.synchronize_stream(s).ok());
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(resolved.load(), 100);
  (void)late;
  ASSERT_TRUE(scope->release().ok());
  ASSERT_TRUE(host.destroy_stream(s).ok());
}

TEST(DeviceTable, NothingMovesUntilTheStreamPassesTheRelease) {
  auto heap = make_heap();
  auto& host = host_of(*heap);
  auto s = *host.create_stream();
  std::vector<Handle> all, kept;
  for (int i = 0; i < 32 * 8; ++i) all.push_back(*heap->allocate(64 * 1024));
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % 4 == 0) {
      kept.push_back(all[i]);
      fill(*heap, all[i], seed_of(all[i]));
    } else {
      ASSERT_TRUE(heap->free(all[i]).ok());
    }
  }
  std::vector<DevicePtr> before;
  for (auto h : kept) before.push_back(heap->pin(h)->address());
  std::atomic<int> bad{0};
  {
    auto scope = *heap->pin_table(s);
    const auto table = scope.table();
    host.set_task_delay(std::chrono::milliseconds(100));
    // A slow "kernel" that reads every object through its handle after the scope is released.
    ASSERT_TRUE(host.enqueue_host_task(s, [&, table] {
      for (Handle h : kept) {
        auto* p = static_cast<const std::uint8_t*>(kernels::resolve(table, dev(h)));
        if (!p || p[0] != kernels::pattern_byte(seed_of(h), 0) || p[65535] != kernels::pattern_byte(seed_of(h), 65535))
          ++bad;
      }
    }).ok());
    auto rec = heap->compact();
    ASSERT_TRUE(rec.ok());
    EXPECT_EQ(rec->objects_moved, 0u) << "moved while the table was pinned";
    EXPECT_EQ(heap->resize(kept[0], 3 * kMiB).code(), Errc::pinned);
  }  // released on the stream, behind the slow kernel
  auto rec = heap->compact();
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->objects_moved, 0u) << "moved before the stream passed the release";
  for (std::size_t k = 0; k < kept.size(); ++k) EXPECT_EQ(heap->pin(kept[k])->address(), before[k]);
  ASSERT_TRUE(host.synchronize_stream(s).ok());
  host.set_task_delay(std::chrono::microseconds(0));
  EXPECT_EQ(bad.load(), 0);
  rec = heap->compact();
  ASSERT_TRUE(rec.ok());
  EXPECT_GT(rec->objects_moved, 0u) << "once the stream passed, compaction resumes";
  // A new scope sees the new addresses.
  auto scope = *heap->pin_table(s);
  for (Handle h : kept) EXPECT_EQ(reinterpret_cast<DevicePtr>(kernels::resolve(scope.table(), dev(h))), heap->pin(h)->address());
  ASSERT_TRUE(scope.release().ok());
  EXPECT_VALID(*heap);
  ASSERT_TRUE(host.synchronize_stream(s).ok());
  ASSERT_TRUE(host.destroy_stream(s).ok());
}

TEST(DeviceTable, ShutdownIsRefusedWhileAScopeIsHeld) {
  auto heap = make_heap();
  (void)*heap->allocate(100);
  {
    auto scope = *heap->pin_table(Stream{});
    EXPECT_EQ(heap->shutdown().code(), Errc::pinned);
  }
  EXPECT_TRUE(heap->shutdown().ok());
  EXPECT_EQ(host_of(*heap).pages_in_use(), 0u);
}

}  // namespace
}  // namespace valet::test
