// The reserve keeper: keeps the page pool's reserve (created, mapped, unused pages) where
// allocations find mapped pages without a driver call, and gives memory back as live memory
// falls. With Config::background_reserve it is a thread of its own that wakes when an allocation
// took reserve pages or a free returned some (and every 20 ms), otherwise its work runs inline on
// the caller's thread, to the watermarks only.
//
// The background keeper's targets (targets()):
//   limit     the reserve pages it keeps at most: Config::reserve_fraction of the live pages, and
//             no more than brings mapped pages to Config::reserve_peak_ratio x the recent peak
//             of ordinary live bytes (demand.h); never under the high watermark. Freed large runs
//             stay mapped up to it, so that later allocations reuse them (best fit, split and
//             coalesced by the pool, runs grown in place).
//   ceiling   the peak bound alone: a free of no ordinary demand (a probe) that leaves the
//             reserve above it trims down to it on its own thread (trim_surplus).
//   frontier  the longest reserve run it keeps ready: twice the longest recent large request,
//             within half the limit (the other half keeps freed runs), at least the low
//             watermark. A large allocation that fits no freed run takes it without a call.
// An ordinary free leaves it whatever surplus it returns, and any chunk it empties: with the
// thread, such frees make no driver call (trim_surplus). With background misses and a hold
// (Config::reserve_hold_allocs, by default 16 allocations that took pages; reserve_hold_ms in time),
// the keeper gives back the surplus over the limit once no allocation took it for the hold (beyond
// the ceiling at once): an allocation that follows a free within the hold takes the freed pages
// rather than new ones; with Config::keeper_creates_ahead false (the default) it creates pages
// only up to the low watermark (may_create), none ahead of demand beyond it, and the misses create
// what they need on the mapper's thread.
// Without either, each free's surplus is released at once and the next allocation's pages
// created again (on the host's t1 with --verify, 54k of 56k releases were such trims, and the
// keeper's provisioning made 42k of the creates; docs/speed.md, "Session 31").
// While the thread runs it also unmaps the alias slots that frees and compaction let go of
// (meshed slab pages' aliases, shared tails' last slots: PagePool::drop_alias defers them), so
// that a free makes no driver call for them.
// Every driver call it makes runs without the heap lock: a batch is taken out of the pool under
// the lock, its calls are made without it, and the outcome is booked under it again (the pool's
// ReleaseBatch and ProvisionBatch). Neither allocations nor compaction wait for it; an
// allocation that finds nothing ready maps its own pages (the pool's stitching), the fallback.
//
// Threading: want_refill, after_release and targets require the heap lock; start and stop must
// be called without it (the thread takes it).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "demand.h"
#include "heap_mutex.h"
#include "page_pool.h"
#include "valet/config.h"

namespace valet::detail {

struct ReserveTargets {
  std::size_t limit = 0;
  // The reserve pages that keep mapped memory within reserve_peak_ratio x the recent peak of
  // ordinary live bytes (the peak bound alone, no fraction): a free of no ordinary demand that
  // leaves the reserve above it trims down to it on its own thread (trim_surplus).
  std::size_t ceiling = 0;
  std::uint32_t frontier = 0;
  std::size_t may_create = 0;  // pages the keeper may create now (the limit less the reserve)
};

// The keeper thread's waits to take the heap lock back after a batch's driver calls (made
// without it): while a caller holds the lock (a compaction step, a shared tail's alias map;
// until session 24 every placement's calls), the keeper's next batch waits (docs/speed.md,
// "Session 23").
struct KeeperLockWaits {
  std::uint64_t batches = 0;        // reacquisitions after a batch's calls
  std::uint64_t yields = 0;         // reacquisitions after letting a waiting caller go first
  std::uint64_t wait_ns = 0;        // the total wait of both
  std::uint64_t longest_ns = 0;
  std::uint64_t over_1ms = 0;       // waits longer than a millisecond
};

class ReserveKeeper {
 public:
  // `on_wake` runs under the heap lock each time the thread wakes, before the reserve is kept
  // (the heap reaps deferred frees there). `live_bytes` and `demand` are the heap's, read under
  // the heap lock.
  ReserveKeeper(HeapMutex& mu, PagePool& pool, const Config& config, const std::int64_t& live_bytes, Demand& demand,
                std::function<void()> on_wake);
  // A counter of another type would bind a temporary, gone after the constructor.
  ReserveKeeper(HeapMutex&, PagePool&, const Config&, std::int64_t&&, Demand&, std::function<void()>) = delete;
  ~ReserveKeeper() { stop(); }

