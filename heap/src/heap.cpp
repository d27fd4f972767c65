// The allocation path: placing, allocating, freeing (deferred while stream-ordered unpins are
// pending), making room before out-of-memory, and the compaction entry point.
#include <cstdio>
#include <string>
#include <thread>

#include "heap_core.h"
#include "size_classes.h"

namespace valet {
namespace detail {
namespace {

constexpr std::size_t kMaxObject = std::size_t{1} << 48;

// An error of the call named `what` (built only on the error path).
Error call_error(Errc code, const char* what, const std::string& message) {
  return make_error(code, std::string(what) + ": " + message);
}

std::string mib(std::size_t bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1 << 20));
  return buf;
}

}  // namespace

bool HeapCore::try_begin_move(HandleEntry* e, bool cancelable, bool fixed_ok) {
  if (e->fixed && !fixed_ok) return false;
  // A stream-ordered unpin may still have queued work on the object. Checked before the claim:
  // a pin can only add events while it holds a pin, which the claim rules out.
  const std::uint64_t s = e->state.load(std::memory_order_acquire);
  if (!state::live(s) || (s & state::kMoving) || state::pins(s) != 0) return false;
  if (!e->pending_unpins.empty() && !reap_unpins(e)) return false;
  return claims::try_claim(e->state, cancelable);
}

std::size_t HeapCore::reap_deferred() {
  mu.assert_held();
  std::size_t released = 0;
  releases.reap_deferred([&](const DeferredFree& d) {
    footprint_bytes -= d.footprint;
    released += d.footprint;
    release_location(d.loc);
  });
  return released;
}

DevicePtr HeapCore::address_of(const Location& loc) const {
  if (loc.kind == ObjectKind::large) return pool.address(loc.page);
  if (loc.kind == ObjectKind::region) return region_address(loc);
  const SlabPage* p = slabs.page(pool.slot(loc.page).owner);
  return pool.address(loc.page) + DevicePtr(loc.index) * class_size(p->cls);
}

std::size_t HeapCore::footprint_of(const Location& loc) const {
  if (loc.kind == ObjectKind::large) return std::size_t(loc.pages) * kPageSize;
  if (loc.kind == ObjectKind::region) return std::size_t(region.book->object_at(region_offset(loc))->first);
  if (loc.page == kUnplaced) return class_size(loc.index);  // a pending small object: its class's
  return class_size(slabs.page(pool.slot(loc.page).owner)->cls);
}

Result<std::uint32_t> HeapCore::place_run(std::unique_lock<HeapMutex>& lock, std::uint32_t n, bool tail, bool whole) {
  // Its driver calls run without the heap lock (page_pool.h, the place batch).
  return pool.place_miss(
      n, tail, kNoOwner,
      [&](PagePool::PlaceBatch& b) {
        lock.unlock();
        pool.place_calls(b);
        lock.lock();
      },
      whole);
}

Result<std::uint32_t> HeapCore::take_run(std::unique_lock<HeapMutex>& lock, std::uint32_t n, bool whole) {
  if (auto s = pool.take_mapped_run(n, kNoOwner)) return *s;
  return place_run(lock, n, false, whole);
}

