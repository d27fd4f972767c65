// The thread caches' fast paths and how the heap takes their objects back (thread_caches.h says
// what a cached object is and how the caches are locked).
#include <algorithm>
#include <iterator>

#include "heap_core.h"
#include "size_classes.h"

namespace valet::detail {

std::optional<Handle> HeapCore::allocate_cached(std::size_t bytes) {
  ThreadCache* c = caches.mine();
  if (!c) return std::nullopt;
  std::lock_guard cl(c->mu);
  if (caches.gated()) return std::nullopt;
  if (bytes > kMaxSlabObject) {
    // The newest run of the page count whose freed object had at least these bytes: the new
    // bytes on its last page are within what its tail leaves to the object (thread_caches.h).
    const auto pages = std::uint32_t((bytes + kPageSize - 1) / kPageSize);
    for (auto it = c->runs.rbegin(); it != c->runs.rend(); ++it) {
      if (it->loc.pages != pages || it->bytes < bytes) continue;
      const CachedRun r = *it;
      c->runs.erase(std::next(it).base());
      c->run_bytes -= r.footprint;
      c->run_reused();
      ++c->run_allocs;
      return revive(*c, r.index, r.address, bytes);
    }
    return std::nullopt;
  }
  const std::uint32_t cls = class_of(bytes);
  auto& bin = c->bins[cls];
  if (bin.empty()) return std::nullopt;
  const CachedSlot s = bin.back();
  bin.pop_back();
  c->bytes -= class_size(cls);
  return revive(*c, s.index, s.address, bytes);
}

Handle HeapCore::revive(ThreadCache& c, std::uint32_t index, DevicePtr address, std::size_t bytes) {
  HandleEntry* e = handles.get(index);
  // Nobody reads a cached entry's fields without gating the caches first; a mover or a pin
  // reads them after acquiring the state word, which make_live publishes.
  e->set_size(bytes);
  e->address.store(address, std::memory_order_relaxed);
  const std::uint32_t gen = claims::make_live(e->state);
  c.live_bytes += std::int64_t(bytes);
  ++c.live_objects;
  ++c.allocs;
  c.changed = true;
  return Handle{index, gen, tag};
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
  if (cls == kRunClass) {
    if (c->wants_runs() && take_run_room(*c, footprint_of(e->loc))) {
      keep_run(*c, h.index, e);
      return Status{};
    }
  } else if (cls != kNotCacheable && fits(*c, cls)) {
    keep(*c, cls, h.index, e);
    return Status{};
  }
  // Not here: the object is live again (nobody saw it otherwise: the caches' gate waits for this
  // lock), and the locked path frees it, making room in the cache if it is cacheable.
  claims::undo_free(e->state, s);
  return std::nullopt;
}

std::uint32_t HeapCore::cache_class(const HandleEntry* e) const {
  if (e->fixed || e->unpins_recorded.load(std::memory_order_acquire)) return kNotCacheable;
  if (e->loc.kind == ObjectKind::large)
    return e->loc.page != kUnplaced && footprint_of(e->loc) <= caches.run_limit() ? kRunClass : kNotCacheable;
  if (e->size() > kMaxSlabObject || class_size(class_of(e->size())) > caches.limit()) return kNotCacheable;
  return class_of(e->size());
}

bool HeapCore::fits(const ThreadCache& c, std::uint32_t cls) const {
  return c.bins[cls].size() < ThreadCache::kPerClass && c.bytes + class_size(cls) <= caches.limit();
}

bool HeapCore::take_run_room(const ThreadCache& c, std::size_t footprint) const {
  return c.runs.size() < ThreadCache::kRuns && c.run_bytes + footprint <= c.run_allowance;
}

void HeapCore::keep(ThreadCache& c, std::uint32_t cls, std::uint32_t index, HandleEntry* e) {
  c.bins[cls].push_back({index, e->loc, e->address.load(std::memory_order_relaxed)});
  c.bytes += class_size(cls);
  c.live_bytes -= std::int64_t(e->size());
  --c.live_objects;
  ++c.frees;
  c.changed = true;
}

void HeapCore::keep_run(ThreadCache& c, std::uint32_t index, HandleEntry* e) {
  const std::size_t footprint = footprint_of(e->loc);
  c.runs.push_back({index, e->loc, e->address.load(std::memory_order_relaxed), e->size(), footprint});
  c.run_bytes += footprint;
  c.runs_declined = 0;
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
  if (cls == kRunClass) {
    const std::size_t footprint = footprint_of(e->loc);
    bool wanted = true;
    {
      std::lock_guard cl(c.mu);
      wanted = c.wants_runs();
      if (wanted)
        caches.grant_runs(c);
      else
        ++c.runs_declined;
    }
    if (!wanted) {
      // Runs that went unused until the credit ran out go back with the first run not kept, and
      // the thread's share of the total with them.
      spill_runs(c, caches.run_limit() + 1);
      std::lock_guard cl(c.mu);
      caches.revoke_runs(c);
      return false;
    }
    spill_runs(c, footprint);  // within what the grant gave it
    std::lock_guard cl(c.mu);
    if (!take_run_room(c, footprint)) return false;  // other threads' allowances fill the total
    fold(c);
    keep_run(c, index, e);
    return true;
  }
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
  ops.cached_allocations += c.allocs - c.miss_allocs;
  footprint_bytes += c.footprint;
  ops.cached_run_allocations += c.run_allocs;
  ops.free += c.frees;
  if (c.changed) table.changed();
  c.live_bytes = c.live_objects = 0;
  c.allocs = c.frees = c.run_allocs = c.miss_allocs = 0;
  c.footprint = 0;
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

void HeapCore::give_back_cached(const CachedRun& r) {
  mu.assert_held();
  footprint_bytes -= r.footprint;
  release_location(r.loc);  // as a free of the object would: its tail closed or unshared
  handles.release(r.index);
}

void HeapCore::drain_caches() {
  mu.assert_held();
  if (!caches.enabled()) return;
  FastPathGate gate(caches);
  std::vector<CachedSlot> out;
  std::vector<CachedRun> runs;
  caches.for_each([&](ThreadCache& c) {
    fold(c);
    collect_from(c);  // its misses made without the lock queued
    for (auto& bin : c.bins) {
      out.insert(out.end(), bin.begin(), bin.end());
      bin.clear();
    }
    c.bytes = 0;
    runs.insert(runs.end(), c.runs.begin(), c.runs.end());
    for (std::size_t k = 0; k < c.runs.size(); ++k) c.run_unused();
    c.runs.clear();
    c.run_bytes = 0;
    // A thread whose runs went unused lets go of its share of the total for the others.
    if (c.run_credit == 0) caches.revoke_runs(c);
  });
  // A cache whose thread is gone gives back its spare handles and credit (no thread can use them).
  caches.drop_orphans([&](ThreadCache& c) { give_back_unlocked(c); });
  for (const CachedSlot& s : out) give_back_cached(s);
  for (const CachedRun& r : runs) give_back_cached(r);
}

void HeapCore::spill_runs(ThreadCache& c, std::size_t footprint) {
  mu.assert_held();
  std::vector<CachedRun> out;
  {
    std::lock_guard cl(c.mu);
    auto full = [&] { return c.runs.size() >= ThreadCache::kRuns || c.run_bytes + footprint > c.run_allowance; };
    while (!c.runs.empty() && full()) {
      out.push_back(c.runs.front());
      c.runs.erase(c.runs.begin());
      c.run_bytes -= out.back().footprint;
      c.run_unused();
    }
  }
  for (const CachedRun& r : out) give_back_cached(r);
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
