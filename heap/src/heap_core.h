// The heap's state and internal operations. heap.cpp holds the public calls, compaction.cpp the
// moving of objects, heap_inspect.cpp stats and validate.
//
// Locking: one heap mutex (`mu`) guards the page pool, the slabs, the handle table's free list
// and every entry field except `state` and `address`. Pins never take it: they work on the
// entry's atomic state word (handle_table.h). A mover (resize, compaction) marks objects MOVING
// by CAS from "unpinned", so a pin either got in first (the move is refused or skipped), or meets
// a cancelable move (compaction's copy) and cancels it, or waits (a repoint or a remap).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "clock.h"
#include "copy_region.h"
#include "demand.h"
#include "device_table.h"
#include "handle_table.h"
#include "heap_mutex.h"
#include "lock_order.h"
#include "miss_mapper.h"
#include "move_claims.h"
#include "move_executor.h"
#include "page_pool.h"
#include "reserve_keeper.h"
#include "slabs.h"
#include "tail_links.h"
#include "stream_releases.h"
#include "thread_caches.h"
#include "valet/counting_backend.h"
#include "valet/heap.h"

namespace valet::detail {

// One object of an evacuation batch: from its old slot to its new one.
struct Move {
  HandleEntry* entry;
  std::uint32_t owner;  // the handle index
  Location from;
  Location to;
  std::size_t bytes;
};

// Two slab pages of one class to mesh: the source's objects go to the destination's page.
struct MeshPair {
  SlabPage* dst;
  SlabPage* src;
  std::vector<HandleEntry*> objects{};  // the source's objects, claimed MOVING for its batch
  std::uint64_t bytes = 0;
  // Its batch's outcome: the remap's plan, a pin that cancelled the pair during the copy, and
  // the remap's status.
  PagePool::RemapPlan plan{};
  bool cancelled = false;
  Status remapped{};
};

struct HeapCore {
  HeapCore(std::unique_ptr<Backend> backend, const Config& config, std::size_t capacity_pages);

  // The backend behind the one counting door: every driver call the heap makes is counted by
  // operation (stats().driver_calls, and per calling thread).
  std::unique_ptr<CountingBackend> backend;
  Config config;
  std::uint32_t tag = 0;
  std::size_t capacity_pages = 0;
  // Bytes one compaction batch copies at most (Config::move_batch_bytes, resolved at creation).
  std::uint64_t move_batch_bytes = 0;

  mutable HeapMutex mu;
  PagePool pool;
  Slabs slabs;
  HandleTable handles;
  StreamReleases releases{*backend};
  DeviceTable table{pool, releases};
  MoveExecutor mover{*backend, pool, releases};  // its stream carries every copy of a move
  std::atomic<bool> shut{false};
  // Freed small objects and large runs kept per thread (thread_caches.h); mutable: validate and stats gate them.
  mutable ThreadCaches caches{config.thread_cache_bytes, config.thread_cache_run_bytes, config.thread_cache_runs_total_bytes};

  // Counters (under mu unless atomic; the thread caches' deltas are folded in under the heap lock).
  // Signed: a thread cache's deltas not yet folded in may be positive while a locked free
  // subtracts (the sum is exact; live_bytes_known() clamps what the heap alone holds).
  std::int64_t live_bytes = 0;
  std::size_t footprint_bytes = 0;
  std::int64_t live_objects = 0;
  std::size_t live_bytes_known() const { return live_bytes > 0 ? std::size_t(live_bytes) : 0; }
  std::size_t fixed_objects = 0, fixed_bytes = 0;  // of the live objects, the fixed ones
  HeapStats::Ops ops;
  std::atomic<std::uint64_t> pin_count{0};
  std::atomic<std::uint64_t> pin_wait_ns_max{0};
  std::atomic<std::uint64_t> cycle_pin_wait_ns{0};  // longest pin wait since the cycle began
  CompactionTotals compaction;
  std::deque<CompactionRecord> recent_cycles;
  std::size_t in_transit = 0;  // new slots of a running move: taken, owned by nobody
  std::size_t moving_pages = 0;  // whole pages a move in flight took (stats().pages.moving)
  CompactionMutex compaction_mu;  // one compaction cycle at a time; taken before mu (lock_order.h)
  // The running cycle is at a safe point (CompactRequest::safe_point): meshing may take pages
  // holding fixed objects as sources. Written under compaction_mu and mu.
  bool safe_point_cycle = false;

  TailLinks tails;  // open and shared tails (tail_links.h); the operations are tails.cpp's