Result<Location> HeapCore::place(std::unique_lock<HeapMutex>& lock, std::size_t bytes, PendingMiss* miss,
                                  bool small_may_pend, bool movable) {
  mu.assert_held();
  // The copying region first, where it has room (no call); otherwise the page windows below.
  if (region_takes(bytes, movable))
    if (auto loc = place_in_region(lock, bytes)) return *loc;
  if (bytes <= kMaxSlabObject) {
    const std::uint32_t cls = class_of(bytes);
    // A new slab page where the reserve has none to give makes driver calls (a tail's alias or a
    // page of its own): the mapper places the object instead, on its thread, and the caller gets
    // a pending object as for a large miss (docs/background_misses.md).
    if (small_may_pend && config.mapper_places_misses && pool.reserve_pages() == 0 &&
        !slabs.densest_with_room(cls) && !prepared_tail_for(cls)) {
      const bool rides = unplaced_small[cls] % class_slots(cls) != 0 && pool.creatable_pages() > 0;
      if (rides || pool.promise(1)) {
        ++unplaced_small[cls];
        want_refill();
        return Location{ObjectKind::slab, kUnplaced, cls, rides ? 0u : 1u};
      }
    }
    return place_small(cls);
  }
  const std::uint32_t n = std::uint32_t((bytes + kPageSize - 1) / kPageSize);
  if (Demand::ordinary(n, pool.demand_pages())) demand.large_pages.note(n, now_ns());
  if (miss && config.mapper_places_misses) {
    // What needs no call is taken here, in place_large's order (where a slab page could share
    // the last page, a freed run ending on one as it is; else a mapped run); else the pages are
    // promised and the mapper places the object (place_miss).
    if (tail_host_for(bytes, n)) {
      if (auto loc = place_on_slab_page(lock, bytes, n, miss, /*calls=*/false)) return *loc;
    } else if (const std::optional<std::uint32_t> mapped = pool.take_mapped_run(n, kNoOwner)) {
      return placed_run(*mapped, n, bytes);
    }
    if (pool.promise(n)) {
      miss->step = PendingMiss::Step::place;
      want_refill();
      return Location{ObjectKind::large, kUnplaced, 0, n};
    }
  }
  return place_large(lock, bytes, n, miss, /*counted_live=*/false);
}

Result<Location> HeapCore::place_small(std::uint32_t cls, bool tail_first) {
  SlabPage* page = slabs.densest_with_room(cls);
  // A slab page on an open tail maps an alias (a map and an access grant) on this thread. With
  // background misses a reserve page comes first (no call) unless `tail_first`: the slab page
  // goes there, and compaction meshes it onto an open tail later (docs/background_misses.md).
  if (!page && (tail_first || !misses.running() || pool.reserve_pages() == 0)) page = slab_on_tail(cls);
  if (!page) {
    auto slot = pool.take_page(SlotKind::slab, 0);
    if (!slot.ok()) return slot.error();
    page = slabs.create(cls, *slot);
    pool.slot(*slot).owner = page->id;
    want_refill();
  }
  return slot_on(page);
}

Location HeapCore::slot_on(SlabPage* page) {
  // Unowned: the caller names the owner once it has a handle.
  return Location{ObjectKind::slab, page->slot, slabs.take_slot(page, kNoOwner), 0};
}

Result<Location> HeapCore::place_large(std::unique_lock<HeapMutex>& lock, std::size_t bytes, std::uint32_t n,
                                       PendingMiss* miss, bool counted_live) {
  if (config.chunk_miss_pages > 0) {
    // Chunked misses create pages up to the peak bound the keeper keeps the reserve within,
    // this object counted as live.
    const std::uint64_t live =
        std::uint64_t(std::max<std::int64_t>(0, live_bytes_known())) + (counted_live ? 0 : bytes);
    pool.set_create_ceiling(keeper.peak_bound_pages(now_ns(), live));
  }
  // Its last page on a slab page's physical page, when one has the room (no page of its own):
  // the body is mapped without the heap lock, the alias (two calls) under it (tails.cpp).
  if (auto loc = place_on_slab_page(lock, bytes, n, miss)) return *loc;
  const bool whole = bytes % kPageSize == 0;  // fills its last page: no tail to share there
  const std::optional<std::uint32_t> mapped = miss ? pool.take_mapped_run(n, kNoOwner) : std::nullopt;
  if (miss && !mapped) {
    // Its tail is opened once the run is mapped (finish_miss): no slab page lands on it before.
    auto b = pool.begin_miss(n, /*tail=*/false, whole);
    if (!b.ok()) return b.error();
    miss->batch = std::move(*b);
    want_refill();
    return Location{ObjectKind::large, miss->batch.start, 0, n};
  }
  auto run = mapped ? Result<std::uint32_t>(*mapped) : take_run(lock, n, whole);
  if (!run.ok()) return run.error();
  return placed_run(*run, n, bytes);
}

Location HeapCore::placed_run(std::uint32_t start, std::uint32_t n, std::size_t bytes) {
  want_refill();
  const Location loc{ObjectKind::large, start, 0, n};
  open_tail(loc, bytes);
  return loc;
}

