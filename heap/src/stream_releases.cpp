#include "stream_releases.h"

#include <algorithm>
#include <mutex>
#include <string>
#include <unordered_set>

namespace valet::detail {

Result<Event> StreamReleases::take_event() {
  if (!spare_.empty()) {
    const Event e = spare_.back();
    spare_.pop_back();
    return e;
  }
  return backend_.create_event();
}

void StreamReleases::recycle_event(Event e) {
  if (auto it = shared_.find(e.id); it != shared_.end()) {
    if (--it->second > 0) return;
    shared_.erase(it);
  }
  spare_.push_back(e);
}

void StreamReleases::cache(Stream s, std::uint64_t key, const Location& loc, std::size_t footprint) {
  StreamCache& sc = caches_[s.id];
  sc.by_key[key].push_back({loc, footprint, next_seq_++});
  sc.footprint += footprint;
  cached_footprint_ += footprint;
}

void StreamReleases::forget_taken(CacheMap::iterator it, KeyedFrees::iterator k, std::size_t footprint) {
  if (k->second.empty()) it->second.by_key.erase(k);
  it->second.footprint -= footprint;
  cached_footprint_ -= footprint;
  if (it->second.by_key.empty()) caches_.erase(it);
}

std::size_t StreamReleases::cached_footprint(Stream s) const {
  auto it = caches_.find(s.id);
  return it == caches_.end() ? 0 : it->second.footprint;
}

std::size_t StreamReleases::deferred_footprint() const {
  std::size_t bytes = 0;
  for (const DeferredFree& d : deferred_) bytes += d.footprint;
  return bytes;
}

std::size_t StreamReleases::held_count() const {
  std::size_t n = deferred_.size();
  for (const auto& [id, sc] : caches_)
    for (const auto& [key, list] : sc.by_key) n += list.size();
  return n;
}

void StreamReleases::defer_cached(Stream s, std::uint64_t bound, Event ev) {
  std::uint32_t covered = 0;
  if (auto it = caches_.find(s.id); it != caches_.end()) {
    StreamCache& sc = it->second;
    for (auto k = sc.by_key.begin(); k != sc.by_key.end();) {
      auto& list = k->second;
      std::size_t kept = 0;
      for (auto& c : list) {
        if (c.seq >= bound) {  // cached while the event was being recorded: the next flush's
          list[kept++] = c;
          continue;
        }
        deferred_.push_back({c.loc, c.footprint, {ev}});
        sc.footprint -= c.footprint;
        cached_footprint_ -= c.footprint;
        ++covered;
      }
      list.resize(kept);
      k = list.empty() ? sc.by_key.erase(k) : std::next(k);
    }
    if (sc.by_key.empty()) caches_.erase(it);
  }
  if (covered == 0)
    spare_.push_back(ev);  // every free it was for was reused by its stream meanwhile
  else if (covered > 1)
    shared_[ev.id] = covered;
}

Status StreamReleases::flush(std::unique_lock<HeapMutex>& lock, std::optional<Stream> only,
                             std::vector<CachedFree>& gone) {
  std::vector<Stream> streams;
  for (const auto& [id, sc] : caches_)
    if (!only || only->id == id) streams.push_back(Stream{id});
  Status first;
  for (const Stream s : streams) {
    const std::uint64_t bound = next_seq_;
    Result<Event> ev = take_event();
    if (!ev.ok()) return ev.error();
    ++recording_[s.id];
    lock.unlock();
    const Status st = backend_.record_event(*ev, s);
    lock.lock();
    if (auto r = recording_.find(s.id); --r->second == 0) recording_.erase(r);
    if (!st.ok()) {
      recycle_event(*ev);
      if (st.code() == Errc::not_found) {
        if (auto it = caches_.find(s.id); it != caches_.end()) {
          for (auto& [key, list] : it->second.by_key) gone.insert(gone.end(), list.begin(), list.end());
          cached_footprint_ -= it->second.footprint;
          caches_.erase(it);
        }
      } else if (first.ok()) {
        first = st;
      }
      continue;
    }
    defer_cached(s, bound, *ev);
  }
  return first;
}

Status StreamReleases::record(HeapMutex& mu, Stream s, std::vector<Event>& pending) {
  Result<Event> ev = make_error(Errc::internal, "unset");
  {
    std::lock_guard lock(mu);
    ev = take_event();
  }
  Status st = ev.ok() ? backend_.record_event(*ev, s) : Status(ev.error());
  if (st.ok()) {
    std::lock_guard lock(mu);
    pending.push_back(*ev);
  } else {
    // Without an event the only safe release is after the stream has drained.
    if (ev.ok()) {
      std::lock_guard lock(mu);
      recycle_event(*ev);
    }
    (void)backend_.synchronize_stream(s);
  }
  return st;
}

Status StreamReleases::record_locked(Stream s, std::vector<Event>& pending) {
  Result<Event> ev = take_event();
  Status st = ev.ok() ? backend_.record_event(*ev, s) : Status(ev.error());
  if (st.ok()) {
    pending.push_back(*ev);
    return st;
  }
  if (ev.ok()) recycle_event(*ev);
  (void)backend_.synchronize_stream(s);  // without an event, only a drained stream is safe
  return st;
}

bool StreamReleases::reap(std::vector<Event>& pending) {
  for (std::size_t i = 0; i < pending.size();) {
    auto done = backend_.query_event(pending[i]);
    if (done.ok() && !*done) {
      ++i;
      continue;
    }
    recycle_event(pending[i]);  // complete (or unknown to the backend: nothing left to wait for)
    pending[i] = pending.back();
    pending.pop_back();
  }
  return pending.empty();
}

bool StreamReleases::all_complete(const std::vector<Event>& events, std::unordered_map<std::uintptr_t, bool>& done) {
  for (const Event ev : events) {
    auto known = done.find(ev.id);
    if (known == done.end()) {
      auto q = backend_.query_event(ev);
      known = done.emplace(ev.id, !(q.ok() && !*q)).first;
    }
    if (!known->second) return false;
  }
  return true;
}

Status StreamReleases::destroy_all(std::vector<Event>& pending) {
  Status first;
  for (Event ev : pending) {
    if (auto st = backend_.synchronize_event(ev); !st.ok() && first.ok()) first = st;
    if (auto st = backend_.destroy_event(ev); !st.ok() && first.ok()) first = st;
  }
  pending.clear();
  return first;
}

Status StreamReleases::destroy_all() {
  Status first;
  // An event shared by several deferred frees is destroyed once.
  std::vector<Event> events;
  std::unordered_set<std::uintptr_t> seen;
  for (auto& d : deferred_)
    for (const Event ev : d.events)
      if (seen.insert(ev.id).second) events.push_back(ev);
  if (auto st = destroy_all(events); !st.ok() && first.ok()) first = st;
  deferred_.clear();
  shared_.clear();
  for (Event ev : spare_)
    if (auto st = backend_.destroy_event(ev); !st.ok() && first.ok()) first = st;
  spare_.clear();
  return first;
}

Status StreamReleases::validate() const {
  std::unordered_map<std::uintptr_t, std::uint32_t> uses;
  for (const auto& d : deferred_) {
    if (d.events.empty()) return make_error(Errc::internal, "validate: a deferred free waits on no event");
    for (const Event ev : d.events) {
      ++uses[ev.id];
      if (std::find(spare_.begin(), spare_.end(), ev) != spare_.end())
        return make_error(Errc::internal, "validate: event " + std::to_string(ev.id) + " is both spare and pending");
    }
  }
  for (const auto& [id, n] : uses) {
    auto it = shared_.find(id);
    if ((n > 1) != (it != shared_.end()) || (n > 1 && it->second != n))
      return make_error(Errc::internal, "validate: event " + std::to_string(id) + " is shared by " + std::to_string(n) +
                                            " deferred frees but counted otherwise");
  }
  std::size_t total = 0;
  for (const auto& [id, sc] : caches_) {
    std::size_t footprint = 0;
    for (const auto& [key, list] : sc.by_key) {
      if (list.empty()) return make_error(Errc::internal, "validate: an empty list in a stream cache");
      for (const auto& c : list) footprint += c.footprint;
    }
    if (footprint != sc.footprint) return make_error(Errc::internal, "validate: a stream cache's footprint is wrong");
    total += footprint;
  }
  if (total != cached_footprint_) return make_error(Errc::internal, "validate: the cached footprint is wrong");
  return {};
}

}  // namespace valet::detail
