// The miss mapper (Config::background_misses): a thread that makes the driver calls of large
// allocations that found no mapped run, so that the allocating thread does not.
//
// An allocation that misses promises its pages (PagePool::promise), gives the object its handle at
// once and hands the miss here; the thread chooses its run and pages under the heap lock, makes
// the calls, books them and publishes the address; the object is pending until then. (Where the
// pages cannot be promised, the allocating thread chooses them itself and hands the begun batch.) A pending object is
// claimed MOVING (not cancelable) for the whole time, so every existing rule covers it: a pin
// waits for the claim's end (the host pin of a pending object waits for its mapping), free and
// resize wait as they wait for a move, compaction and shutdown skip or wait for it, validate()
// knows its run is provisioning. docs/background_misses.md has the design and its limits.
//
// The thread takes the queued misses one at a time, in order, makes the calls without the heap
// lock (`calls`), takes it again and hands the miss to `finish` (HeapCore::finish_miss), which
// books the step and begins the next one if any (`finish` returns false and the miss goes back to
// the front of the queue): a shared tail's alias after its body, or, after a failed call, the run
// again at the same start, so that the address handed out holds. After three failed runs the
// object is given up. After a miss is settled, `settled` (optional) runs with the lock held and
// may let it go (HeapCore trims there what a pending object freed meanwhile gave back).
//
// Threading: submit, pending and wait_settled require the heap lock; start and stop must be called
// without it.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "heap_mutex.h"
#include "page_pool.h"

namespace valet::detail {

struct SlabPage;

// Misses the calling thread submitted (Heap::this_thread_background_misses).
inline thread_local std::uint64_t t_background_misses = 0;
// Whether the calling thread is making a miss's steps (the mapper's thread, or a pin serving a
// queued miss): it places under the heap lock and never lets it go there.
inline thread_local bool t_serving_miss = false;

// The pending objects by handle index, with a freed flag each: O(1) membership, insertion and
// removal with no allocation once grown (a hash map's node per miss was malloc and free under the
// heap lock, on the allocating thread and the mapper's).
class PendingIndexes {
 public:
  std::size_t size() const { return listed_.size(); }
  bool contains(std::uint32_t index) const { return index < at_.size() && at_[index] != 0; }
  bool freed(std::uint32_t index) const { return contains(index) && listed_[at_[index] - 1].freed; }
  // Precondition: contains(index).
  void mark_freed(std::uint32_t index) { listed_[at_[index] - 1].freed = true; }
  void insert(std::uint32_t index) {
    if (contains(index)) return;
    if (index >= at_.size()) at_.resize(std::max<std::size_t>(index + 1, 2 * at_.size()), 0);
    listed_.push_back({index, false});
    at_[index] = std::uint32_t(listed_.size());
  }
  void erase(std::uint32_t index) {
    if (!contains(index)) return;
    const std::uint32_t pos = at_[index] - 1;
    listed_[pos] = listed_.back();
    at_[listed_[pos].index] = pos + 1;
    listed_.pop_back();
    at_[index] = 0;
  }
  template <class F>
  void for_each(F&& f) const {
    for (const Entry& e : listed_) f(e.index, e.freed);
  }