void HeapCore::release_location(const Location& loc) {
  mu.assert_held();
  if (loc.kind == ObjectKind::large) {
    release_large(loc);
  } else if (loc.kind == ObjectKind::region) {
    const Status freed = region.book->free(region_offset(loc));
    VALET_ASSERT(freed.ok());
    (void)freed;
    const CopyRegion& book = *region.book;
    if (book.surplus(std::uint64_t(config.copy_region_headroom_chunks) * book.chunk(), config.copy_region_hysteresis_chunks))
      keeper.nudge();
  } else {
    retire_if_spare(free_slab_slot(loc));
  }
  after_release();
}

std::string HeapCore::held_pages() const {
  const HeapStats::Pages p = pages_by_use();
  const auto n = [](std::size_t v) { return std::to_string(v); };
  std::string s = "pages: large " + n(p.large) + ", slab " + n(p.slab - p.shared_tails) + " of their own and " +
                  n(p.shared_tails) + " on tails, reserve " + n(p.reserve) + " (idle " + n(p.idle) +
                  ", chunk reserve " + n(p.chunk_reserve) + "), releasing " + n(p.releasing) + ", moving " + n(p.moving);
  if (releases.cached_footprint()) s += ", stream-cached " + mib(releases.cached_footprint());
  if (const std::size_t deferred = releases.deferred_footprint()) s += ", stream-deferred " + mib(deferred);
  if (pool.promised_pages()) s += ", promised to pending misses " + n(pool.promised_pages());
  if (pool.credited_pages()) s += ", credited to thread caches " + n(pool.credited_pages());
  if (!prepared_aliases.empty()) s += ", prepared tail aliases " + n(prepared_aliases.size());
  if (region_on())
    s += ", copying region " + n(p.region) + " (holes " + mib(region.book->hole_bytes()) + ", headroom " +
         mib(region.book->mapped() - region.book->top()) + ")";
  return s;
}

Error HeapCore::out_of_memory(std::size_t asked, const Error& cause) const {
  if (cause.code != Errc::out_of_memory) return cause;
  return make_error(Errc::out_of_memory,
                    "cannot allocate " + std::to_string(asked) + " bytes (" + mib(asked) + "): live " +
                        mib(live_bytes_known()) + " in " + std::to_string(std::max<std::int64_t>(0, live_objects)) + " objects (footprint " +
                        mib(footprint_bytes) + "), held " + mib(pool.created_pages() * kPageSize) +
                        " of a capacity of " + mib(capacity_pages * kPageSize) + " (" + held_pages() + "); " +
                        cause.message);
}

std::uint64_t HeapCore::cache_key(const Location& loc) const {
  if (loc.kind == ObjectKind::large) return StreamReleases::large_key(loc.pages);
  // No allocation asks for this key (reuse_cached asks by page count or class): a region
  // object's stream-ordered free waits for its event, then goes back to the region.
  if (loc.kind == ObjectKind::region) return StreamReleases::large_key(0);
  return slabs.page(pool.slot(loc.page).owner)->cls;
}

std::optional<Location> HeapCore::reuse_cached(std::size_t bytes, Stream stream) {
  // Large objects: any cached free of the same page count whose last page the new bytes fit,
  // not only one of the same size (PyTorch's tensor sizes rarely repeat exactly).
  const bool large = bytes > kMaxSlabObject;
  const auto pages = std::uint32_t((bytes + kPageSize - 1) / kPageSize);
  auto cached = large ? releases.take_cached(stream, StreamReleases::large_key(pages),
                                             [&](const Location& l) { return tail_fits(l, bytes); })
                      : releases.take_cached(stream, class_of(bytes));
  if (!cached) return std::nullopt;
  if (large) reopen_tail(cached->loc, bytes);
  // Its footprint was counted all along (a cached free holds its memory): the caller adds it again.
  footprint_bytes -= cached->footprint;
  return cached->loc;
}

void HeapCore::set_owner(const Location& loc, std::uint32_t owner) {
  if (loc.kind == ObjectKind::slab)
    slabs.set_owner(slabs.page(pool.slot(loc.page).owner), loc.index, owner);
  else if (loc.kind == ObjectKind::region)
    (void)region.book->set_owner(region_offset(loc), owner);
  else
    for (std::uint32_t k = 0; k < loc.pages; ++k) pool.slot(loc.page + k).owner = owner;
}

