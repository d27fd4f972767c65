// Thread caches: each thread keeps the small objects it freed, per size class, and the large
// runs it freed, and its next allocations of the class (of the run's page count) take them back
// without the heap lock (docs/design.md, "Thread caches"). With one heap lock, eight threads
// allocating and freeing serialize on it; with the caches, a steady allocate/free touches only
// the thread's own cache lock, which nobody else takes except briefly under the heap lock.
//
// What a cached object is: a slab slot taken and still owned by its handle index (the slot's
// owner in the slab page is the index), the entry not LIVE, its generation that of the freed
// object (a handle to the freed object is stale at once). Its footprint stays counted: the slot
// is unavailable to anyone else until it is reused or drained. A cached slot is never moved or
// meshed: every mover claims the slot's owner first, and a claim of a non-live entry fails. A
// cached run is the same for a large object: its pages stay its index's, mapped where they were,
// and its tail (an open tail or a slab page on it) stays as it was, so the run is taken back
// only for at most the bytes it was freed with: the new object's bytes on its last page are
// within those that the tail leaves to it (no tail bookkeeping changes without the lock). The
// places that need every slot movable (a compaction cycle, an unshare of a tail, the last resort
// before out-of-memory) drain the caches first.
//
// Threading. A cache's contents and counter deltas are guarded by its own lock (`mu`), which
// its thread takes for every fast allocate or free, and which the heap takes only with the heap
// lock held (lock order: heap, then thread_cache). The heap "gates" the fast paths when it
// needs a still picture of the handle table (validate, stats, shutdown, a drain): gate() sets a
// flag and passes through every cache's lock once; a fast path checks the flag under its lock and
// takes the locked path instead, which waits for the heap lock. While gated, the heap lock's
// holder reads and changes every cache, each under its lock (for_each), one at a time.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "handle_table.h"
#include "heap_mutex.h"
#include "size_classes.h"

namespace valet::detail {

// One freed object kept for reuse: its handle index, its place and its address.
struct CachedSlot {
  std::uint32_t index = 0;
  Location loc;
  DevicePtr address = 0;
};

// One freed large object kept for reuse: as a slot, with the bytes it was freed with (the most
// a reuse may take) and its footprint (its pages' bytes).
struct CachedRun {
  std::uint32_t index = 0;
  Location loc;
  DevicePtr address = 0;
  std::size_t bytes = 0, footprint = 0;
};

using ThreadCacheMutex = RankedMutex<LockRank::thread_cache>;

struct alignas(64) ThreadCache {
  // Objects of one class kept at most (and the byte limit of Config::thread_cache_bytes).
  static constexpr std::size_t kPerClass = 32;
  // Large runs kept at most (and the byte limits of Config::thread_cache_run_bytes and
  // thread_cache_runs_total_bytes).
  static constexpr std::size_t kRuns = 8;

  explicit ThreadCache(std::thread::id t) : thread(t) {}

  mutable ThreadCacheMutex mu;
  const std::thread::id thread;  // the thread it serves (a new thread may inherit a gone one's id)
  std::array<std::vector<CachedSlot>, kClassCount> bins;
  std::size_t bytes = 0;  // class sizes of the cached slots
  std::vector<CachedRun> runs;  // the oldest first
  std::size_t run_bytes = 0;    // footprints of the cached runs
  std::size_t run_allowance = 0;  // run_bytes stay within it (ThreadCaches::grant_runs)
  // Whether this thread's freed runs are worth keeping: a run cached and mapped holds memory no
  // object uses, which pays only where the thread's next allocations take it back (a thread
  // allocating one shape over and over), not where the sizes wander (a serving loop's KV
  // caches). A run taken back raises the credit, one given back unused lowers it; without
  // credit a thread keeps only every kRunProbe-th run it frees, to notice when reuse starts.
  static constexpr std::uint32_t kRunCreditMax = 8, kRunProbe = 16;
  std::uint32_t run_credit = 1;
  std::uint32_t runs_declined = 0;  // run frees not kept since the last kept one
  bool wants_runs() const { return run_credit > 0 || runs_declined + 1 >= kRunProbe; }
  void run_reused() { run_credit = std::min(kRunCreditMax, run_credit + 2); }
  void run_unused() { run_credit -= run_credit > 0; }
  // Misses made without the heap lock (HeapCore::allocate_unlocked_miss: a large allocation
  // while another thread holds the heap lock). What the heap handed this cache for them under
  // the heap lock: handle indices (settled free entries) and pages credited out of the
  // capacity (PagePool::credit). `inbox`: the objects made so far whose misses the mapper's
  // queue has not taken yet (HeapCore::collect_unlocked_misses): their entries LIVE, claimed as
  // moves and unplaced, their pages taken from the credit.
  static constexpr std::size_t kSpareHandles = 4, kInbox = 8;
  std::vector<std::uint32_t> spare_handles;
  std::size_t credit_pages = 0;
  std::vector<std::uint32_t> inbox;
  // The heap's counters this cache changed since they were last folded in (HeapCore::fold).
  std::int64_t live_bytes = 0, live_objects = 0;
  std::uint64_t allocs = 0, frees = 0;
  std::uint64_t run_allocs = 0;  // of `allocs`, runs taken back
  std::uint64_t miss_allocs = 0;  // of `allocs`, misses made without the heap lock
  std::size_t footprint = 0;      // of those misses' objects
  bool changed = false;  // an address or generation changed (the device table must be rebuilt)