  // Called on the keeper's thread after each turn's reserve work (unless paused), with the heap
  // lock held; it may let the lock go and take it back. Set before start().
  void set_after_turn(std::function<void(std::unique_lock<HeapMutex>&)> f) { after_turn_ = std::move(f); }
  // Starts the thread when the config asks for one. Idempotent.
  void start();
  // Whether the thread runs (lock held, or no other thread starting or stopping it).
  bool running() const { return thread_.joinable(); }
  // Stops and joins the thread; a batch in progress ends first.
  void stop();

  // An allocation took reserve pages: wake the thread when the reserve is under its targets
  // (inline refills happen at the next balance, i.e. never on the allocation path).
  void want_refill();
  // Wakes the thread for a turn (lock held; nothing without the thread): the copying region's
  // headroom or surplus wants it (HeapCore::keep_region runs after each turn).
  void nudge() {
    mu_.assert_held();
    if (thread_.joinable()) wake();
  }
  // Pages went back to the reserve: wake the thread when they exceed its limit, or balance
  // inline to the watermarks when there is no thread.
  void after_release();
  // After a large free that returned `returned_pages`: with the thread, for ordinary demand,
  // wakes it when the reserve passed its limit or a chunk was emptied, and makes no call; for
  // a return of no ordinary demand, releases the emptied chunks and trims the reserve down to
  // the peak bound now; without the thread, the same down to the high watermark. The calls are
  // made batch by batch without the heap lock. True if it trimmed the reserve.
  // Precondition: `lock` holds mu.
  bool trim_surplus(std::unique_lock<HeapMutex>& lock, std::size_t returned_pages);
  // Whether trim_surplus makes driver calls on its own thread for such a return (lock held).
  bool trims_on_freeing_thread(std::size_t returned_pages) const;
  // Pages of whole free chunks the thread releases now (PagePool::begin_release's
  // free_chunk_pages): every chunk when no page is promised; while pages are promised to misses
  // the mapper has yet to place, only those beyond the promised pages (the largest first): the
  // misses place runs on the others where they lie, or release them first when they must create
  // pages (PagePool::begin_place). A miss that settles or is given up calls
  // chunks_for_misses_done(), so that the chunks no miss took go once the promises are through.
  std::size_t free_chunk_pages_due() const;
  void chunks_for_misses_done();
  // Refills or trims to the watermarks under the lock (maintain(), heap creation, inline mode).
  Status balance();
  // Unmaps the alias slots queued by drop_alias (deferred while the thread runs: its wakes, the
  // out-of-memory path, maintain()), one batch, the calls without the heap lock; false if
  // nothing was queued or another batch is in flight. `lock` holds mu.
  bool drop_aliases(std::unique_lock<HeapMutex>& lock);
  // While paused (pause() calls not yet matched by resume()) the thread starts no batch: the
  // out-of-memory path waits for the batches in flight and retries with every page in reach,
  // rather than race a keeper that takes pages out again. Require the heap lock.
  void pause() { mu_.assert_held(); ++paused_; }
  void resume() {
    mu_.assert_held();
    if (--paused_ == 0 && thread_.joinable()) wake();
  }
  ReserveTargets targets();
  // The peak bound in pages: reserve_peak_ratio x the recent peak of the ordinary live bytes, or
  // of `live_floor` when that is more (an allocation counting itself live). Requires the heap lock.
  std::size_t peak_bound_pages(std::uint64_t now, std::uint64_t live_floor) const;
  // Requires the heap lock.
  KeeperLockWaits lock_waits() const {
    mu_.assert_held();
    return waits_;
  }

