#include "device_table.h"

#include <string>

#include "heap_core.h"

namespace valet {

using detail::HandleEntry;
using detail::HeapCore;
namespace state = detail::state;

namespace detail {

bool DeviceTable::blocks_moves() {
  if (scopes_.load(std::memory_order_acquire) > 0) return true;
  return !releases_.reap(pending_);
}

Status DeviceTable::grow_to(std::size_t bytes) {
  if (range_.va == 0) {
    const std::size_t max = HandleTable::kMaxChunks * HandleTable::kChunk * sizeof(kernels::DeviceHandleEntry);
    VALET_TRY(pool_.reserve_outside(range_, (max + kPageBytes - 1) / kPageBytes * kPageBytes));
  }
  while (range_.mapped_bytes() < bytes || range_.mapped_bytes() == 0) VALET_TRY(pool_.grow_outside(range_));
  return {};
}

Status DeviceTable::open_scope(const HandleTable& handles, std::uint32_t heap_tag, kernels::DeviceHandleTable& out) {
  const std::uint32_t count = handles.high_water();
  const std::size_t bytes = std::size_t(count) * sizeof(kernels::DeviceHandleEntry);
  VALET_TRY(grow_to(bytes));
  if (uploaded_version_ != version_ && count > 0) {
    std::vector<kernels::DeviceHandleEntry> entries(count, kernels::DeviceHandleEntry{0, 0, 0, 0});
    for (std::uint32_t i = 1; i < count; ++i) {
      const HandleEntry* e = handles.get(i);
      const std::uint64_t s = e->state.load(std::memory_order_acquire);
      if (!state::live(s)) continue;
      entries[i] = {e->address.load(std::memory_order_acquire), state::generation(s), 0, e->size()};
    }
    VALET_TRY(pool_.write_outside(range_, entries.data(), bytes));
    uploaded_version_ = version_;
  }
  out = kernels::DeviceHandleTable{reinterpret_cast<const kernels::DeviceHandleEntry*>(range_.va), count, heap_tag};
  scopes_.fetch_add(1, std::memory_order_acq_rel);
  return {};
}

Status DeviceTable::release_scope(HeapMutex& mu, Stream stream) {
  // Listed before the count drops: movers see one or the other.
  Status st = releases_.record(mu, stream, pending_);
  scopes_.fetch_sub(1, std::memory_order_release);
  return st;
}

Status DeviceTable::destroy() {
  Status first = releases_.destroy_all(pending_);
  if (auto st = pool_.release_outside(range_); !st.ok() && first.ok()) first = st;
  return first;
}

Status DeviceTable::validate() const {
  auto fail = [](const char* what) { return make_error(Errc::internal, std::string("validate: device table: ") + what); };
  if (range_.mapped_bytes() > range_.reserved) return fail("more mapped than reserved");
  if (range_.va == 0 && range_.reserved != 0) return fail("a reservation without an address");
  if (uploaded_version_ > version_) return fail("the uploaded copy is newer than the table");
  return {};
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
  return c->table.release_scope(c->mu, stream_);
}

Result<TableScope> Heap::pin_table(Stream stream) {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "pin_table: the heap was shut down");
  // No cycle runs while the table is built: every address read is settled.
  std::lock_guard cl(c.compaction_mu);
  std::unique_lock lock(c.mu);
  // A pending object's address is in the table before its run is mapped: kernels may resolve
  // it only once it is (background misses). New misses are mapped by their callers meanwhile.
  struct HoldMisses {
    detail::HeapCore& c;
    explicit HoldMisses(detail::HeapCore& core) : c(core) { ++c.misses_held; }
    ~HoldMisses() { --c.misses_held; }
  } hold(c);
  const detail::HeapCore::UnlockedMissesClosed closed(c);
  c.wait_for_misses(lock);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "pin_table: the heap was shut down");
  TableScope scope;
  {
    // What the thread caches changed marks the table changed; and no object becomes live
    // while the table is built.
    detail::FastPathGate gate(c.caches);
    c.fold_caches();
    VALET_TRY(c.table.open_scope(c.handles, c.tag, scope.table_));
  }
  scope.core_ = &c;
  scope.stream_ = stream;
  return scope;
}

}  // namespace valet