  // --- the copying region (Config::copy_region_min_bytes; heap_region.cpp) ---
  // Large movable objects as byte ranges in one virtual range, mapped by chunks at its top
  // (docs/copying_placement.md). `book` decides places and moves; the chunks are lent pages of
  // the pool's capacity (PagePool::lend). All under mu; a batch of the keeper's calls runs
  // without it (`calls_in_flight`: one at a time; nothing below `book->mapped()` is touched by
  // it, and nothing is placed above).
  struct Region {
    std::optional<CopyRegion> book;
    DevicePtr base = 0;
    std::size_t reserved = 0;
    std::vector<PhysicalPage> chunks;  // chunk k is mapped at base + k * chunk bytes
    bool calls_in_flight = false;
    // Bytes a compaction round's run (or, without the keeper's thread, an allocation) needs
    // mapped above the top: the keeper keeps that much rather than its headroom until the
    // round that asked uses it.
    std::uint64_t room_wanted = 0;
    std::uint64_t placed = 0, fell_back = 0, rounds = 0, moves = 0, moves_cancelled = 0, bytes_moved = 0;
    std::uint64_t chunks_mapped = 0, chunks_unmapped = 0;
  } region;
  bool region_on() const { return region.book.has_value(); }
  // Whether an object of `bytes` goes to the region (a movable one of at least the minimum).
  bool region_takes(std::size_t bytes, bool movable) const {
    return movable && region_on() && bytes >= config.copy_region_min_bytes;
  }
  // Reserves the region's range at creation (nothing mapped); releases all of it at teardown.
  Status create_region();
  Status destroy_region();
  // A place in the region for `bytes`, unowned, with no call: nullopt when it has no room now
  // (the keeper is woken to grow it; the caller places the object in the page windows). Without
  // the keeper's thread, this thread grows it first (`lock` is let go for the calls).
  std::optional<Location> place_in_region(std::unique_lock<HeapMutex>& lock, std::size_t bytes);
  DevicePtr region_address(const Location& loc) const { return region.base + region_offset(loc); }
  static std::uint64_t region_offset(const Location& loc) { return std::uint64_t(loc.index) * kRegionAlign; }
  // The keeper's turn (its thread, after its reserve work): maps chunks above the top up to the
  // headroom (and any growth a round asked for), or unmaps the surplus past the hysteresis; one
  // batch, its calls without the heap lock (`lock` is let go and retaken).
  void keep_region(std::unique_lock<HeapMutex>& lock);
  // Unmaps the chunks above the top past `headroom` bytes, once they are `hysteresis` chunks or
  // more (keep_region's trims; make_room's, with no headroom and no hysteresis). One batch, its
  // calls without the lock.
  void trim_region(std::unique_lock<HeapMutex>& lock, std::uint64_t headroom, std::uint32_t hysteresis);
  // Compaction's step for the region: rounds of copies (CopyRegion::plan_round) while its holes
  // exceed the high threshold (any, `always`), down to the low one, within `bytes_left`.
  Status compact_region(std::unique_lock<HeapMutex>& lock, std::uint64_t& bytes_left, bool always,
                        CompactionRecord& rec);
  // The region's book agrees with itself and with the live objects placed there.
  Status validate_region() const;

  // --- handles (lock-free) ---
  // Checks tag, index and generation; the entry if the handle names a live object.
  Result<HandleEntry*> lookup(Handle h) const;
  void note_pin_wait(std::uint64_t ns);
  // Takes a pin reference (host or stream). On success the object cannot move until unpinned;
  // `address` is where the pin may use it (its alias while a remap is under way).
  Result<HandleEntry*> acquire_pin(Handle h, DevicePtr& address);
  // A pin that would wait: when the object of `h` is pending and its miss still queued, this
  // thread makes the miss's steps (MissMapper::serve_queued; Config::pins_serve_misses). A stale
  // `h` (its entry freed and taken by another object meanwhile) serves nothing.
  void serve_pending(Handle h);
  void unpin(HandleEntry* e) { claims::remove_pin(e->state); }
  // Records a stream-ordered unpin of `e` on `s`.
  Status unpin_on_stream(HandleEntry* e, Stream s);