Result<Handle> HeapCore::allocate_locked(std::unique_lock<HeapMutex>& lock, std::size_t bytes, const Stream* stream,
                                         bool fixed) {
  mu.assert_held();
  // Memory this stream freed is reused at once: the stream's own order puts the new user's work
  // after the old one's.
  const std::size_t used_before = pool.demand_pages();  // the demand it is measured against (demand.h)
  std::optional<Location> reused = stream ? reuse_cached(bytes, *stream) : std::nullopt;
  // A miss's calls go to the mapper (background misses; not for a fixed object, whose address
  // the caller may use without a pin): a large run's, or a small object's new slab page's. The
  // miss is made for a large object before its placement, for a small one only once it is
  // pending: a batch is not a small thing.
  const bool may_pend =
      !reused && !fixed && misses.running() && misses_held == 0 && misses.pending() < config.background_miss_limit;
  std::optional<PendingMiss> miss;
  if (may_pend && bytes > kMaxSlabObject) miss.emplace();
  // A placement may let the heap lock go for its driver calls: the object gets its handle after.
  auto loc = reused ? Result<Location>(*reused) : place(lock, bytes, miss ? &*miss : nullptr, may_pend, !fixed);
  if (!loc.ok()) return loc.error();
  if (loc->kind == ObjectKind::slab && loc->page == kUnplaced) {
    miss.emplace();
    miss->step = PendingMiss::Step::place;
    miss->small = true;
  }
  const bool pending = miss && !miss->empty();
  std::uint32_t index = 0;
  const bool shut_meanwhile = shut.load(std::memory_order_relaxed);
  if (shut_meanwhile || !handles.acquire(index)) {
    if (pending)
      abandon_miss(*miss, *loc);
    else
      release_location(*loc);
    return shut_meanwhile ? make_error(Errc::shut_down, "the heap was shut down")
                          : make_error(Errc::out_of_memory, "the handle table is full");
  }
  if (!pending) set_owner(*loc, index);  // a pending run's slots are named at finish_miss
  HandleEntry* e = handles.get(index);
  e->set_size(bytes);
  e->loc = *loc;
  e->fixed = fixed;
  if (fixed) {
    ++fixed_objects;
    fixed_bytes += bytes;
    if (loc->kind == ObjectKind::slab) ++slabs.page(pool.slot(loc->page).owner)->fixed;
  }
  // An object the mapper places has no address until then (place_miss publishes it).
  e->address.store(loc->page == kUnplaced ? 0 : address_of(*loc), std::memory_order_relaxed);
  const std::uint32_t gen = claims::make_live(e->state);
  if (pending) {
    // Claimed as a move until the mapper books the run: pins wait for it, moves skip it.
    const bool claimed = claims::try_claim(e->state, /*cancelable=*/false);
    VALET_ASSERT(claimed);
    (void)claimed;
    miss->index = index;
    misses.submit(std::move(*miss));
    ++t_background_misses;
  }
  live_bytes += std::int64_t(bytes);
  if (Demand::ordinary(loc->pages, used_before)) demand.live_peak.note(live_bytes_known(), now_ns());
  footprint_bytes += footprint_of(*loc);
  ++live_objects;
  ++ops.allocate;
  table.changed();
  return Handle{index, gen, tag};
}

void HeapCore::emergency_compact(std::unique_lock<HeapMutex>& lock) {
  CompactRequest req;
  req.max_occupancy = 0.999;
  req.trigger = CompactionTrigger::emergency;
  // Lock order: the compaction lock before the heap lock.
  lock.unlock();
  std::lock_guard cl(compaction_mu);
  lock.lock();
  if (shut.load(std::memory_order_relaxed)) return;  // a shutdown ran while the lock was released
  (void)compact_locked(lock, req);
}

Status HeapCore::flush_stream_frees(std::unique_lock<HeapMutex>& lock, std::optional<Stream> only) {
  std::vector<CachedFree> gone;
  const Status st = releases.flush(lock, only, gone);
  for (const CachedFree& c : gone) {
    footprint_bytes -= c.footprint;
    release_location(c.loc);
  }
  return st;
}

