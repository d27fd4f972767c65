// A page pool of `pages` on the host backend behind a fault injector and a counting door, for
// tests of the pool itself that fail calls and count them.
#pragma once

#include <memory>

#include "heap_test_util.h"
#include "page_pool.h"
#include "valet/counting_backend.h"

namespace valet::test {

struct FaultyPool {
  FaultInjectingBackend* faults = nullptr;
  CountingBackend door;
  detail::PagePool pool;
  explicit FaultyPool(std::size_t pages) : door(wrap(pages, faults)), pool(door, pages) {}
  static std::unique_ptr<Backend> wrap(std::size_t pages, FaultInjectingBackend*& out) {
    auto f = std::make_unique<FaultInjectingBackend>(open_host_backend(pages * kPageBytes));
    out = f.get();
    return f;
  }
};

// Two whole free chunks of nine and five pages (a pool making chunks from four new pages: runs of
// ten and six pages, each a chunk and a page), their runs' last pages still in use, so that no
// run of fewer than nine or five pages holds either. The runs' starts: give back `start + 9` and
// `start + 5`'s single pages at the end.
struct TwoFreeChunks {
  std::uint32_t nine = 0, five = 0;
};
inline TwoFreeChunks two_free_chunks(detail::PagePool& pool) {
  auto a = pool.take_run(10, 1);
  auto b = pool.take_run(6, 2);
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok()) return {};
  pool.give_back(*a, 9);
  pool.give_back(*b, 5);
  EXPECT_EQ(pool.whole_free_chunk_pages(), 14u);
  return {*a, *b};
}

}  // namespace valet::test