  // --- under mu ---
  // `stream`: the allocation's stream (a free cached for it may be reused); `fixed`: a fixed
  // object (allocate_fixed).
  // `lock` holds mu; a placement may release and retake it (take_run).
  Result<Handle> allocate_locked(std::unique_lock<HeapMutex>& lock, std::size_t bytes, const Stream* stream = nullptr,
                                 bool fixed = false);
  // A cached free of `stream` that takes `bytes` as a new placement would (the same slab class,
  // or a large object of the same page count whose last page fits them), unowned; nullopt if
  // none.
  std::optional<Location> reuse_cached(std::size_t bytes, Stream stream);
  // Names `owner` (a handle index, or kNoOwner) as the owner of a location's slot or pages.
  void set_owner(const Location& loc, std::uint32_t owner);
  // The key a free of `loc` is cached under (StreamReleases::cache).
  std::uint64_t cache_key(const Location& loc) const;
  // The public allocate and free (heap.cpp); `stream` may be null.
  Result<Handle> allocate_object(std::size_t bytes, const Stream* stream, bool fixed, const char* what);
  Status free_object(Handle h, const Stream* stream, const char* what);
  // The rest of a free once claims::try_free made the object `e` (handle `h`) the caller's.
  Status finish_free(std::unique_lock<HeapMutex>& lock, Handle h, HandleEntry* e, const Stream* stream);

  // --- thread caches (thread_caches.cpp's policy, heap_caches.cpp) ---
  // Lock-free of the heap lock: an object from the calling thread's cache (nullopt: none cached
  // of its class, no run of its page count and at least its bytes, or the fast paths are
  // gated); a free into it (nullopt: take the locked path, nothing changed; otherwise the free's
  // outcome).
  std::optional<Handle> allocate_cached(std::size_t bytes);
  std::optional<Status> free_cached(Handle h);
  // The cached entry `index` made live again at `address` with `bytes` (`c`'s lock held).
  Handle revive(ThreadCache& c, std::uint32_t index, DevicePtr address, std::size_t bytes);
  // Under mu. fold: a cache's counter deltas into the heap's (its lock held, or gated);
  // fold_caches: every cache's (gated). drain_caches: gives every cached object back to its
  // slab (gated inside). spill: makes room in `c` for one more object of class `cls` (the oldest
  // half of a full class goes, then the oldest objects of the largest classes within the byte
  // limit).
  void fold(ThreadCache& c);
  void fold_mine();  // the calling thread's cache (made now if it has none)
  void fold_caches();
  void drain_caches();
  void spill(ThreadCache& c, std::uint32_t cls);
  // spill_runs: the oldest runs of `c` go until one of `footprint` bytes would fit within its
  // allowance (all of them for a footprint over the limit).
  void spill_runs(ThreadCache& c, std::size_t footprint);
  void give_back_cached(const CachedSlot& s);
  void give_back_cached(const CachedRun& r);
  // The class a freed object is cached under: kRunClass for a large run, or kNotCacheable (a
  // fixed object, one with stream unpins recorded, one larger than the cache, a run not placed).
  // fits: `c` has room for one more of `cls`. take_run_room: `c`'s allowance has room for a
  // run of `footprint` bytes. keep, keep_run: caches freed entry `e`
  // (`c`'s lock held, or the heap lock and gated). keep_locked: a free on the locked path
  // caches its object in the calling thread's cache (making room), if it is cacheable; false:
  // it is not.
  static constexpr std::uint32_t kNotCacheable = ~0u;
  static constexpr std::uint32_t kRunClass = ~0u - 1;
  std::uint32_t cache_class(const HandleEntry* e) const;
  bool fits(const ThreadCache& c, std::uint32_t cls) const;
  bool take_run_room(const ThreadCache& c, std::size_t footprint) const;
  void keep(ThreadCache& c, std::uint32_t cls, std::uint32_t index, HandleEntry* e);
  void keep_run(ThreadCache& c, std::uint32_t index, HandleEntry* e);
  bool keep_locked(std::uint32_t index, HandleEntry* e);

  // --- misses without the heap lock (Config::unlocked_misses; unlocked_misses.cpp) ---
  // allocate_unlocked_miss: without the heap lock, a pending large object of `bytes` made from
  // the calling thread's cache (a spare handle index, pages from its credit), left in the cache's
  // inbox for the next holder of the heap lock to queue; nullopt (nothing changed): take the
  // locked path. Under mu: collect_unlocked_misses queues every cache's inbox (collect_from:
  // one cache's, its lock held); top_up_unlocked gives the calling thread's cache its spare
  // handles and credit (after one of its large allocations, of `pages` pages, took the lock);
  // give_back_unlocked collects `c`'s inbox and returns its spares and credit (its lock held: a
  // drain, an orphan). UnlockedMissesClosed: no such miss is made from its construction until
  // it ends, and none waits in a cache once constructed (a barrier through every cache's lock,
  // then a collection).
  std::optional<Handle> allocate_unlocked_miss(std::size_t bytes);
  void collect_unlocked_misses();
  void collect_from(ThreadCache& c);
  void top_up_unlocked(std::size_t pages);
  void give_back_unlocked(ThreadCache& c);
  class UnlockedMissesClosed {
   public:
    explicit UnlockedMissesClosed(HeapCore& c);
    ~UnlockedMissesClosed() { c_.unlocked_closed.fetch_sub(1, std::memory_order_release); }
    UnlockedMissesClosed(const UnlockedMissesClosed&) = delete;
    UnlockedMissesClosed& operator=(const UnlockedMissesClosed&) = delete;