void HeapCore::wait_deferred(std::unique_lock<HeapMutex>& lock) {
  mu.assert_held();
  (void)flush_stream_frees(lock);
  std::vector<Event> events;
  for (const auto& d : releases.deferred()) events.insert(events.end(), d.events.begin(), d.events.end());
  if (!events.empty()) {
    // An event recycled meanwhile is recorded again later: waiting for it only waits longer.
    lock.unlock();
    for (const Event ev : events) (void)backend->synchronize_event(ev);
    lock.lock();
  }
  reap_deferred();
}

void HeapCore::make_room(std::unique_lock<HeapMutex>& lock) {
  mu.assert_held();
  // Memory freed on streams comes back once their work passed the frees (as a caching allocator
  // synchronizes before it reports out-of-memory).
  wait_deferred(lock);
  drain_caches();        // the threads' cached small objects back to their slabs
  // The pages and handles credited to the caches (unlocked_misses.cpp) back to everyone.
  caches.for_each([&](ThreadCache& c) { give_back_unlocked(c); });
  retire_empty_slabs();  // to the reserve, where the retry finds them
  // Pages moving without the lock come back first: out-of-memory is never reported while they
  // are on their way. The caller paused the keeper (KeeperPause), so no new batch of its starts
  // meanwhile; a free on another thread may still trim, and its batch is waited for too.
  while (pool.batch_in_flight() || pool.drops_in_flight() || region.calls_in_flight) {
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
  // Chunks no object uses go back: their pages can then be created again as any shape needs.
  (void)pool.release_free_chunks();
  // Standby tail aliases keep their pages from being released until the keeper unmaps them.
  if (!tail_aliases_prepared) discard_tail_aliases(/*keep_standbys=*/false);
  // An emergency cycle (bounded: one full cycle) evacuates sparse pages.
  if (config.compact_on_oom) emergency_compact(lock);
  // The copying region's chunks above its top (its headroom, and what that cycle's copies
  // emptied) go back to the capacity.
  trim_region(lock, 0, 0);
  // Aliases let go of (by the frees before, and by that cycle's meshing) are unmapped now: a
  // page only an alias still maps comes back idle, where the retry finds it.
  (void)keeper.drop_aliases(lock);
}

Result<Handle> HeapCore::allocate_object(std::size_t bytes, const Stream* stream, bool fixed, const char* what) {
  // `what` names the call in error messages only: no string is built on the way through.
  if (shut.load(std::memory_order_acquire)) return call_error(Errc::shut_down, what, "the heap was shut down");
  if (bytes == 0) return call_error(Errc::invalid_argument, what, "0 bytes");
  if (bytes > kMaxObject)
    return call_error(Errc::invalid_argument, what, std::to_string(bytes) + " bytes is beyond any device");
  // A small object or a large run this thread freed before: no heap lock (heap_caches.cpp).
  const bool cacheable = !stream && !fixed && caches.serves(bytes);
  if (cacheable)
    if (auto cached = allocate_cached(bytes)) return *cached;
  // A large object while another thread holds the heap lock: pending at once, without waiting
  // for the lock (unlocked_misses.cpp); else the locked path.
  // (Not one the copying region takes: it is placed there under the lock, with no call.)
  const bool may_skip_lock =
      bytes > kMaxSlabObject && !stream && !fixed && config.unlocked_misses && !region_takes(bytes, true);
  std::unique_lock lock(mu, std::defer_lock);
  if (!may_skip_lock || !lock.try_lock()) {
    if (may_skip_lock)
      if (auto pending = allocate_unlocked_miss(bytes)) return *pending;
    lock.lock();
  }
  if (shut.load(std::memory_order_relaxed)) return call_error(Errc::shut_down, what, "the heap was shut down");
  if (cacheable) fold_mine();  // its counters, and a cache for its next frees
  if (bytes > capacity_pages * kPageSize) {
    ++ops.failed_allocations;
    return call_error(Errc::out_of_memory, what,
                      std::to_string(bytes) + " bytes exceeds the heap's capacity of " +
                          std::to_string(capacity_pages * kPageSize) + " bytes");
  }
  // Frees whose streams have passed them go back to everyone before anything new is placed, as
  // a caching allocator processes its events at every allocation: otherwise a large free (a
  // probe, a KV cache) waits for the next flush while new allocations map new pages. A query
  // per distinct event, only while some free waits. Where more came back than a stream caches
  // (a free larger than the cache: a probe, a KV cache), what the new object did not take beyond
  // the reserve's budget is given back at once, as the free would have done without a stream;
  // smaller returns are left to the keeper, so the reserve is not trimmed and refilled by turns.
  const std::size_t reaped = releases.deferred().empty() ? 0 : reap_deferred();
  auto h = allocate_locked(lock, bytes, stream, fixed);
  if (h.ok() && reaped > config.stream_cache_bytes) trim_returned(lock, (reaped + kPageSize - 1) / kPageSize);
  if (h.ok() && may_skip_lock) top_up_unlocked((bytes + kPageSize - 1) / kPageSize);  // for its next one
  if (h.ok() || h.code() != Errc::out_of_memory) return h;
  // Out-of-memory is never reported while free pages are held: make room, and retry once.
  const KeeperPause paused(keeper);  // until the retry is done
  make_room(lock);
  if (shut.load(std::memory_order_relaxed)) return call_error(Errc::shut_down, what, "the heap was shut down");
  h = allocate_locked(lock, bytes, stream, fixed);
  if (h.ok()) return h;
  ++ops.failed_allocations;
  return out_of_memory(bytes, h.error());
}

Status HeapCore::free_object(Handle h, const Stream* stream, const char* what) {
  if (shut.load(std::memory_order_acquire)) return call_error(Errc::shut_down, what, "the heap was shut down");
  // Into this thread's cache: no heap lock (heap_caches.cpp).
  const bool cacheable = !stream && caches.enabled();
  if (cacheable)
    if (auto done = free_cached(h)) return *done;
  std::unique_lock lock(mu);
  for (;;) {
    if (shut.load(std::memory_order_relaxed)) return call_error(Errc::shut_down, what, "the heap was shut down");
    auto looked = lookup(h);
    if (!looked.ok()) return looked.error();
    HandleEntry* e = *looked;
    std::uint64_t s = e->state.load(std::memory_order_acquire);
    if (state::pins(s) > 0) return call_error(Errc::pinned, what, "the object is pinned");
    // A pending object (background misses) is freed at once; the mapper releases its run. One
    // made without the heap lock may still wait in a cache: queued first (and only then, so that
    // a free does not pay for the queueing of misses it does not free).
    if ((s & state::kMoving) && !misses.is_pending(h.index) && misses.unlocked_waiting() > 0) {
      collect_unlocked_misses();
      continue;
    }
    if ((s & state::kMoving) && misses.is_pending(h.index)) return free_pending(h, e);
    if (s & state::kMoving) {
      lock.unlock();
      claims::wait_not_moving(e->state, h.generation);
      lock.lock();
      continue;
    }
    if (!claims::try_free(e->state, s, h.generation)) continue;
    // A small object or a large run goes to this thread's cache (made now if it has none) as on
    // the fast path.
    if (cacheable && keep_locked(h.index, e)) return {};
    return finish_free(lock, h, e, stream);
  }
}

Status HeapCore::finish_free(std::unique_lock<HeapMutex>& lock, Handle h, HandleEntry* e, const Stream* stream) {
  mu.assert_held();
  live_bytes -= std::int64_t(e->size());
  --live_objects;
  ++ops.free;
  table.changed();
  const std::size_t footprint = footprint_of(e->loc);
  const bool slab = e->loc.kind == ObjectKind::slab;
  SlabPage* page = slab ? slabs.page(pool.slot(e->loc.page).owner) : nullptr;
  if (e->fixed) {
    --fixed_objects;
    fixed_bytes -= e->size();
    if (slab) --page->fixed;
    e->fixed = false;
  }
  const bool unpins_pending = !e->pending_unpins.empty() && !reap_unpins(e);
  e->unpins_recorded.store(false, std::memory_order_relaxed);  // the pending ones leave with the free
  if (unpins_pending || stream) {
    // The memory stays taken, owned by nobody: until the streams pass their unpins, or, for a
    // stream-ordered free, reused only by its stream until an event covers it.
    const std::uint64_t key = cache_key(e->loc);
    set_owner(e->loc, kNoOwner);
    if (unpins_pending) {
      // Both the unpins' streams and this free's stream must pass (a rare case: one event
      // recorded under the lock).
      if (stream) (void)releases.record_locked(*stream, e->pending_unpins);
      releases.defer({e->loc, footprint, std::move(e->pending_unpins)});
      e->pending_unpins.clear();
    } else {
      releases.cache(*stream, key, e->loc, footprint);
    }
  } else {
    footprint_bytes -= footprint;
    release_location(e->loc);
  }
  const Location loc = e->loc;
  handles.release(h.index);
  if (stream && releases.cached_footprint(*stream) > config.stream_cache_bytes) {
    // The stream holds more than its share: one event covers everything it cached, and what
    // earlier events covered and completed goes back to every stream.
    (void)flush_stream_frees(lock, *stream);
    reap_deferred();
  }
  // The reserve's surplus: the keeper's (a free of ordinary demand makes no driver call), or,
  // for a return of no ordinary demand or without a keeper, given back now in this call but
  // without the heap lock (ReserveKeeper::trim_surplus), or by the mapper (trim_returned).
  if (loc.kind == ObjectKind::large) trim_returned(lock, loc.pages);
  return {};
}

}  // namespace detail