 private:
  struct Entry {
    std::uint32_t index;
    bool freed;
  };
  std::vector<Entry> listed_;
  std::vector<std::uint32_t> at_;  // at_[index]: its position in listed_ + 1; 0 when not pending
};

// One pending object's way to a mapped run. Each step is a batch begun under the heap lock whose
// calls the mapper makes without it:
//   place      not placed yet: the allocation promised its pages (PagePool::promise) and the
//              mapper chooses its run under the lock (`place`, before any call), which begins
//              one of the steps below, or books a run that needs no call;
//   run        a place batch of the whole run (place_calls);
//   body       a shared tail's: the body mapped, the last slot held (place_calls); then
//   alias      the last slot maps a slab page's physical page (attach_calls; the slab page
//              `host` is detached meanwhile); or, when no slab page has the room any more,
//   last_page  a page of its own for the last slot (place_calls).
// A failed step begins the whole run again at its start (step run).
struct PendingMiss {
  enum class Step : std::uint8_t { run, body, alias, last_page, place, slab_alias };
  std::uint32_t index = 0;  // the object's handle index
  Step step = Step::run;
  PagePool::PlaceBatch batch;   // run, body, last_page
  PagePool::AttachPlan plan;    // alias
  PagePool::TailAlias tail_alias;  // slab_alias: an open tail's page mapped for a small object's slab page
  SlabPage* host = nullptr;     // alias: the slab page whose physical page the last slot maps
  bool host_had_objects = false;
  unsigned attempts = 1;        // runs begun for it so far
  std::uint64_t seq = 0;        // its place in the order of submission (MissMapper::submit)
  bool small = false;           // a small object's: queued before the large ones (submit)
  // body, then alias: one page promised for the last slot, should its slab page be gone when
  // the body is booked or its alias fail (HeapCore::last_page_promises).
  bool last_promised = false;
  bool empty() const { return step == Step::run && batch.empty(); }
};

class MissMapper {
 public:
  // place(miss, lock): a miss of step `place` placed under the heap lock (never letting it go);
  // true when it is settled already (a run that needs no call, or the object given up), false
  // when its first step began. calls(miss): the step's calls, without the heap lock.
  // finish(miss): books them under it (never letting it go); false when the miss has a next
  // step (queue it again).
  using Place = std::function<bool(PendingMiss&, std::unique_lock<HeapMutex>&)>;
  using Calls = std::function<void(PendingMiss&)>;
  using Finish = std::function<bool(PendingMiss&)>;
  using Settled = std::function<void(std::unique_lock<HeapMutex>&)>;
  MissMapper(HeapMutex& mu, Place place, Calls calls, Finish finish, Settled settled = {})
      : mu_(mu),
        place_(std::move(place)),
        calls_(std::move(calls)),
        finish_(std::move(finish)),
        settled_(std::move(settled)) {}
  ~MissMapper() { stop(); }
  MissMapper(const MissMapper&) = delete;
  MissMapper& operator=(const MissMapper&) = delete;