  bool holds_nothing() const {
    return bytes == 0 && runs.empty() && spare_handles.empty() && credit_pages == 0 && inbox.empty();
  }
};

class ThreadCaches {
 public:
  ThreadCaches(std::size_t bytes_per_thread, std::size_t run_bytes_per_thread, std::size_t run_bytes_total)
      : limit_(bytes_per_thread), run_limit_(run_bytes_per_thread), run_total_limit_(run_bytes_total) {}

  bool enabled() const { return limit_ > 0 || run_limit_ > 0; }
  std::size_t limit() const { return limit_; }
  std::size_t run_limit() const { return std::min(run_limit_, run_total_limit_); }
  // Whether an allocation of `bytes` could come from a cache.
  bool serves(std::size_t bytes) const { return bytes <= kMaxSlabObject ? limit_ > 0 : bytes <= run_limit(); }
  // Precondition: heap lock held, and `c`'s lock. The total is shared out as allowances: a
  // cache holds runs within its own (its fast frees read nothing another thread writes), and
  // the allowances add up to at most the total. grant_runs gives `c` up to the per-thread
  // limit of what the others leave; revoke_runs takes all of it back (the cache holds no run).
  void grant_runs(ThreadCache& c);
  void revoke_runs(ThreadCache& c);
  std::size_t runs_granted() const { return run_granted_; }  // under the heap lock

  // The calling thread's cache of this heap, or nullptr if it has none yet. Lock-free.
  ThreadCache* mine() const;
  // Precondition: heap lock held. The calling thread's cache, made now if it has none.
  ThreadCache* mine_or_make();

  // Whether fast paths must take the locked path (read under a cache's lock). Acquire: a fast
  // path that sees the gate lifted sees everything its holder did before ungate() (validate's
  // reads of an entry that the fast path then rewrites: without it, a data race).
  bool gated() const { return gate_.load(std::memory_order_acquire) != 0; }
  // Precondition: heap lock held. After gate(), no fast path is in flight and none starts until
  // the matching ungate(); the caches are the heap lock holder's to read and change.
  void gate();
  void ungate();
  // Precondition: heap lock held and gated. Removes the empty caches that no thread can reach
  // any more (their threads exited); folded and drained caches only. `release(c)` runs first on
  // each cache no thread can reach (under its lock), to give back what it holds for its thread.
  void drop_orphans(const std::function<void(ThreadCache&)>& release);

  // Precondition: heap lock held. Caches registered.
  std::size_t count() const { return caches_.size(); }
  // Precondition: heap lock held, and gated unless `f` touches only what each cache's lock
  // guards (the misses' inboxes). Every cache in turn, under its lock: the fast paths that
  // follow see what `f` changed.
  template <typename F>
  void for_each(F&& f) {
    for (auto& c : caches_) {
      std::lock_guard lock(c->mu);
      f(*c);
    }
  }
  template <typename F>
  void for_each(F&& f) const {
    for (const auto& c : caches_) {
      std::lock_guard lock(c->mu);
      f(static_cast<const ThreadCache&>(*c));
    }
  }

 private:
  std::size_t limit_, run_limit_, run_total_limit_;
  std::size_t run_granted_ = 0;  // the caches' run allowances, under the heap lock
  std::uint64_t id_ = next_id();  // never reused: a thread's record of a gone heap matches nothing
  // Under the heap lock. Shared with the thread's own record (thread_caches.cpp): a cache whose
  // thread has exited (or dropped its record) is the registry's alone, and drop_orphans() ends it.
  std::vector<std::shared_ptr<ThreadCache>> caches_;
  std::atomic<int> gate_{0};

  static std::uint64_t next_id();
};

// RAII: gates the fast paths for a scope (heap lock held throughout).
class FastPathGate {
 public:
  explicit FastPathGate(ThreadCaches& c) : c_(c) { c_.gate(); }
  ~FastPathGate() { c_.ungate(); }
  FastPathGate(const FastPathGate&) = delete;
  FastPathGate& operator=(const FastPathGate&) = delete;

 private:
  ThreadCaches& c_;
};

}  // namespace valet::detail