   private:
    HeapCore& c_;
  };
  std::atomic<int> unlocked_closed{0};  // changed under mu; read under a cache's lock
  // Covers the frees cached for streams with events and waits (without the heap lock) until
  // every deferred free's events completed, then reaps them: before out-of-memory is reported.
  void wait_deferred(std::unique_lock<HeapMutex>& lock);
  // StreamReleases::flush, releasing the frees of streams that no longer exist.
  Status flush_stream_frees(std::unique_lock<HeapMutex>& lock, std::optional<Stream> only = std::nullopt);
  // A new place for `bytes`, unowned (set_owner names its owner). A large run that no mapped
  // run serves is mapped without the heap lock: `lock` (holding mu) is released and retaken
  // meanwhile (take_run).
  // With `miss` (background misses, the mapper running): a large run that no mapped run serves
  // is not mapped here; its begun batch goes to `*miss` and the location is its run's.
  // With config.mapper_places_misses, such a run is not even chosen here: what needs no call is
  // taken, else the pages are promised, `*miss` gets step `place` and the location's page is
  // kUnplaced (the mapper places it: place_miss). With `small_may_pend`, so is a small object
  // that needs a new slab page while the reserve has none (unplaced_small; the location's index
  // is its class): the caller makes its miss, of step `place`.
  // `movable` (not a fixed object): it may go to the copying region (Config::copy_region_min_bytes).
  Result<Location> place(std::unique_lock<HeapMutex>& lock, std::size_t bytes, PendingMiss* miss = nullptr,
                         bool small_may_pend = false, bool movable = true);
  // place's small part: a slot of class `cls` (a new slab page may make driver calls here; with
  // `tail_first`, an open tail before a reserve page: the mapper's choice). slot_on: a slot of
  // `page`, unowned.
  Result<Location> place_small(std::uint32_t cls, bool tail_first = false);
  Location slot_on(SlabPage* page);
  // place's large part after the promise: `n` pages for `bytes` (`counted_live`: the bytes are in
  // the live count already, the mapper's placement). placed_run: a mapped run [start, start + n)
  // taken for `bytes` (its tail opened).
  Result<Location> place_large(std::unique_lock<HeapMutex>& lock, std::size_t bytes, std::uint32_t n, PendingMiss* miss,
                               bool counted_live);
  Location placed_run(std::uint32_t start, std::uint32_t n, std::size_t bytes);
  // The location's page of a pending object the mapper has not placed yet.
  static constexpr std::uint32_t kUnplaced = ~0u;
  // Background misses (heap_misses.cpp, miss_mapper.h). miss_calls: a step's calls (no lock).
  // finish_miss: the mapper's booking of a step (false: a next step began, queue it again).
  // settle_miss: the object's run is mapped (a freed one is released). drop_freed_miss: the
  // footprint and index of a freed object whose run went back. lose_miss: gives up a pending
  // object whose run could not be mapped (its handle goes stale). free_pending: a free of a
  // pending object (no wait).
  // wait_for_misses: until every miss pending at the call is settled. While misses_held > 0
  // (under mu) no new miss goes to the mapper: pin_table holds them off so that its wait ends
  // with none pending.
  // place_miss: the mapper's placement of a miss of step `place` (under the lock, never letting
  // it go): its promise is given back and its run chosen as the allocation would have chosen it;
  // true when it is settled at once (a run with no call, or the object lost).
  bool place_miss(PendingMiss& m, std::unique_lock<HeapMutex>& lock);
  // A pending small object's placement (place_miss): begin_small_tail_alias begins the alias of
  // an open tail for its new slab page, reserve pages or not (nullopt: none to begin); finish_small_tail_alias books it after the calls (step slab_alias) and
  // places the object there, or as place_small would where the tail changed meanwhile;
  // book_small_miss gives the object its place and settles it (a failed one is lost).
  std::optional<PagePool::TailAlias> begin_small_tail_alias(std::uint32_t cls);
  bool finish_small_tail_alias(PendingMiss& m);
  bool book_small_miss(PendingMiss& m, Result<Location> loc);
  // The mapper's placement of pending object `index` published (its location and address);
  // false, the object lost, when it could not be placed.
  bool publish_placement(std::uint32_t index, const Result<Location>& loc);
  void miss_calls(PendingMiss& m) const;
  bool finish_miss(PendingMiss& m);
  bool settle_miss(PendingMiss& m);
  bool drop_freed_miss(std::uint32_t index);
  // On the mapper's thread after a settled miss (or a turn it was asked for): what objects freed
  // while pending gave back, and the returns handed to it by trim_returned (mapper_trim_pages),
  // is trimmed as their frees would have trimmed it (ReserveKeeper::trim_surplus: a probe's pages
  // at once, an ordinary object's by the keeper).
  void trim_after_freed_misses(std::unique_lock<HeapMutex>& lock);
  std::size_t mapper_trim_pages = 0;  // under mu
  // Pending small objects not placed yet, by class (under mu). The first of each page's worth
  // promises a page; the others ride along (no promise, location pages 0) while a page may
  // still be created, so that a burst of one class promises its pages, not one an object. One
  // that rides along has no page of its own: if other allocations fill its class's pages first
  // and the capacity is then exhausted, the mapper cannot place it and it is lost (lose_miss);
  // not seen in tests or the stress, the price of not promising a page an object.
  std::array<std::uint32_t, kClassCount> unplaced_small{};
  // Misses of step body or alias holding a page promised for their last slot
  // (PendingMiss::last_promised; under mu): given back when the last slot is booked (its alias
  // or its own page) or the miss ends.
  std::size_t last_page_promises = 0;
  void release_last_promise(PendingMiss& m);
  // An unplaced small object leaves that state (placed, given up): its count and promise go.
  void unplace_small(const Location& loc);
  // place_small for a pending small object (on the mapper), a failure tried again.
  Result<Location> place_small_for_miss(std::uint32_t cls, bool tail_first);
  // After a large free (or stream frees reaped) returned `pages`: ReserveKeeper::trim_surplus,
  // except that with background misses a return that would trim on this thread (no ordinary
  // demand: a probe, a KV cache larger than an eighth of the pages in use) is handed to the
  // mapper's thread instead, ahead of the misses queued after it: this thread makes no call, and
  // no miss creates pages beside the pages it releases.
  void trim_returned(std::unique_lock<HeapMutex>& lock, std::size_t pages);
  void lose_miss(std::uint32_t index);
  // A pending object's handle dies (a free, or the object lost): its bytes leave the live
  // counts and waiting pins wake to a stale handle. Its run and index are the caller's to give back.
  void end_pending_handle(HandleEntry* e);
  Status free_pending(Handle h, HandleEntry* e);
  // A step given up before its calls (a free while queued; `loc` is the object's run).
  void abandon_miss(PendingMiss& m, const Location& loc);
  void wait_for_misses(std::unique_lock<HeapMutex>& lock);
  int misses_held = 0;
  // A run of n pages for a large object: a mapped one (no call), else place_run's. place_run:
  // a place batch, its calls without the lock (a chunked miss first where allowed); with
  // `tail`, its last slot is held unmapped for attach_tail or abandon_tail (page_pool.h); with
  // `whole` (the object fills its last page), a chunk may take the last slot too.
  Result<std::uint32_t> take_run(std::unique_lock<HeapMutex>& lock, std::uint32_t n, bool whole = false);
  Result<std::uint32_t> place_run(std::unique_lock<HeapMutex>& lock, std::uint32_t n, bool tail, bool whole = false);
  // Returns a location's memory to its slab or to the page reserve.
  void release_location(const Location& loc);
  // Shared tails (tails.cpp). open_tail: offers a large object's last page to slab pages.
  // slab_on_tail: a new slab page of `cls` on the roomiest open tail, or nullptr.
  // release_large: gives a large location's pages back; a shared last page stays with its slab
  // page. release_tail_page: unmaps an emptied slab page's own slot from the tail it shares
  // (false: the unmap failed, nothing changed). unshare_tail: before a resize, moves the slab
  // page on a large object's last page to a page of its own (same addresses); an error (nothing
  // changed) when its objects cannot all be claimed or a driver call fails. It copies and remaps
  // without the heap lock (tail_unshare.cpp); `lock` holds mu and is released and retaken.
  void open_tail(const Location& loc, std::size_t bytes);
  // A stream's cached large free taken for a new size (tails.cpp). tail_fits: whether `bytes`
  // fit `loc`'s last page as it is laid out now (a slab page sharing it blocks only the old
  // object's bytes there). reopen_tail: an open tail is offered again with the new size's room.
  bool tail_fits(const Location& loc, std::size_t bytes) const;
  void reopen_tail(const Location& loc, std::size_t bytes);
  SlabPage* slab_on_tail(std::uint32_t cls);
  // The tail of a prepared alias that a new slab page of `cls` may take (no call), if any.
  std::optional<std::uint32_t> prepared_tail_for(std::uint32_t cls) const;
  // slab_on_tail_at: a new slab page of `cls` on that tail, or nullptr. It takes the tail's
  // prepared alias when there is one (no call); else, with `may_map`, maps one under the lock
  // (share_page: two calls; the allocation path's), and without it gives up.
  SlabPage* slab_on_tail_at(std::uint32_t cls, std::uint32_t tail_slot, bool may_map = true);
  // Prepared tail aliases (tail_aliases.cpp): before a compaction cycle plans, the tails its
  // planners will build slab pages on (the planners run dry first: `want`) get their aliases
  // mapped without the heap lock (`lock` is let go and retaken); the planners then take them
  // with no call, and the cycle gives back what it did not use (their unmaps are the keeper's).
  // Only with the keeper's thread (it makes the unmaps); otherwise the planners map under the
  // lock as before.
  void prepare_tail_aliases(std::unique_lock<HeapMutex>& lock, bool mesh, bool evacuate, std::uint64_t pages_left,
                            std::uint64_t bytes_left);
  // A cycle's end keeps what it did not use as standbys (keep_standbys); out-of-memory does not.
  void discard_tail_aliases(bool keep_standbys);
  // The standby alias (tail_aliases.cpp): with background misses, a new slab page that finds
  // the reserve empty goes on an open tail, and its alias's map and access grant were the last
  // driver calls on the allocation path. The keeper's thread, after each turn, keeps aliases
  // prepared for the Config::standby_tail_aliases roomiest open tails (new ones only while the
  // reserve is at its low watermark or below), which slab_on_tail takes first (and wakes the
  // keeper for another); a cycle's unused aliases stay as standbys. A standby holds no memory
  // while its tail is open on the same page; once it closed or moved, it is discarded
  // (release_large, the next turn, the cycle's end), and out-of-memory discards them all.
  void keep_standby_alias(std::unique_lock<HeapMutex>& lock);
  void discard_standby_alias(std::uint32_t tail);  // if one is prepared for `tail` outside a cycle
  bool keeps_standbys() const;  // share_tails, background misses and a standby count
  // An alias prepared for `tail` at `slot` still fits it: the tail is open, on the same page.
  bool standby_valid(std::uint32_t tail, std::uint32_t slot) const;
  std::vector<std::uint32_t> stale_standbys() const;  // prepared for a tail now closed or on another page
  bool tail_aliases_prepared = false;                              // under mu: this cycle prepared them
  std::unordered_map<std::uint32_t, std::uint32_t> prepared_aliases;  // under mu: tail -> alias slot
  // A new large object's place whose last slot maps the physical page of a slab page with its
  // low slots free for the object's bytes there (they become blocked); nullopt when no page fits
  // or a driver call fails (the caller places it as usual).
  // The body's calls run without the lock (`lock`, holding mu, is let go and retaken); the slab
  // page is then looked for again, and the alias mapped under the lock (two calls).
  // With `miss` (background misses), a run that needs calls is not mapped here: its first step
  // goes to `*miss` (a retarget's alias, or the body).
  // Without `calls`, only a run that needs none is taken (else nullopt, nothing changed).
  // tail_host_for: a slab page that could take such an object's last page, the tightest fit or,
  // with `prefer_dropped`, first one that a freed run still ends on (tail_host); nullptr: none
  // has the room, or tails are not shared.
  std::optional<Location> place_on_slab_page(std::unique_lock<HeapMutex>& lock, std::size_t bytes, std::uint32_t pages,
                                             PendingMiss* miss = nullptr, bool calls = true);
  SlabPage* tail_host_for(std::size_t bytes, std::uint32_t pages, bool prefer_dropped = false) const;
  // A large object's last page now maps `host`'s physical page: the slab page's low slots under
  // the object's bytes are blocked and the tail is shared.
  void share_tail(const Location& loc, std::size_t bytes, SlabPage* host);
  // The bytes an object of `bytes` over `pages` pages uses in its last page.
  static std::uint64_t used_in_last_page(std::size_t bytes, std::uint32_t pages) {
    return bytes - std::uint64_t(pages - 1) * kPageBytes;
  }
  // The slab page whose free low span fits `used` bytes most tightly (leaving a slot free), or
  // before any, one whose page a freed run still ends on (`cached`: their physical pages);
  // nullptr if none fits.
  SlabPage* tail_host(std::uint64_t used, const std::vector<std::uint32_t>& cached) const;
  // Meshing onto tails: pairs (a new slab page on an open tail, a slab page whose objects all
  // lie above that tail's bytes) for mesh_locked, within the budgets.
  // With `want`, a dry run: the tails it would build slab pages on are added to `want`, the
  // budgets are spent as the real run would spend them, and nothing else changes.
  void pair_with_tails(std::vector<MeshPair>& pairs, std::uint64_t& pages_left, std::uint64_t& bytes_left,
                       std::vector<std::uint32_t>* want = nullptr);
  // Evacuation onto tails: for open tails, the cheapest slab pages to empty whose objects fit a
  // new slab page on the tail (made now); the pages are detached and added to `sources`.
  void choose_tail_sources(std::vector<SlabPage*>& sources, std::uint64_t& pages_left, std::uint64_t& bytes_left,
                           std::vector<std::uint32_t>* want = nullptr);
  // Whether a slab page of `cls` fits on the open tail `tail` (the blocked slots leave room, the
  // page is no chunk's): slab_on_tail_at's test, without building anything.
  bool tail_can_host(std::uint32_t cls, std::uint32_t tail) const;
  void release_large(const Location& loc);
  bool release_tail_page(SlabPage* p);
  Status unshare_tail(std::unique_lock<HeapMutex>& lock, std::uint32_t tail_slot);
  // Frees a slab slot through the virtual slot the object was addressed by; an alias nobody is
  // addressed through any more is unmapped (mesh.cpp). Returns the slab page.
  SlabPage* free_slab_slot(const Location& loc);
  // Unmaps alias `k` of `p` if no object is addressed through it and no queued work holds it
  // (it leaves the list: the last alias takes index k); false if it stays.
  bool try_drop_alias(SlabPage* p, std::size_t k);
  // Unmaps the aliases of `p` that no object is addressed through and no queued work holds.
  void drop_unused_aliases(SlabPage* p);
  // Gives an empty slab page back: its aliases unmapped, its own slot to the reserve. false (the
  // page stays, empty) when an alias cannot be unmapped now.
  bool retire_slab(SlabPage* p);
  // After frees emptied `p`: retires it unless it is the last page of its class (kept against
  // allocate/free ping-pong) or a compaction cycle is working on it.
  void retire_if_spare(SlabPage* p) {
    if (p->holds_no_object() && !p->evacuating && slabs.pages_of(p->cls) > 1) (void)retire_slab(p);
  }
  // Gives back every empty slab page that no compaction cycle is working on, the one each class
  // keeps against allocate/free ping-pong included (at most `max_pages`); returns how many went.
  std::size_t retire_empty_slabs(std::uint64_t max_pages = ~std::uint64_t{0});
  // Virtual slab slots that map another slot's physical page.
  std::size_t meshed_slots() const;
  // The mapped pages by what holds them (stats().pages; an out-of-memory message names them).
  HeapStats::Pages pages_by_use() const;
  std::size_t footprint_of(const Location& loc) const;
  DevicePtr address_of(const Location& loc) const;
  // Drops completed pending unpins of `e`; true when none remain.
  bool reap_unpins(HandleEntry* e) { return releases.reap(e->pending_unpins); }
  // Releases deferred frees whose events completed.
  std::size_t reap_deferred();  // the footprint released
  void after_release() { keeper.after_release(); }
  void want_refill() { keeper.want_refill(); }
  bool table_blocks_moves() { return table.blocks_moves(); }
  Error out_of_memory(std::size_t asked, const Error& cause) const;
  std::string held_pages() const;  // what holds the created pages, for out_of_memory's message

