// Stream-ordered releases: work a user queued on a stream may still touch an object after its
// stream pin was released, or the device table after its scope was released. What such work may
// touch is reused only once an event recorded at the release has completed. This component owns
// the events (recycled, since creating one is a driver call) and the frees that wait on them.
//
// Threading: every call requires the heap lock, except `record`, which takes it itself (the
// driver call that records the event runs without it).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "handle_table.h"
#include "heap_mutex.h"
#include "valet/backend.h"

namespace valet::detail {

// A freed object whose stream-ordered unpins have not completed: its memory is reused only once
// every event has completed.
struct DeferredFree {
  Location loc;
  std::size_t footprint = 0;
  std::vector<Event> events;
};

// A stream-ordered free (Heap::free(h, stream)) that no event covers yet: its stream may reuse
// it at once (stream order), nobody else may. `seq` orders the frees of the cache.
struct CachedFree {
  Location loc;
  std::size_t footprint = 0;
  std::uint64_t seq = 0;
};

class StreamReleases {
 public:
  explicit StreamReleases(VmmDoor& backend) : backend_(backend) {}

  // An event to record (a spare one, or a new one: a driver call).
  Result<Event> take_event();
  // Back to the spares, once no deferred free shares it any more (a flush covers many frees
  // with one event).
  void recycle_event(Event e);

  // Records an event at the current end of `s` into `pending`. If no event can be recorded,
  // waits for the stream instead, so nothing is released early. Takes `mu` itself.
  Status record(HeapMutex& mu, Stream s, std::vector<Event>& pending);
  // The same under the heap lock, which the caller holds.
  Status record_locked(Stream s, std::vector<Event>& pending);
  // Drops the completed events of `pending` (recycled); true when none remain.
  bool reap(std::vector<Event>& pending);

  // A free whose events have not completed: its memory stays taken, owned by nobody.
  void defer(DeferredFree d) { deferred_.push_back(std::move(d)); }
  const std::vector<DeferredFree>& deferred() const { return deferred_; }
  // Hands every deferred free whose events completed to `release` and forgets it.
  template <class Release>
  void reap_deferred(Release&& release) {
    std::unordered_map<std::uintptr_t, bool> done;  // one query per event, however many share it
    for (std::size_t i = 0; i < deferred_.size();) {
      if (!all_complete(deferred_[i].events, done)) {
        ++i;
        continue;
      }
      for (const Event ev : deferred_[i].events) recycle_event(ev);
      DeferredFree d = std::move(deferred_[i]);
      deferred_[i] = std::move(deferred_.back());
      deferred_.pop_back();
      release(d);
    }
  }

