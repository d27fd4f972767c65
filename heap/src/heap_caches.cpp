// The thread caches' fast paths and how the heap takes their objects back (thread_caches.h says
// what a cached object is and how the caches are locked).
#include <algorithm>

#include "heap_core.h"
#include "size_classes.h"

namespace valet::detail {

std::optional<Handle> HeapCore::allocate_cached(std::size_t bytes) {
  ThreadCache* c = caches.mine();
  if (!c) return std::nullopt;
  const std::uint32_t cls = class_of(bytes);
  std::lock_guard cl(c->mu);
  auto& bin = c->bins[cls];
  if (bin.empty() || caches.gated()) return std::nullopt;
  const CachedSlot s = bin.back();
  bin.pop_back();
  c->bytes -= class_size(cls);
  HandleEntry* e = handles.get(s.index);
  // Nobody reads a cached entry's fields without gating the caches first; a mover or a pin
  // reads them after acquiring the state word, which make_live publishes.
  e->set_size(bytes);
  e->address.store(s.address, std::memory_order_relaxed);
  const std::uint32_t gen = claims::make_live(e->state);
  c->live_bytes += std::int64_t(bytes);
  ++c->live_objects;
  ++c->allocs;
  c->changed = true;
  return Handle{s.index, gen, tag};
}

std::optional<Status> HeapCore::free_cached(Handle h) {
  ThreadCache* c = caches.mine();
  if (!c) return std::nullopt;
  std::unique_lock cl(c->mu);
  if (caches.gated()) return std::nullopt;
  auto looked = lookup(h);
  if (!looked.ok()) return Status(looked.error());
  HandleEntry* e = *looked;
  const std::uint64_t s = e->state.load(std::memory_order_acquire);
  if (state::pins(s) > 0) return make_error(Errc::pinned, "free: the object is pinned");
  // A move under way: the locked path waits for it. A pin or a mover that got in first fails
  // the CAS: the locked path looks again.
  if ((s & state::kMoving) || !claims::try_free(e->state, s, h.generation)) return std::nullopt;
  // The object is this thread's now: nobody may pin, move or free it, and its fields are settled.
  const std::uint32_t cls = cache_class(e);
  if (cls != kNotCacheable && fits(*c, cls)) {
    keep(*c, cls, h.index, e);
    return Status{};
  }
  // Not here: the object is live again (nobody saw it otherwise: the caches' gate waits for this
  // lock), and the locked path frees it, making room in the cache if it is cacheable.
  claims::undo_free(e->state, s);
  return std::nullopt;
}

std::uint32_t HeapCore::cache_class(const HandleEntry* e) const {
  if (e->loc.kind != ObjectKind::slab || e->fixed || e->unpins_recorded.load(std::memory_order_acquire) ||
      e->size() > kMaxSlabObject || class_size(class_of(e->size())) > caches.limit())
    return kNotCacheable;
  return class_of(e->size());
}

bool HeapCore::fits(const ThreadCache& c, std::uint32_t cls) const {
  return c.bins[cls].size() < ThreadCache::kPerClass && c.bytes + class_size(cls) <= caches.limit();
}

void HeapCore::keep(ThreadCache& c, std::uint32_t cls, std::uint32_t index, HandleEntry* e) {
  c.bins[cls].push_back({index, e->loc, e->address.load(std::memory_order_relaxed)});
  c.bytes += class_size(cls);
  c.live_bytes -= std::int64_t(e->size());
  --c.live_objects;
  ++c.frees;
  c.changed = true;
}

bool HeapCore::keep_locked(std::uint32_t index, HandleEntry* e) {
  mu.assert_held();
  const std::uint32_t cls = cache_class(e);
  if (cls == kNotCacheable) return false;
  ThreadCache& c = *caches.mine_or_make();
  spill(c, cls);
  std::lock_guard cl(c.mu);
  fold(c);
  keep(c, cls, index, e);
  return true;
}

void HeapCore::fold_mine() {
  mu.assert_held();
  ThreadCache& c = *caches.mine_or_make();
  std::lock_guard cl(c.mu);
  fold(c);
}

void HeapCore::fold(ThreadCache& c) {
  mu.assert_held();
  live_bytes += c.live_bytes;
  live_objects += c.live_objects;
  ops.allocate += c.allocs;
  ops.free += c.frees;
  if (c.changed) table.changed();
  c.live_bytes = c.live_objects = 0;
  c.allocs = c.frees = 0;
  c.changed = false;
}

void HeapCore::fold_caches() {
  mu.assert_held();
  caches.for_each([&](ThreadCache& c) { fold(c); });
}

void HeapCore::give_back_cached(const CachedSlot& s) {
  mu.assert_held();
  footprint_bytes -= footprint_of(s.loc);
  release_location(s.loc);
  handles.release(s.index);
}

void HeapCore::drain_caches() {
  mu.assert_held();
  if (!caches.enabled()) return;
  FastPathGate gate(caches);
  std::vector<CachedSlot> out;
  caches.for_each([&](ThreadCache& c) {
    fold(c);
    for (auto& bin : c.bins) {
      out.insert(out.end(), bin.begin(), bin.end());
      bin.clear();
    }
    c.bytes = 0;
  });
  caches.drop_orphans();
  for (const CachedSlot& s : out) give_back_cached(s);
}

void HeapCore::spill(ThreadCache& c, std::uint32_t cls) {
  mu.assert_held();
  std::vector<CachedSlot> out;
  {
    std::lock_guard cl(c.mu);
    auto take_oldest = [&](std::uint32_t k, std::size_t n) {
      auto& bin = c.bins[k];
      n = std::min(n, bin.size());
      out.insert(out.end(), bin.begin(), bin.begin() + std::ptrdiff_t(n));
      bin.erase(bin.begin(), bin.begin() + std::ptrdiff_t(n));
      c.bytes -= n * class_size(k);
    };
    if (fits(c, cls)) return;
    // A full class keeps its newer half.
    if (c.bins[cls].size() >= ThreadCache::kPerClass) take_oldest(cls, ThreadCache::kPerClass / 2);
    // Room for one more of `cls` within the byte limit: the largest classes go first (a few
    // objects free the most bytes).
    for (std::uint32_t k = kClassCount; k-- > 0 && c.bytes + class_size(cls) > caches.limit();)
      while (!c.bins[k].empty() && c.bytes + class_size(cls) > caches.limit()) take_oldest(k, 1);
  }
  for (const CachedSlot& s : out) give_back_cached(s);
}

}  // namespace valet::detail