  // Watermarks and budget are sane; a stopped keeper has no thread.
  Status validate() const;

 private:
  void loop();
  void wake();
  // One wake's work: trim or provision batch by batch until within the targets. `lock` holds mu.
  void keep(std::unique_lock<HeapMutex>& lock);
  // `released` (when given) gets the reserve pages the batch took out.
  // Whole free chunks holding `chunk_pages` pages go too (PagePool::begin_release).
  bool trim_to(std::unique_lock<HeapMutex>& lock, std::size_t limit, std::uint32_t batch_pages,
               std::size_t chunk_pages, std::size_t* released = nullptr);
  // The hold (Config::reserve_hold_allocs, reserve_hold_ms): the reserve is noted, in both of
  // the hold's clocks (time, and the allocations that took pages: takes_), with the pages the
  // keeper's trims took out so far added, so that its own trims do not count as the allocations'
  // use, and the surplus over `limit` that no allocation touched during the hold is what may go.
  // Under mu.
  void note_reserve(std::uint64_t now) {
    const std::uint64_t seen = pool_.reserve_pages() + hold_trimmed_;
    reserve_seen_.note(seen, now);
    reserve_seen_takes_.note(seen, takes_);
  }
  std::size_t untouched_surplus(std::uint64_t now, std::size_t limit);
  // Whether the hold applies: with background misses only (with synchronous misses the reserve it
  // holds cost mean fragmentation over its target on the host's t1: 0.0665 -> 0.0719 for 5 ms,
  // 0.0677 -> 0.0712 for 8 allocations).
  bool holds() const;
  bool provision(std::unique_lock<HeapMutex>& lock, const ReserveTargets& t);
  // Takes the heap lock back after a batch's calls (or, `after_yield`, after yield_to_waiters let
  // a caller go first); on the keeper's thread, the wait is counted.
  void relock(std::unique_lock<HeapMutex>& lock, bool after_yield = false);
  // yield_to_waiters with the wait to take the lock back counted (relock).
  void yield(std::unique_lock<HeapMutex>& lock) {
    yield_to_waiters(lock, [&] { relock(lock, true); });
  }

  HeapMutex& mu_;
  PagePool& pool_;
  const Config& config_;
  const std::int64_t& live_bytes_;
  Demand& demand_;
  std::function<void()> on_wake_;
  std::function<void(std::unique_lock<HeapMutex>&)> after_turn_;
  std::thread thread_;
  std::condition_variable_any cv_;
  bool stop_ = false;    // under mu
  bool wanted_ = false;  // under mu
  bool drops_wanted_ = false;  // under mu: woken for queued alias drops alone
  int paused_ = 0;       // under mu
  KeeperLockWaits waits_;  // under mu
  WindowMin reserve_seen_;          // under mu: the reserve plus hold_trimmed_, over reserve_hold_ms
  WindowMin reserve_seen_takes_;    // under mu: the same over reserve_hold_allocs allocations
  std::uint64_t takes_ = 0;         // under mu: allocations that took pages (want_refill)
  std::uint64_t hold_trimmed_ = 0;  // under mu: reserve pages the keeper's trims took out
};

// Pauses the keeper for a scope (the out-of-memory path's retry). Constructed and destroyed
// with the heap lock held.
class KeeperPause {
 public:
  explicit KeeperPause(ReserveKeeper& keeper) : keeper_(keeper) { keeper_.pause(); }
  ~KeeperPause() { keeper_.resume(); }
  KeeperPause(const KeeperPause&) = delete;
  KeeperPause& operator=(const KeeperPause&) = delete;

 private:
  ReserveKeeper& keeper_;
};

}  // namespace valet::detail
