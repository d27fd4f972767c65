// The device copy of the handle table, and the scopes that pin it (Heap::pin_table): kernels
// resolve handles through it, so while a scope is held (or its stream has not passed the
// release) nothing may move.
//
// The table lives in a virtual range of its own (room for every handle index), mapped a page at a
// time as the handle table grows, through the page pool; its pages are outside the heap's
// capacity accounting. It is rebuilt and written only when an address or generation changed since
// the last upload (`changed()` marks that).
//
// Threading: `scopes` is atomic (a scope's release drops it without the heap lock); everything
// else requires the heap lock, except release_scope, which records its event through
// StreamReleases::record (that takes the lock itself).
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "handle_table.h"
#include "page_pool.h"
#include "stream_releases.h"
#include "valet/kernels/handle_table.h"

namespace valet::detail {

struct HeapInternals;

class DeviceTable {
 public:
  DeviceTable(PagePool& pool, StreamReleases& releases) : pool_(pool), releases_(releases) {}

  // An address or generation changed: the next upload rewrites the table.
  void changed() { ++version_; }
  // True while a scope (held, or released on a stream that has not passed the release) forbids
  // moving objects. Reaps completed releases.
  bool blocks_moves();
  // Scopes held now (shutdown refuses while one is).
  std::uint32_t held_scopes() const { return scopes_.load(std::memory_order_acquire); }

  // Brings the device copy up to date with `handles` and takes a scope on it; `out` describes it.
  Status open_scope(const HandleTable& handles, std::uint32_t heap_tag, kernels::DeviceHandleTable& out);
  // Ends a scope: objects may move once `stream` has passed this point.
  Status release_scope(HeapMutex& mu, Stream stream);

  // Shutdown: waits for released scopes' streams, unmaps and releases the table's memory.
  Status destroy();

  // Mapped within reserved, one page per mapped 2 MiB, the uploaded copy not newer than the table.
  Status validate() const;

 private:
  friend struct HeapInternals;
  Status grow_to(std::size_t bytes);

  PagePool& pool_;
  StreamReleases& releases_;
  std::atomic<std::uint32_t> scopes_{0};
  std::vector<Event> pending_;  // released scopes whose streams may not have passed
  std::uint64_t version_ = 1;   // bumped whenever an address or generation changes
  std::uint64_t uploaded_version_ = 0;
  PagePool::OutsideRange range_;
};

}  // namespace valet::detail
