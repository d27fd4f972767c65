// The move executor: the one copy flow of every mover (evacuation, meshing, unsharing a tail,
// resize by copy), so that no copy runs and no stream is waited on while the heap lock is held.
//
//   1. (heap lock held) the mover has claimed its objects (move_claims.h) and taken their new
//      places; it hands the executor the batch: the copies, and the arena slots they read and
//      write;
//   2. the executor holds those slots in the page pool (nothing unmaps a slot that queued work
//      touches) and takes an event, releases the heap lock, queues one batched copy on the heap's
//      work stream, records the event and waits for it (the holds and the claims keep the slots
//      mapped and the objects' bytes unchanged meanwhile: no call under the lock). Once the copy
//      completed it ends the holds and runs the mover's `after_copy` step, still without the
//      lock (meshing commits its claims and remaps there), then retakes the lock;
//   3. (heap lock held) the mover commits what no pin cancelled: repoints or aliases, and frees
//      the old places; a cancelled or failed move gives its new place back.
// A copy that cannot be queued or completed returns its error after the work stream has drained
// (nothing queued outlives the holds; the wait too runs without the lock); `after_copy` does not
// run then.
#pragma once

#include <mutex>
#include <span>
#include <vector>

#include "heap_mutex.h"
#include "page_pool.h"
#include "stream_releases.h"

namespace valet::detail {

struct CopyBatch {
  std::vector<CopyRange> copies;
  std::vector<std::uint32_t> slots;  // every arena slot the copies read or write
  void clear() {
    copies.clear();
    slots.clear();
  }
};

class MoveExecutor {
 public:
  MoveExecutor(VmmDoor& backend, PagePool& pool, StreamReleases& releases)
      : backend_(backend), pool_(pool), releases_(releases) {}

  void set_stream(Stream s) { stream_ = s; }
  Stream stream() const { return stream_; }

  // Runs steps 2 of the flow above. Precondition: `lock` holds the heap lock; it is released and
  // retaken (held again on return, success or not).
  template <class AfterCopy>
  Status run(std::unique_lock<HeapMutex>& lock, const CopyBatch& batch, AfterCopy&& after_copy) {
    lock.mutex()->assert_held();
    Event ev{};
    const Status held = hold(batch, ev);
    lock.unlock();
    const Status queued = held.ok() ? queue(batch, ev) : held;
    Status st = queued.ok() ? backend_.synchronize_event(ev) : queued;
    if (st.ok()) {
      pool_.unhold(batch.slots);  // the copy no longer touches them
      after_copy();
    } else {
      drain();  // whatever was queued is done before the slots may be unmapped or reused
    }
    lock.lock();
    return finish(batch, ev, st);
  }
  Status run(std::unique_lock<HeapMutex>& lock, const CopyBatch& batch) {
    return run(lock, batch, [] {});
  }

 private:
  // Under the heap lock: holds the slots and takes an event for the copy (`ev`: a null event
  // when none could be taken). The slots stay held until finish().
  Status hold(const CopyBatch& batch, Event& ev);
  // Without the lock: queues the copy and records `ev` after it.
  Status queue(const CopyBatch& batch, Event ev);
  // Waits for the work stream (no lock held).
  void drain();
  // Under the lock again: recycles the event; after a failure (the stream drained) destroys it
  // and ends the holds.
  Status finish(const CopyBatch& batch, Event ev, Status st);

  VmmDoor& backend_;
  PagePool& pool_;
  StreamReleases& releases_;
  Stream stream_{};
};

}  // namespace valet::detail
