#include "tail_links.h"

#include <string>

#include "size_classes.h"

namespace valet::detail {
namespace {

Error fail(const std::string& what) { return make_error(Errc::internal, "validate: tails: " + what); }

}  // namespace

std::optional<std::uint32_t> TailLinks::open_bytes(std::uint32_t tail) const {
  const auto it = open_.find(tail);
  if (it == open_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::uint32_t> TailLinks::shared_page(std::uint32_t tail) const {
  const auto it = shared_.find(tail);
  if (it == shared_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::uint32_t> TailLinks::roomiest() const {
  // Linear: there are as many tails as large objects, a few hundred at most in serving
  // workloads, and a slab page is created far less often than an object.
  if (open_.empty()) return std::nullopt;
  auto best = open_.begin();
  for (auto it = open_.begin(); it != open_.end(); ++it)
    if (it->second < best->second) best = it;
  return best->first;
}

Status TailLinks::validate(const PagePool& pool, const Slabs& slabs, const HandleTable& handles) const {
  for (const auto& [tail, id] : shared_) {
    const auto* p = slabs.page(id);
    if (!p || !p->live || p->tail_slot != tail) return fail("shared tail " + std::to_string(tail) + " names no slab page on it");
    if (tail >= pool.slot_count() || pool.slot(tail).kind != SlotKind::large)
      return fail("shared tail " + std::to_string(tail) + " is not a large page");
  }
  for (const auto& [tail, used] : open_) {
    if (tail >= pool.slot_count() || pool.slot(tail).kind != SlotKind::large || shared_.contains(tail) ||
        pool.live_mappings_of(tail) != 1)
      return fail("open tail " + std::to_string(tail) + " is not a large object's own last page");
    const std::uint32_t owner = pool.slot(tail).owner;
    const HandleEntry* e = owner ? handles.get(owner) : nullptr;
    // The object may use fewer bytes there than the tail was opened for (a run a thread cache
    // gave back for fewer bytes: thread_caches.h), never more.
    if (e && state::live(e->state.load(std::memory_order_acquire)) &&
        (e->loc.page + e->loc.pages - 1 != tail || e->size() - std::uint64_t(e->loc.pages - 1) * kPageSize > used))
      return fail("open tail " + std::to_string(tail) + " disagrees with its object");
  }
  return {};
}

}  // namespace valet::detail
