#include "stream_releases.h"

#include <algorithm>
#include <mutex>
#include <string>

namespace valet::detail {

Result<Event> StreamReleases::take_event() {
  if (!spare_.empty()) {
    const Event e = spare_.back();
    spare_.pop_back();
    return e;
  }
  return backend_.create_event();
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

bool StreamReleases::all_complete(const std::vector<Event>& events) {
  for (const Event ev : events) {
    auto done = backend_.query_event(ev);
    if (done.ok() && !*done) return false;
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
  for (auto& d : deferred_)
    if (auto st = destroy_all(d.events); !st.ok() && first.ok()) first = st;
  deferred_.clear();
  for (Event ev : spare_)
    if (auto st = backend_.destroy_event(ev); !st.ok() && first.ok()) first = st;
  spare_.clear();
  return first;
}

Status StreamReleases::validate() const {
  for (const auto& d : deferred_) {
    if (d.events.empty()) return make_error(Errc::internal, "validate: a deferred free waits on no event");
    for (const Event ev : d.events)
      if (std::find(spare_.begin(), spare_.end(), ev) != spare_.end())
        return make_error(Errc::internal, "validate: event " + std::to_string(ev.id) + " is both spare and pending");
  }
  return {};
}

}  // namespace valet::detail