using detail::HandleEntry;
using detail::HeapCore;

Result<Handle> Heap::allocate(std::size_t bytes) { return core_->allocate_object(bytes, nullptr, false, "allocate"); }

Result<Handle> Heap::allocate(std::size_t bytes, Stream stream) {
  return core_->allocate_object(bytes, &stream, false, "allocate");
}

Result<FixedObject> Heap::allocate_fixed(std::size_t bytes, Stream stream) {
  auto h = core_->allocate_object(bytes, &stream, true, "allocate_fixed");
  if (!h.ok()) return h.error();
  // A fixed object never moves: its address is read once, here (it was set under the lock).
  const HandleEntry* e = core_->handles.get(h->index);
  return FixedObject{*h, e->address.load(std::memory_order_acquire), bytes};
}

Status Heap::free(Handle h) { return core_->free_object(h, nullptr, "free"); }

Status Heap::free(Handle h, Stream stream) { return core_->free_object(h, &stream, "free"); }

Status Heap::flush_stream(Stream stream) {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "flush_stream: the heap was shut down");
  std::unique_lock lock(c.mu);
  for (;;) {
    if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "flush_stream: the heap was shut down");
    VALET_TRY(c.flush_stream_frees(lock, stream));
    // Another flush (a compaction cycle's, another thread's free) may still be recording on the
    // stream without the lock: the stream must outlive that record too.
    if (!c.releases.recording(stream) && c.releases.cached_footprint(stream) == 0) break;
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
  c.reap_deferred();
  return {};
}

