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

}  // namespace valet::test
