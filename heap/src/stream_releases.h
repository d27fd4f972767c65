// Stream-ordered releases: work a user queued on a stream may still touch an object after its
// stream pin was released, or the device table after its scope was released. What such work may
// touch is reused only once an event recorded at the release has completed. This component owns
// the events (recycled, since creating one is a driver call) and the frees that wait on them.
//
// Threading: every call requires the heap lock, except `record`, which takes it itself (the
// driver call that records the event runs without it).
#pragma once

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

class StreamReleases {
 public:
  explicit StreamReleases(VmmDoor& backend) : backend_(backend) {}

  // An event to record (a spare one, or a new one: a driver call).
  Result<Event> take_event();
  void recycle_event(Event e) { spare_.push_back(e); }

  // Records an event at the current end of `s` into `pending`. If no event can be recorded,
  // waits for the stream instead, so nothing is released early. Takes `mu` itself.
  Status record(HeapMutex& mu, Stream s, std::vector<Event>& pending);
  // Drops the completed events of `pending` (recycled); true when none remain.
  bool reap(std::vector<Event>& pending);

  // A free whose events have not completed: its memory stays taken, owned by nobody.
  void defer(DeferredFree d) { deferred_.push_back(std::move(d)); }
  const std::vector<DeferredFree>& deferred() const { return deferred_; }
  // Hands every deferred free whose events completed to `release` and forgets it.
  template <class Release>
  void reap_deferred(Release&& release) {
    for (std::size_t i = 0; i < deferred_.size();) {
      if (!all_complete(deferred_[i].events)) {
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

  // Shutdown: waits for and destroys every event (those of `pending` lists too); the first
  // error is returned, everything is attempted.
  Status destroy_all(std::vector<Event>& pending);
  Status destroy_all();

  // Every deferred free waits on at least one event; no spare event is also pending.
  Status validate() const;

 private:
  bool all_complete(const std::vector<Event>& events);

  VmmDoor& backend_;
  std::vector<Event> spare_;
  std::vector<DeferredFree> deferred_;
};

}  // namespace valet::detail