Result<std::size_t> Heap::size_of(Handle h) const {
  if (core_->shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "size_of: the heap was shut down");
  std::lock_guard lock(core_->mu);
  if (core_->shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "size_of: the heap was shut down");
  // No thread cache frees and reuses the object's entry while its size is read.
  detail::FastPathGate gate(core_->caches);
  auto e = core_->lookup(h);
  if (!e.ok()) return e.error();
  return (*e)->size();
}

Status Heap::maintain() {
  auto& c = *core_;
  if (c.shut.load()) return make_error(Errc::shut_down, "maintain: the heap was shut down");
  std::unique_lock lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "maintain: the heap was shut down");
  c.reap_deferred();
  c.drain_caches();
  c.retire_empty_slabs();
  // Aliases queued for a keeper (deferred drops) are unmapped here too.
  (void)c.keeper.drop_aliases(lock);
  c.keep_region(lock);  // the copying region's headroom mapped, its surplus unmapped
  return c.keeper.balance();
}

Result<CompactionRecord> Heap::compact(const CompactRequest& request) {
  auto& c = *core_;
  if (c.shut.load()) return make_error(Errc::shut_down, "compact: the heap was shut down");
  if (!(request.max_occupancy > 0 && request.max_occupancy < 1))
    return make_error(Errc::invalid_argument, "compact: max_occupancy must be within (0, 1)");
  std::lock_guard cl(c.compaction_mu);
  const detail::ScopedLockRole role(detail::LockRole::compaction);  // whoever waits for it, waits for compaction
  std::unique_lock lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "compact: the heap was shut down");
  return c.compact_locked(lock, request);
}

}  // namespace valet