  // --- The stream caches: stream-ordered frees no event covers yet ---
  // `key` names what may reuse the memory: a slab class, or a large object's page count
  // (large_key); the caller checks that a large reuse keeps its last page's layout (fits).
  static std::uint64_t large_key(std::uint32_t pages) { return (std::uint64_t{1} << 63) | pages; }
  void cache(Stream s, std::uint64_t key, const Location& loc, std::size_t footprint);
  // A cached free of `s` with `key` for which `fits(loc)` holds, the newest first (its pages are
  // the most likely in cache).
  template <class Fits>
  std::optional<CachedFree> take_cached(Stream s, std::uint64_t key, Fits&& fits) {
    auto it = caches_.find(s.id);
    if (it == caches_.end()) return std::nullopt;
    auto k = it->second.by_key.find(key);
    if (k == it->second.by_key.end()) return std::nullopt;
    auto& list = k->second;
    for (std::size_t i = list.size(); i-- > 0;) {
      if (!fits(list[i].loc)) continue;
      CachedFree c = list[i];
      list.erase(list.begin() + std::ptrdiff_t(i));
      forget_taken(it, k, c.footprint);
      return c;
    }
    return std::nullopt;
  }
  std::optional<CachedFree> take_cached(Stream s, std::uint64_t key) {
    return take_cached(s, key, [](const Location&) { return true; });
  }
  std::size_t cached_footprint() const { return cached_footprint_; }
  std::size_t cached_footprint(Stream s) const;
  std::size_t deferred_footprint() const;  // of the frees waiting for their events
  // Whether a flush is recording an event on `s` now (without the heap lock).
  bool recording(Stream s) const { return recording_.count(s.id) != 0; }
  // Covers the cached frees of `only` (of every stream when empty) with an event recorded now on
  // their stream and moves them to the deferred frees. Precondition: `lock` holds the heap lock;
  // the driver calls run without it (frees cached meanwhile wait for the next flush; reuses
  // meanwhile are fine). If no event can be recorded the frees stay cached and the error is
  // returned, except on a stream the backend no longer knows: its owner destroyed it, which it
  // may do only after the work that used the memory (Heap::free(h, stream)); those frees are
  // appended to `gone` for the caller to release.
  Status flush(std::unique_lock<HeapMutex>& lock, std::optional<Stream> only, std::vector<CachedFree>& gone);
  // Every free that holds memory on a stream's behalf, deferred or cached: f(loc, footprint).
  template <class F>
  void for_each_held(F&& f) const {
    for (const auto& d : deferred_) f(d.loc, d.footprint);
    for (const auto& [id, sc] : caches_)
      for (const auto& [key, list] : sc.by_key)
        for (const auto& c : list) f(c.loc, c.footprint);
  }
  std::size_t held_count() const;

  // Shutdown: waits for and destroys every event (those of `pending` lists too); the first
  // error is returned, everything is attempted.
  Status destroy_all(std::vector<Event>& pending);
  // Waits for every stream with cached frees and every deferred free's events, hands each
  // cached free to `release`, and destroys every event.
  template <class Release>
  Status drain_all(Release&& release) {
    Status first;
    for (auto& [id, sc] : caches_) {
      // A stream its owner destroyed has nothing left to wait for (see flush).
      if (auto st = backend_.synchronize_stream(Stream{id}); !st.ok() && st.code() != Errc::not_found && first.ok())
        first = st;
      for (auto& [key, list] : sc.by_key)
        for (auto& c : list) release(c.loc, c.footprint);
    }
    caches_.clear();
    cached_footprint_ = 0;
    if (auto st = destroy_all(); !st.ok() && first.ok()) first = st;
    return first;
  }
  Status destroy_all();

  // Every deferred free waits on at least one event; no spare event is also pending; a shared
  // event's count is the number of deferred frees that wait on it; the cached footprint adds up.
  Status validate() const;

 private:
  using KeyedFrees = std::unordered_map<std::uint64_t, std::vector<CachedFree>>;
  struct StreamCache {
    KeyedFrees by_key;
    std::size_t footprint = 0;
  };
  using CacheMap = std::unordered_map<std::uintptr_t, StreamCache>;
  // A free was taken from stream cache `it`, key `k`: the footprints drop, empty entries go.
  void forget_taken(CacheMap::iterator it, KeyedFrees::iterator k, std::size_t footprint);
  bool all_complete(const std::vector<Event>& events, std::unordered_map<std::uintptr_t, bool>& done);
  // Moves the frees of `s` cached before `bound` to the deferred frees, waiting on `ev`.
  void defer_cached(Stream s, std::uint64_t bound, Event ev);

  VmmDoor& backend_;
  std::vector<Event> spare_;
  std::vector<DeferredFree> deferred_;
  std::unordered_map<std::uintptr_t, std::uint32_t> shared_;  // event -> deferred frees on it (> 1)
  CacheMap caches_;    // by stream id
  std::size_t cached_footprint_ = 0;
  std::uint64_t next_seq_ = 1;
  std::unordered_map<std::uintptr_t, std::uint32_t> recording_;  // records in flight, by stream id
};

}  // namespace valet::detail