  // Move claims (move_claims.h) on an entry. try_begin_move also refuses while a stream-ordered
  // unpin of the object is pending (its queued work may still touch the object).
  // A fixed object is refused unless `fixed_ok` (meshing at a safe point, which keeps addresses).
  bool try_begin_move(HandleEntry* e, bool cancelable = false, bool fixed_ok = false);
  bool commit_move(HandleEntry* e) { return claims::commit(e->state); }
  void publish_alias(HandleEntry* e, DevicePtr alias) { claims::publish_alias(e->state, e->alias, alias); }
  void drop_claim(HandleEntry* e) { claims::drop(e->state); }
  void end_move(HandleEntry* e) { claims::end(e->state); }

  // Compaction (compaction.cpp). Precondition: `lock` holds mu; it may be released and retaken.
  Result<CompactionRecord> compact_locked(std::unique_lock<HeapMutex>& lock, const CompactRequest& request);
  void record_cycle(const CompactionRecord& r);
  // Evacuation steps (compaction.cpp): the sparse pages to empty (detached), emptying them batch
  // by batch, and one batch's copy, repoint and wait.
  std::vector<SlabPage*> choose_sources(double max_occupancy, std::uint64_t& pages_left, std::uint64_t& bytes_left);
  Status evacuate(std::unique_lock<HeapMutex>& lock, const std::vector<SlabPage*>& sources, CompactionRecord& rec);
  Status run_moves(std::unique_lock<HeapMutex>& lock, const std::vector<Move>& moves, CompactionRecord& rec);
  // Meshes pairs of slab pages within the budgets (mesh.cpp); counts into `rec`.
  Status mesh_locked(std::unique_lock<HeapMutex>& lock, std::uint64_t& pages_left, std::uint64_t& bytes_left,
                     CompactionRecord& rec);
  // Meshing's steps (mesh.cpp): the pairs to mesh (detached), within the budgets; one batch's
  // copy and remaps through the move executor; the unlocked commit and remap of one pair; its
  // bookkeeping under the lock again; giving a pair up.
  std::vector<MeshPair> find_mesh_pairs_locked(std::uint64_t& pages_left, std::uint64_t& bytes_left);
  Status mesh_batch(std::unique_lock<HeapMutex>& lock, const std::vector<MeshPair*>& batch, CompactionRecord& rec,
                    Status& first);
  void commit_and_remap(MeshPair& pair);
  void book_pair(MeshPair& pair, CompactionRecord& rec, Status& first);
  void release_pair(MeshPair& pair);
  // Claims every object of the pair's source MOVING; false (nothing claimed) if one refuses.
  bool claim_source(MeshPair& pair);
  // One unbounded evacuation cycle before an out-of-memory is reported (allocate, resize).
  // Precondition: `lock` holds mu; it is released and retaken.
  void emergency_compact(std::unique_lock<HeapMutex>& lock);
  // Before an out-of-memory is reported (allocate, resize): releases what deferred frees allow,
  // gives back empty slab pages, waits for every batch in flight, then, with
  // Config::compact_on_oom, runs an emergency cycle, and unmaps the aliases let go of.
  // Precondition: `lock` holds mu; it may be released and retaken; the caller holds a
  // KeeperPause until its retry is done.
  void make_room(std::unique_lock<HeapMutex>& lock);

