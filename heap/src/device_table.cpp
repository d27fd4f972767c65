// The device copy of the handle table and the scopes that pin it (Heap::pin_table).
//
// The table lives in its own virtual range (room for every handle index), mapped a page at a
// time as the handle table grows; those pages are outside the heap's capacity accounting. It is
// rebuilt and written only when an address or generation changed since the last upload.
#include <cstring>

#include "heap_core.h"
#include "size_classes.h"

namespace valet {

using detail::HandleEntry;
using detail::HeapCore;
namespace state = detail::state;

namespace detail {

bool HeapCore::table_blocks_moves() {
  if (table_pins.load(std::memory_order_acquire) > 0) return true;
  for (std::size_t i = 0; i < table_pending.size();) {
    auto done = backend->query_event(table_pending[i]);
    if (done.ok() && !*done) {
      ++i;
      continue;
    }
    recycle_event(table_pending[i]);
    table_pending[i] = table_pending.back();
    table_pending.pop_back();
  }
  return !table_pending.empty();
}

Status HeapCore::upload_table(kernels::DeviceHandleTable& out) {
  const std::uint32_t count = handles.high_water();
  const std::size_t bytes = std::size_t(count) * sizeof(kernels::DeviceHandleEntry);
  if (!table_va) {
    const std::size_t max = HandleTable::kMaxChunks * HandleTable::kChunk * sizeof(kernels::DeviceHandleEntry);
    table_reserved = (max + kPageSize - 1) / kPageSize * kPageSize;
    auto va = backend->reserve(table_reserved);
    if (!va.ok()) return va.error();
    table_va = *va;
  }
  while (table_mapped < bytes || table_mapped == 0) {
    auto page = backend->create_page();
    if (!page.ok()) return page.error();
    if (auto st = backend->map(table_va + table_mapped, *page); !st.ok()) {
      (void)backend->release_page(*page);
      return st;
    }
    if (auto st = backend->set_access(table_va + table_mapped, kPageSize); !st.ok()) {
      (void)backend->unmap(table_va + table_mapped, kPageSize);
      (void)backend->release_page(*page);
      return st;
    }
    table_pages.push_back(*page);
    table_mapped += kPageSize;
  }
  if (uploaded_version != table_version && count > 0) {
    std::vector<kernels::DeviceHandleEntry> entries(count, kernels::DeviceHandleEntry{0, 0, 0, 0});
    for (std::uint32_t i = 1; i < count; ++i) {
      const HandleEntry* e = handles.get(i);
      const std::uint64_t s = e->state.load(std::memory_order_acquire);
      if (!(s & state::kLive)) continue;
      entries[i] = {e->address.load(std::memory_order_acquire), state::generation(s), 0, e->size};
    }
    VALET_TRY(backend->write(table_va, entries.data(), bytes));
    uploaded_version = table_version;
  }
  out = kernels::DeviceHandleTable{reinterpret_cast<const kernels::DeviceHandleEntry*>(table_va), count, tag};
  return {};
}

Status HeapCore::release_table_memory() {
  Status first;
  if (table_mapped) first = backend->unmap(table_va, table_mapped);
  for (PhysicalPage p : table_pages)
    if (auto st = backend->release_page(p); !st.ok() && first.ok()) first = st;
  table_pages.clear();
  table_mapped = 0;
  if (table_va) {
    if (auto st = backend->unreserve(table_va, table_reserved); !st.ok() && first.ok()) first = st;
  }
  table_va = 0;
  return first;
}

}  // namespace detail

TableScope& TableScope::operator=(TableScope&& o) noexcept {
  if (this != &o) {
    (void)release();
    core_ = std::exchange(o.core_, nullptr);
    stream_ = o.stream_;
    table_ = o.table_;
  }
  return *this;
}

Status TableScope::release() {
  if (!core_) return {};
  auto* c = std::exchange(core_, nullptr);
  // Listed before the count drops: movers see one or the other.
  Status st = c->record_release(stream_, c->table_pending);
  c->table_pins.fetch_sub(1, std::memory_order_release);
  return st;
}

Result<TableScope> Heap::pin_table(Stream stream) {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "pin_table: the heap was shut down");
  // No cycle runs while the table is built: every address read is settled.
  std::lock_guard cl(c.compaction_mu);
  std::lock_guard lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "pin_table: the heap was shut down");
  TableScope scope;
  VALET_TRY(c.upload_table(scope.table_));
  c.table_pins.fetch_add(1, std::memory_order_acq_rel);
  scope.core_ = &c;
  scope.stream_ = stream;
  return scope;
}

}  // namespace valet