  // After its queue empties, the thread polls for this long before it sleeps (0: it sleeps at
  // once), so that a miss submitted meanwhile needs no wake (Config::miss_mapper_spin_us). Set
  // before start().
  void set_spin_us(std::uint32_t us) { spin_us_ = us; }
  // Starts the thread. Idempotent.
  void start();
  // Stops and joins the thread once every queued miss is booked.
  void stop();
  // Whether misses may be submitted (lock held): from start() until stop() begins.
  bool running() const {
    mu_.assert_held();
    return running_;
  }
  std::thread::id thread_id() const { return thread_.get_id(); }  // tests gate its calls
  // Queues a begun batch (lock held; the thread must run).
  void submit(PendingMiss miss);
  // Has the thread run its settled callback once more, before it takes the next queued miss
  // (lock held): work handed to it outside a miss (HeapCore::trim_returned).
  void want_turn();
  // Misses queued or under way (lock held).
  std::size_t pending() const {
    mu_.assert_held();
    return pending_.size();
  }
  // Submits that had to wake the sleeping thread (lock held).
  std::uint64_t wakes() const {
    mu_.assert_held();
    return wakes_;
  }
  // Whether the object of handle index `index` is pending (lock held); freed while pending.
  bool is_pending(std::uint32_t index) const {
    mu_.assert_held();
    return pending_.contains(index);
  }
  bool is_freed(std::uint32_t index) const {
    mu_.assert_held();
    return pending_.freed(index);
  }
  // A free of a pending object (lock held): the mapper releases it once its step ends.
  void mark_freed(std::uint32_t index) {
    mu_.assert_held();
    pending_.mark_freed(index);
  }
  // A free of a pending object whose step is still queued (lock held): the miss leaves the
  // queue, its calls never made (the caller abandons its step); nullopt when the thread has it.
  std::optional<PendingMiss> take_queued(std::uint32_t index);
  // The handle indices of the queued misses, in the order the thread will take them (lock held).
  std::vector<std::uint32_t> queued_order() const {
    mu_.assert_held();
    std::vector<std::uint32_t> order;
    for (const PendingMiss& m : queued_) order.push_back(m.index);
    return order;
  }
  // Calls f(index, freed) for every pending object (lock held).
  template <class F>
  void for_each_pending(F&& f) const {
    mu_.assert_held();
    pending_.for_each(f);
  }
  // Misses made without the heap lock wait in their threads' caches until a holder of the lock
  // submits them (HeapCore::collect_unlocked_misses); the thread collects them before it looks
  // at its queue (`collect`, set before start(); lock held). note_unlocked: one more waits
  // (without the heap lock; its cache's lock held); returns true when the thread may be asleep,
  // and then the caller must take the heap lock and collect it (a wake without the lock can be
  // lost: the thread may have read the count and not be waiting yet). took_unlocked(n): n of
  // them were collected (their caches' locks held). unlocked_waiting: how many wait.
  void set_collect(std::function<void()> collect) { collect_ = std::move(collect); }
  bool note_unlocked();
  void took_unlocked(std::uint32_t n) { unlocked_.fetch_sub(n, std::memory_order_relaxed); }
  std::uint32_t unlocked_waiting() const { return unlocked_.load(std::memory_order_acquire); }
  // Waits (letting `lock`, holding mu, go meanwhile) until every miss submitted before the call
  // is settled (mapped, lost, or freed and released).
  void wait_settled(std::unique_lock<HeapMutex>& lock);
  // A pin's help (Config::pins_serve_misses): when the miss of object `index` is still queued,
  // the calling thread takes it out of the queue and makes its steps itself, as the thread would
  // have (lock held; let go during the calls); the settled callback is not run (the caller does
  // what it must of it, or asks for a turn: want_turn). Returns whether it served the miss. The
  // pin waits for the object either way; serving spares it the wait for the misses queued
  // before it and the hand-over.
  bool serve_queued(std::uint32_t index, std::unique_lock<HeapMutex>& lock);

 private:
  void loop();
  // Polls (without the heap lock) until a miss is submitted or spin_us_ passed.
  void poll(std::unique_lock<HeapMutex>& lock);
  void settle(const PendingMiss& m);  // it leaves the pending set (lock held)
  // One step of a miss: its placement if not placed yet, its calls, its booking; true when the
  // miss is settled, false when it has a next step (lock held, let go during the calls).
  bool step(PendingMiss& m, std::unique_lock<HeapMutex>& lock);

  HeapMutex& mu_;
  Place place_;
  Calls calls_;
  Finish finish_;
  Settled settled_;
  std::thread thread_;
  std::condition_variable_any work_cv_, settled_cv_;
  std::deque<PendingMiss> queued_;  // under mu
  PendingIndexes pending_;  // under mu: queued or in hand; freed
  // Under mu: their submission numbers, ascending (submitted in order; few at a time).
  std::vector<std::uint64_t> outstanding_;
  std::uint64_t last_seq_ = 0;                       // under mu
  bool turn_wanted_ = false;                         // under mu: want_turn
  bool stop_ = false;          // under mu
  bool running_ = false;       // under mu
  // The thread waits on work_cv_ (under mu): only then does a submit wake it. A submit while
  // it maps or polls costs its caller no system call.
  bool sleeping_ = false;
  std::uint64_t wakes_ = 0;  // under mu
  std::atomic<std::uint64_t> submitted_{0};  // submits and stop, for the poll without the lock
  std::uint32_t spin_us_ = 0;
  std::function<void()> collect_;
  // Misses waiting in thread caches, and whether the thread is (about to be) asleep on work_cv_:
  // sequentially consistent, so that of a caller noting a miss and the thread going to sleep, at
  // least one sees the other (note_unlocked).
  std::atomic<std::uint32_t> unlocked_{0};
  std::atomic<bool> asleep_{false};
};

}  // namespace valet::detail