  // Shutdown (heap_lifecycle.cpp). decide_shutdown: under compaction_mu and mu, claims every live object
  // and marks the heap shut, or refuses (pinned) with nothing changed; `killed` lists the
  // objects it ended. tear_down: waits for queued work and gives everything back.
  // `settling` names an unpinned object a resize is moving (wait for it, then decide again).
  Status decide_shutdown(std::vector<std::uint32_t>& killed, HandleEntry*& settling);
  Status tear_down(const std::vector<std::uint32_t>& killed);

  // What allocations asked for recently (under mu): the reserve keeper's targets follow it.
  Demand demand{std::uint64_t(config.reserve_window_ms) * 1'000'000};

  // Declared last: its thread uses the members above, and it is stopped first.
  ReserveKeeper keeper{mu, pool, config, live_bytes, demand, [this] { reap_deferred(); }};
  // After the keeper: destroyed (stopped) before it. Runs only with Config::background_misses.
  MissMapper misses{mu, [this](PendingMiss& m, std::unique_lock<HeapMutex>& lock) { return place_miss(m, lock); },
                    [this](PendingMiss& m) { miss_calls(m); }, [this](PendingMiss& m) { return finish_miss(m); },
                    [this](std::unique_lock<HeapMutex>& lock) { trim_after_freed_misses(lock); }};
};

// Tests reach a heap's components through this (unit tests of invariants and of components).
struct HeapInternals {
  static HeapCore& of(Heap& h) { return *h.core_; }
  static std::uint64_t& uploaded_version(DeviceTable& t) { return t.uploaded_version_; }
  static TailLinks::OpenTails& open_tails(TailLinks& t) { return t.open_; }
  static TailLinks::SharedTails& shared_tails(TailLinks& t) { return t.shared_; }
};

}  // namespace valet::detail
