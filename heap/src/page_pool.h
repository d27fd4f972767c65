// The page pool: the heap's virtual arena of 2 MiB page slots and the physical pages behind them.
// All mapping and remapping of the heap happens here (the one class that talks to the backend's
// VMM calls), in the spirit of Mesh's MeshableArena.
//
// Every slot of the arena is in exactly one state:
//   unmapped  no physical page; listed in `unmapped_` (a RangeSet)
//   reserve   mapped to a created page nobody uses; listed in `reserve_`
//   slab      a slab page of one size class (after meshing, several slab slots may map one
//             physical page: the page's own slot and its aliases)
//   large     one page of a large object
//   dropping  an alias mapping (meshing, shared tails) nobody addresses any more, waiting for the
//             keeper to unmap it (drop_alias with deferred drops): listed in no set
//
// Chunks: a physical allocation of several pages (page_pool_chunks.cpp) backs the body of a
// large object whose pages had to be created (one create, one map, one access instead of one of
// each per page). The driver maps and unmaps a chunk only whole, so a chunk is mapped once, at
// contiguous slots, and its slots are only ever large or reserve; its free slots are listed in
// `chunk_reserve_` (not `reserve_`, and outside reserve_pages(), the reserve's budget), where
// large runs of a close size take them (no driver call); a whole free chunk goes back to the
// backend with the next release batch. A chunk never hosts a slab page, an alias, or a page
// moved alone; it is never idle (released when unmapped).
// Created pages that are mapped nowhere (after a failed operation) are `idle`; they count as
// reserve. mapped_bytes is created pages x 2 MiB: a page mapped at several slots counts once.
//
// Queued work: a copy that a mover queued and waits for without the heap lock reads and writes
// slots of the arena. The mover holds those slots (`hold`) until the copy is known complete, and
// no slot is unmapped while held: every unmapping call refuses a held slot (Errc::internal, a
// broken rule), callers that may meet one defer (`held`), and validate() checks that every held
// slot maps a page and is in use.
//
// validate() (page_pool_validate.cpp) checks all of this from scratch: each slot's state against
// the range sets and the kind counts, each page's mapping count against the slots mapping it,
// idle and unused page records, the created count against the capacity, and held slots mapped.
// The reserve's trimming and refilling (the release batch, balance) are in page_pool_release.cpp;
// large runs that no mapped run serves are placed by place batches (page_pool_place.cpp), whose
// driver calls run without the heap lock.
//
// Threading: every call requires the heap lock, except where a comment says otherwise.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "lock_order.h"
#include "range_set.h"
#include "valet/backend.h"
#include "valet/stats.h"

namespace valet::detail {

enum class SlotKind : std::uint8_t { unmapped, reserve, slab, large, dropping };
inline constexpr std::size_t kSlotKinds = 5;

inline constexpr std::uint32_t kNoPhys = ~0u;

struct SlotRecord {
  SlotKind kind = SlotKind::unmapped;
  std::uint32_t phys = kNoPhys;  // index into the physical page records
  std::uint32_t owner = 0;       // slab: slab id; large: handle index
};

struct PhysRecord {
  PhysicalPage page;
  std::uint32_t mappings = 0;  // slots mapping this page
  std::uint32_t dropping = 0;  // of them, dropping slots (an unmap queued for the keeper)
  bool in_use = false;
  std::uint32_t pages = 1;     // a chunk: more than one
  std::uint32_t first = 0;     // a chunk: the slot where its first page is mapped
  bool chunk() const { return pages > 1; }
};

class PagePool {
 public:
  PagePool(VmmDoor& backend, std::size_t capacity_pages);
  ~PagePool();

  // Reserves the virtual arena. Called once.
  Status init(std::size_t slot_count);
  // Gives every page and the arena back. Precondition: no slot is slab or large.
  Status destroy();

  DevicePtr base() const { return base_; }
  DevicePtr address(std::uint32_t slot) const { return base_ + DevicePtr(slot) * kPage; }
  std::uint32_t slot_of(DevicePtr a) const { return std::uint32_t((a - base_) / kPage); }
  std::uint32_t slot_count() const { return std::uint32_t(slots_.size()); }
  SlotRecord& slot(std::uint32_t s) { return slots_[s]; }
  const SlotRecord& slot(std::uint32_t s) const { return slots_[s]; }
  const PhysRecord& phys(std::uint32_t p) const { return phys_[p]; }

  // One mapped page slot for a slab (from the reserve when it has one: no driver call).
  Result<std::uint32_t> take_page(SlotKind kind, std::uint32_t owner);
  // `n` contiguous mapped slots for a large object. From one reserve run when there is one (no
  // driver call); otherwise a place batch (a window grown around reserve pages, or a fresh
  // virtual run backed by reserve pages moved there and new pages: stitching), its calls made
  // with the lock held: the heap's callers use HeapCore::take_run, which lets it go.
  // out_of_memory when the free pages cannot cover `n`, leaving all as it was.
  Result<std::uint32_t> take_run(std::uint32_t n, std::uint32_t owner);
  // Where `n` contiguous free slots (reserve, unmapped, or queued dropping slots, which are
  // unmapped when taken; nothing in use) hold the most reserve
  // slots, around one of the longest reserve runs: a run placed there maps only its unmapped
  // slots (page_pool_window.cpp); or around a whole free chunk that fits inside the run's body,
  // whose pages then serve it where they lie. With `last_unmapped`, the window's last slot is an
  // unmapped one (a shared tail's page goes there). nullopt when no such window holds a mapped slot.
  struct Window {
    std::uint32_t start = 0, mapped = 0;  // mapped: reserve and free chunk slots inside it
  };
  std::optional<Window> best_window(std::uint32_t n, bool last_unmapped = false) const;
  // Shared tails: `n` contiguous slots for a large object whose last slot maps the physical page
  // of slot `last_of` (a slab page's), the others backed as take_run's runs are, all under the
  // lock (HeapCore::place_on_slab_page lets it go for the body). On failure nothing changed
  // (pages it created or moved may be idle).
  Result<std::uint32_t> take_run_onto(std::uint32_t n, std::uint32_t owner, std::uint32_t last_of);
  // Grows a run in place by `n` slots at `at` (right after the run) when those slots are free
  // (reserve or unmapped). Returns false (nothing changed) when they are not.
  // New pages for it may form a chunk ending at or before `chunk_end` (0: the run's last slot
  // stays a page of its own).
  Result<bool> extend_run(std::uint32_t at, std::uint32_t n, std::uint32_t owner, std::uint32_t chunk_end = 0);
  // Moves the pages of run [from, from+n) to the start of a fresh virtual run of `length` >= n
  // slots, without copying data, and backs the rest of it with other pages. On failure the run
  // stays where it was, intact.
  Result<std::uint32_t> relocate_run(std::uint32_t from, std::uint32_t n, std::uint32_t length, std::uint32_t owner);
  // Placing a large run that no mapped run serves, without the heap lock held across its
  // driver calls (page_pool_place.cpp), in three steps as the keeper's provision batch:
  //   begin_place  (lock held) chooses the run: at `at`, or a window around reserve pages
  //                (best_window), or a fresh virtual run; takes its mapped free slots (they
  //                become large, unowned) and its unmapped ones (`provisioning_`) out of every
  //                set, and the pages to map there: idle ones, reserve runs to move (in
  //                `releasing_`), new ones (counted as created). out_of_memory or
  //                out_of_address_space (nothing changed) when it cannot; an empty batch when
  //                the slots at `at` are not free.
  //   place_calls  (no lock) unmaps the moved runs, creates the new pages (a chunk where
  //                enough of them lie together before `chunk_end`), maps them and grants access;
  //                after a failure it unmaps what it mapped.
  //   finish_place (lock held) books the outcome: the run is `owner`'s (large slots), or, if a
  //                call failed, every slot and page goes back where it came from (pages
  //                unmapped on the way are idle) and the error is returned.
  // A run of reserve slots a batch moves or releases without the lock.
  struct ReleaseRun {
    std::uint32_t start = 0, length = 0;
    bool unmapped = false;
    bool held = false;   // queued work holds a slot of it: left alone, back to the reserve
    bool chunk = false;  // a whole chunk: one entry of a release batch's `phys`
  };
  // A release batch (begin_release, below): runs of reserve slots and idle pages to release.
  struct ReleaseBatch {
    using Run = ReleaseRun;
    std::vector<Run> runs;
    std::vector<std::uint32_t> phys;         // the runs' pages, in slot order, then the idle pages
    std::vector<PhysicalPage> pages;
    std::vector<bool> released;
    std::size_t idle = 0;                    // idle pages at the end of `phys`
    bool empty() const { return runs.empty() && idle == 0; }
  };
  struct PlaceOptions {
    std::optional<std::uint32_t> at;  // the run's start (extend_run); else chosen
    bool window = true;               // around reserve pages where free slots allow
    bool from_reserve = true;         // reserve pages may be moved there (else idle and new ones)
    std::size_t reserve_floor = 0;    // reserve pages the batch leaves (it moves none below them)
    std::uint32_t chunk_min = 0;      // the least chunk (0: chunk_min_pages_)
    std::uint32_t chunk_end = 0;      // a chunk ends at or before this slot (0: the run's last)
    // The object fills its run's last page, so no tail can share it: a chunk may take the last
    // slot too (one create, map and access grant fewer). A chunk's page is never a shared tail.
    bool chunk_last = false;
    // A shared tail's run: the batch maps the body (n - 1 slots) and holds the last slot,
    // unmapped, in `provisioning_` past finish_place, for attach_tail or abandon_tail.
    bool tail = false;
  };
  struct PageRef {
    std::uint32_t phys = kNoPhys;  // kNoPhys: a page created by the batch's calls
    PhysicalPage page{};
  };
  struct PlaceBatch {
    std::uint32_t start = 0, n = 0;                 // the run
    std::vector<RangeSet::Range> claimed, fills;    // its mapped free slots; its unmapped ones
    std::vector<std::uint32_t> slots;               // the fills' slots, in order
    std::vector<PageRef> pages;                     // the page for each of them
    std::uint32_t idle = 0, fresh = 0;              // of them, idle pages taken; pages to create
    std::vector<ReleaseRun> sources;                // reserve runs whose pages move here
    // Whole free chunks the batch releases before it creates pages (begin_place takes them when
    // it must create some), counted as released from the batch's start: mapped memory never
    // holds both. `freed_pages`: their pages.
    ReleaseBatch freed;
    std::size_t freed_pages = 0;
    // Queued alias drops inside the run (fills, or the tail slot): still mapped to their old
    // page until place_calls unmaps them first (drop_unmapped: it did).
    std::vector<std::uint32_t> drops;
    std::vector<bool> drop_unmapped;
    // New pages as one chunk: fill slots [chunk_index, chunk_index + chunk_pages), which lie
    // together (0 pages: none).
    std::uint32_t chunk_index = 0, chunk_pages = 0;
    // The outcome (place_calls).
    PhysicalPage chunk{};
    bool chunk_made = false;
    std::vector<bool> made, mapped;  // per fill slot: its page created; mapped there
    Status status;
    bool tail = false;  // the run's last slot is held for a shared tail
    bool empty() const { return n == 0; }
    std::uint32_t tail_slot() const { return start + n - 1; }
    bool chunk_holds(std::size_t i) const { return chunk_pages > 0 && i >= chunk_index && i < chunk_index + chunk_pages; }
  };
  Result<PlaceBatch> begin_place(std::uint32_t n, const PlaceOptions& how);
  void place_calls(PlaceBatch& b) const;
  Result<std::uint32_t> finish_place(PlaceBatch& b, std::uint32_t owner);
  // A tail batch's end, after finish_place (lock held): attach_tail maps the physical page of
  // slot `last_of` (a slab page's) at the run's held last slot and makes the run `owner`'s (two
  // calls); on failure the body goes to the reserve, the slot is free, and the error returned.
  // abandon_tail gives the body to the reserve and frees the slot (no call).
  Result<std::uint32_t> attach_tail(std::uint32_t start, std::uint32_t n, std::uint32_t owner, std::uint32_t last_of);
  void abandon_tail(std::uint32_t start, std::uint32_t n);
  // A held (provisioning_) unmapped slot back to the free set: a tail batch's last slot that
  // gets a page of its own instead (background misses).
  void free_held_slot(std::uint32_t s);
  // attach_tail in three steps, so that its two calls run without the heap lock (as a place
  // batch's):
  //   begin_attach   (lock held) names the physical page of slot `last_of` and counts the
  //                  attach as a placement in flight. The caller keeps that page mapped at
  //                  `last_of` until finish_attach (HeapCore detaches its slab page: nothing
  //                  meshes, evacuates or retires it meanwhile);
  //   attach_calls   (no lock) maps the page at the run's held last slot and grants access
  //                  (after a failed grant it unmaps it again);
  //   finish_attach  (lock held) books the outcome as attach_tail does. A mapping the calls
  //                  could not undo is booked and queued as a drop.
  //   begin_retarget (lock held) is begin_attach for take_run_onto's second choice: a freed
  //                  object's run whose last slot, a queued drop, still maps another page. The
  //                  body leaves the reserve (large, unowned) and the slot the drop queue (still
  //                  dropping, listed as retargeting); attach_calls then unmaps the old mapping
  //                  first, and finish_attach books the unmap too (or, if it failed, queues the
  //                  drop again and gives the body back). nullopt when there is no such run.
  struct AttachPlan {
    std::uint32_t start = 0, n = 0, phys = kNoPhys;
    PhysicalPage page{};
    Status status;
    bool mapped = false;    // the page is mapped at the last slot (after the calls)
    bool retarget = false;  // the last slot maps an old page first (begin_retarget)
    bool unmapped_old = false;
  };
  AttachPlan begin_attach(std::uint32_t start, std::uint32_t n, std::uint32_t last_of);
  std::optional<AttachPlan> begin_retarget(std::uint32_t n, std::uint32_t last_of);
  void attach_calls(AttachPlan& plan) const;
  Result<std::uint32_t> finish_attach(AttachPlan& plan, std::uint32_t owner);
  // take_run_onto's first choice, no driver call: a freed object's run as the free left it, its
  // last slot still mapping `last_of`'s page (its alias's drop queued). nullopt when none.
  std::optional<std::uint32_t> take_unchanged_run_onto(std::uint32_t n, std::uint32_t owner, std::uint32_t last_of);
  // take_run_onto's first two choices (a freed object's run as the free left it: no call, or its
  // last slot remapped: three calls, under the lock); nullopt when neither applies.
  std::optional<std::uint32_t> take_cached_run_onto(std::uint32_t n, std::uint32_t owner, std::uint32_t last_of);
  // take_run's first step: a mapped run of n free slots (no driver call): a chunk's when they
  // fit closely, else the reserve's. nullopt when there is none.
  std::optional<std::uint32_t> take_mapped_run(std::uint32_t n, std::uint32_t owner);
  // A miss of a run of n slots (a place batch, its last slot held when `tail`): a chunked miss
  // first where allowed (chunk_miss; on failure nothing changed), then the usual way.
  // `calls(batch)` runs place_calls: in place with the lock held, or letting the lock go around it.
  template <class Calls>
  Result<std::uint32_t> place_miss(std::uint32_t n, bool tail, std::uint32_t owner, Calls&& calls, bool whole = false) {
    auto attempt = [&](const PlaceOptions& how) -> Result<std::uint32_t> {
      auto b = begin_place(n, how);
      if (!b.ok()) return b.error();
      calls(*b);
      return finish_place(*b, owner);
    };
    if (chunk_miss(n - 1))
      if (auto s = attempt(chunked_miss(tail, whole)); s.ok()) return s;
    return attempt(usual_miss(tail, whole));
  }
  // A miss whose calls another thread makes (HeapCore's background misses): the batch of
  // place_miss's first attempt that can begin (a chunked one where allowed, else the usual
  // way); with `tail`, the last slot is held as place_miss holds it. Its calls are
  // place_calls'; finish_place books them (`owner` then owns the run), or, after a failed call,
  // frees the run: a retry begins again at the same start (PlaceOptions::at) so that the address
  // handed out holds.
  Result<PlaceBatch> begin_miss(std::uint32_t n, bool tail = false, bool whole = false) {
    if (chunk_miss(n - 1))
      if (auto b = begin_place(n, chunked_miss(tail, whole)); b.ok()) return b;
    return begin_place(n, usual_miss(tail, whole));
  }
  // Gives up a begun batch whose calls were never made (lock held): as a failed batch, its
  // slots and pages go back as they were.
  void abandon_place(PlaceBatch& b);
  std::size_t placements_in_flight() const { return placing_; }
  // Whether slot s is being mapped by a batch in flight (validate: a pending object's run).
  bool provisioning(std::uint32_t s) const { return provisioning_.find(s).has_value(); }
  // Callers first at the driver. The driver serializes VMM calls (docs/speed.md, session 21),
  // so a caller's call waits for whatever call the keeper makes meanwhile. While a caller's
  // calls are under way (a place batch, a freeing thread's own trim, a shared tail's alias: each
  // holds a CallerCalls), a thread that defers (the keeper's: set_defers_to_callers) waits before
  // each of its own calls, at most the defer limit each time, so that a stream of misses cannot
  // starve it (docs/speed.md, "Session 25"). No lock needed.
  class CallerCalls {
   public:
    explicit CallerCalls(const PagePool& pool, bool active = true) : pool_(active ? &pool : nullptr) {
      if (pool_) pool_->callers_calling_.fetch_add(1, std::memory_order_acq_rel);
    }
    ~CallerCalls() {
      if (pool_ && pool_->callers_calling_.fetch_sub(1, std::memory_order_acq_rel) == 1) pool_->wake_deferring();
    }
    CallerCalls(const CallerCalls&) = delete;
    CallerCalls& operator=(const CallerCalls&) = delete;

   private:
    const PagePool* pool_;
  };
  // For the calling thread, from now on.
  static void set_defers_to_callers(bool on);
  static bool defers_to_callers();
  static constexpr std::chrono::microseconds kDefaultDeferLimit{2000};
  void set_defer_limit(std::chrono::microseconds limit) { defer_limit_ = limit; }
  // On a deferring thread: returns once no caller's calls are under way, or after the limit,
  // blocked meanwhile (the last caller's CallerCalls wakes it). Elsewhere returns at once.
  void defer_to_callers() const;
  // Returns slots [start, start+n) to the reserve (they stay mapped): chunk slots to the
  // chunk reserve.
  void give_back(std::uint32_t start, std::uint32_t n);

  // Chunks (page_pool_chunks.cpp). Runs backed with new pages create one chunk for the new
  // pages when there are at least `pages` of them (0: never).
  void set_chunk_min_pages(std::uint32_t pages) { chunk_min_pages_ = pages; }
  // Chunked misses (Config::chunk_miss_pages): a large run that no mapped run serves, whose body
  // has at least `pages` pages, is backed by new pages (its body one chunk) instead of reserve
  // pages moved there, while created pages stay within the ceiling set before each placement
  // (set_create_ceiling; the heap's peak bound). 0: off.
  void set_chunk_miss_pages(std::uint32_t pages) { chunk_miss_pages_ = pages; }
  void set_create_ceiling(std::size_t pages) { create_ceiling_ = pages; }
  // Reserve pages that a miss's batch does not move to its run: it creates pages instead, and
  // takes of these only what it needs to fit within the capacity. With background misses these
  // are the pages a new slab page takes with no driver call (HeapCore::place), which otherwise
  // maps a shared tail's alias on the allocating thread whenever misses have emptied the
  // reserve. Runs that take reserve pages where they lie (take_mapped_run, a window around
  // them) still may: they make no call either way (0: none).
  void set_miss_reserve_floor(std::size_t pages) { miss_reserve_floor_ = pages; }
  bool in_chunk(std::uint32_t s) const { return slots_[s].phys != kNoPhys && phys_[slots_[s].phys].chunk(); }
  // A chunk mapped in [start, start+n) reaches beyond it.
  bool cuts_chunk(std::uint32_t start, std::uint32_t n) const;
  // Free chunk slots (mapped, unused, for large objects only; outside reserve_pages()) and the
  // chunks' pages.
  std::size_t chunk_reserve_pages() const { return std::size_t(chunk_reserve_.total()); }
  std::size_t chunk_pages() const { return chunk_pages_; }
  std::size_t chunks() const { return chunks_; }
  std::size_t chunks_created() const { return chunks_created_; }
  // Every chunk no object uses, or (`at_least`) enough of them to hold that many pages: the
  // one that fits best alone, else the largest first (take_free_chunks).
  static constexpr std::size_t kAllFreeChunks = ~std::size_t{0};
  // Releases them in place (out-of-memory makes room so; a new page waits for no keeper). The
  // first error.
  Status release_free_chunks(std::size_t at_least = kAllFreeChunks);
  // A chunk no object uses is waiting for a release batch.
  bool free_chunk_waits() const;
  // The pages of the chunks no object uses.
  std::size_t whole_free_chunk_pages() const;

  // Meshing: maps the physical page of slot `onto` at slot `s` in place of the page `s` maps now
  // (one unmap, one map, one set_access), in three steps so that the driver calls run without
  // the heap lock:
  //   plan_remap    (lock held) names the pages;
  //   remap_calls   (no lock) the driver calls. Precondition: nothing else maps, unmaps or
  //                 hands out `s` meanwhile (the caller owns it). If a step fails, `s` is mapped
  //                 to its own page again (retried: failures may be transient) and the error
  //                 returned; if even that fails, `s` is left unmapped: `lost` is set;
  //   commit_remap  (lock held) the bookkeeping after success: the own page becomes idle once no
  //                 slot maps it. forget_slot after `lost`: `s` becomes unmapped.
  struct RemapPlan {
    std::uint32_t slot = 0, own = kNoPhys, shared = kNoPhys;
    DevicePtr va = 0;
    PhysicalPage own_page{}, shared_page{};
    bool lost = false;
  };
  RemapPlan plan_remap(std::uint32_t s, std::uint32_t onto) const;
  Status remap_calls(RemapPlan& plan) const;
  void commit_remap(const RemapPlan& plan);
  void forget_slot(const RemapPlan& plan);
  // Unmaps slot `s`, an alias of a page another slot still maps, and returns the slot to the
  // free virtual space. On failure nothing changed. With deferred drops (set_deferred_drops) it
  // makes no driver call: the slot becomes `dropping`, out of every use, and a drop batch
  // unmaps it later (the keeper's); the page stays mapped there until then.
  Status drop_alias(std::uint32_t s);
  // While on, drop_alias defers its unmap (a keeper thread runs the drop batches): frees and
  // compaction then make no driver call to drop an alias.
  void set_deferred_drops(bool on) { defer_drops_ = on; }
  // Unmapping deferred alias slots without the heap lock: begin_drops (lock held) takes the
  // queued slots, drop_calls (no lock) unmaps them (a slot queued work holds is left alone),
  // finish_drops (lock held) books the outcome: unmapped slots are free (a page no slot maps any
  // more is idle), the others are queued again.
  struct DropBatch {
    std::vector<std::uint32_t> slots;
    std::vector<bool> unmapped;
    bool empty() const { return slots.empty(); }
  };
  // Empty while another batch is in flight (one at a time).
  DropBatch begin_drops();
  bool drops_in_flight() const { return !drops_in_flight_.empty(); }
  void drop_calls(DropBatch& batch) const;
  void finish_drops(DropBatch& batch);
  std::size_t queued_drops() const { return drops_.size(); }
  // Pages that only dropping slots map (their owner's slot let go of them first): on their way
  // to being idle, counted with the pages being released.
  std::size_t pages_only_dropping() const;
  std::uint32_t mappings_of(std::uint32_t s) const { return phys_[slots_[s].phys].mappings; }
  // The slots that map `s`'s page and are in use (not dropping).
  std::uint32_t live_mappings_of(std::uint32_t s) const {
    return phys_[slots_[s].phys].mappings - phys_[slots_[s].phys].dropping;
  }
  // Shared tails: maps the physical page of slot `of` at a free slot of the arena too (map and
  // set_access) and gives that slot `kind` and `owner`. On failure nothing changed.
  Result<std::uint32_t> share_page(std::uint32_t of, SlotKind kind, std::uint32_t owner);
  // Prepared tail aliases (page_pool_tail_alias.cpp): share_page in three steps, so that a
  // compaction cycle maps the aliases of the tails it will build slab pages on without the heap
  // lock, before it plans, and takes them at planning with no call.
  //   begin_tail_alias  (lock held) a free slot, booked at once as a dropping mapping of the
  //                     tail's page and listed with the retargeting slots (not queued): no
  //                     placement takes the slot, no release takes the page meanwhile (a page a
  //                     dropping slot maps is never released); nullopt for a tail in a chunk or
  //                     when no slot is free;
  //   tail_alias_calls  (no lock) map and set_access;
  //   finish_tail_alias (lock held) a failed alias gives its slot back (or queues its unmap);
  //                     a mapped one stays prepared until use_tail_alias or discard_tail_alias.
  // use_tail_alias makes the prepared slot `kind`/`owner`'s if it still maps the tail's page
  // (false, nothing changed, otherwise); discard_tail_alias queues its unmap for the keeper.
  struct TailAlias {
    std::uint32_t tail = 0, slot = 0, phys = kNoPhys;
    PhysicalPage page{};
    Status status;
    bool mapped = false;
  };
  std::optional<TailAlias> begin_tail_alias(std::uint32_t tail);
  void tail_alias_calls(TailAlias& a) const;
  bool finish_tail_alias(TailAlias& a);
  bool use_tail_alias(std::uint32_t slot, std::uint32_t tail, SlotKind kind, std::uint32_t owner);
  void discard_tail_alias(std::uint32_t slot);
  // Changes the kind and owner of a mapped slot (no driver call): a large object's last slot
  // that could not be unmapped stays as an alias of the slab page sharing its page.
  void retag(std::uint32_t s, SlotKind kind, std::uint32_t owner) { set_kind(s, 1, kind, owner); }

  // Brings the reserve into [low, high]: creates pages up to `low` (within the capacity) and
  // releases pages above `high` (down to the middle), at most `max_release` pages per call (so a
  // caller holding the heap lock can bound its hold). Returns the first error; partial progress
  // is kept and consistent.
  Status balance(std::size_t low, std::size_t high, std::size_t max_release = ~std::size_t{0});

  // Trimming without the heap lock held across driver calls (the keeper, and frees of large
  // objects; balance() runs the same steps in place). begin_release (lock held) takes up to
  // `max_pages` of the mapped reserve pages beyond the first `keep` out of the reserve: nothing
  // can hand them out, and they still count as created. release_calls
  // (no lock) unmaps and releases them. finish_release (lock held) books the outcome: released
  // pages are gone, pages whose unmap failed return to the reserve, unmapped pages whose release
  // failed are idle.
  // Idle pages are part of the batch too (`with_idle`, up to `max_pages` of them): they need only
  // their release. Whole free chunks too: every one by default, or enough to hold
  // `free_chunk_pages` pages (0: none; take_free_chunks).
  // (ReleaseBatch is declared with ReleaseRun, above.)
  ReleaseBatch begin_release(std::size_t keep, std::size_t max_pages, bool with_idle = false,
                             std::size_t free_chunk_pages = kAllFreeChunks);
  void release_calls(ReleaseBatch& batch) const;
  Status finish_release(ReleaseBatch& batch);
  // Empties a finished batch, keeping its vectors for the thread's next begin_release (no
  // malloc or free under the heap lock for them, as place batches: docs/speed.md, "Session 47").
  static void retire_release(ReleaseBatch& batch);
  // Pages taken out of the reserve by begin_release, not yet finished: still created.
  std::size_t releasing_pages() const { return std::size_t(releasing_.total()); }

  // Provisioning ahead of demand without the heap lock (the keeper): makes the longest reserve
  // run `want` slots long, by mapping pages after it where the slots are free, or at a fresh
  // virtual run. The pages are idle ones, then new ones (at most `may_create`), then pages
  // moved from the shortest other reserve runs; at most `max_pages` per batch.
  // begin_provision (lock held) takes the slots and pages out of every set, so nothing else can
  // hand them out; provision_calls (no lock) unmaps the moved pages, creates the new ones, maps
  // them all and grants access; finish_provision (lock held) books the outcome: what was mapped
  // joins the reserve, everything else goes back where it came from (pages unmapped on the way
  // are idle, pages not created are not counted). An empty batch: nothing worth doing.
  struct ProvisionBatch {
    std::uint32_t dest = 0, length = 0;       // slots [dest, dest+length), out of the free set
    std::vector<std::uint32_t> idle;          // idle pages taken for it
    std::uint32_t fresh = 0;                  // pages to create (counted as created meanwhile)
    std::vector<ReleaseBatch::Run> sources;   // reserve runs whose pages move to `dest`
    std::vector<PageRef> source_pages;        // their pages, in slot order
    // The outcome: the pages in `dest` order (idle, moved, new) and how many were mapped there.
    std::vector<PageRef> placed;
    std::uint32_t mapped = 0;
    bool empty() const { return length == 0; }
  };
  ProvisionBatch begin_provision(std::uint32_t want, std::size_t may_create, std::uint32_t max_pages);
  void provision_calls(ProvisionBatch& batch) const;
  void finish_provision(ProvisionBatch& batch);
  // Pages in a batch without the lock (provisioning or releasing): an out-of-memory waits for
  // them rather than be reported while they come back.
  bool batch_in_flight() const {
    return releasing_.total() > 0 || provisioning_.total() > 0 || in_flight_idle_ > 0 || placing_ > 0;
  }
  // Created pages a batch holds mapped nowhere (idle pages it took, new pages): stats count them
  // as idle reserve pages.
  std::size_t unplaced_in_flight() const { return in_flight_idle_ + fresh_in_flight_; }
  // The pages of place batches in flight (an allocation's run, counted as used) and, of those,
  // the ones unplaced_in_flight() or releasing_pages() count.
  std::size_t placing_pages() const { return placing_idle_ + placing_moved_ + placing_fresh_; }
  std::size_t placing_unplaced() const { return placing_idle_ + placing_fresh_; }
  std::size_t placing_moved() const { return placing_moved_; }
  // Free chunks' pages place batches are releasing (in releasing_pages(), no longer counted as
  // created).
  std::size_t freed_in_flight() const { return freed_in_flight_; }
  // The longest run of reserve slots.
  std::uint32_t longest_reserve_run() const { return reserve_.largest(); }
  // Pages that hold data: created, less the reserve, idle pages and pages of a keeper's batch in
  // flight (a place batch's pages are an allocation's: used).
  std::size_t used_pages() const {
    return created_ + lent_ + freed_in_flight_ - reserve_pages() - chunk_reserve_pages() - releasing_pages() -
           in_flight_idle_ - fresh_in_flight_ + placing_pages();
  }
  // What a request's size is weighed against (Demand::ordinary): the pages that hold data and
  // those promised to pending objects (with many misses pending, most of the objects' pages).
  std::size_t demand_pages() const { return used_pages() + promised_; }
  // Releases up to `n` idle pages (created, mapped nowhere). Stops at the first error.
  Status release_idle(std::size_t n);

  // Queued work (see the top of this file). Without the heap lock too: the holds have their own
  // lock, taken after the heap lock, so a mover can end its hold as soon as its copy completed.
  void hold(std::span<const std::uint32_t> slots);
  void unhold(std::span<const std::uint32_t> slots);
  bool held(std::uint32_t s) const;
  std::size_t held_slots() const;

  std::size_t capacity_pages() const { return capacity_pages_; }
  // Pages created against the capacity: the pool's own and those lent to the copying region.
  std::size_t created_pages() const { return created_ + lent_; }
  // Pages lent to the copying region (HeapCore's region: chunks it creates and maps in a range
  // of its own, docs/copying_placement.md): counted against the capacity, in created_pages() and
  // used_pages(), but in no slot of the pool. lend(n): false (nothing changed) when fewer than n
  // pages may still be created. unlend(n): the region released them (or never made them).
  bool lend(std::size_t n) {
    if (creatable_pages() < n) return false;
    lent_ += n;
    note_created_peak();
    return true;
  }
  void unlend(std::size_t n) {
    VALET_ASSERT(lent_ >= n);
    lent_ -= n;
  }
  std::size_t lent_pages() const { return lent_; }
  // Pages promised to objects not placed yet (background misses that the mapper places,
  // docs/background_misses.md): out of the capacity that may be created, so that whatever the
  // pool does meanwhile, the promised pages can still be created when the object is placed.
  // promise(n): false (nothing changed) when fewer than n pages may still be created.
  // unpromise(n): given back, just before the object is placed (or given up).
  bool promise(std::size_t n) {
    if (creatable_pages() < n) return false;
    promised_ += n;
    return true;
  }
  void unpromise(std::size_t n) {
    VALET_ASSERT(promised_ >= n);
    promised_ -= n;
  }
  std::size_t promised_pages() const { return promised_; }
  // Pages credited to thread caches, for the misses their threads make without the heap lock
  // (HeapCore::allocate_unlocked_miss): out of the capacity as promised pages are, but no
  // object's yet, so they count in no demand. credit(n): false (nothing changed) when fewer than
  // n pages may still be created. uncredit(n): given back. promise_credited(n): n credited
  // pages become an unplaced object's promise (its miss reached the mapper's queue).
  bool credit(std::size_t n) {
    if (creatable_pages() < n) return false;
    credited_ += n;
    return true;
  }
  void uncredit(std::size_t n) {
    VALET_ASSERT(credited_ >= n);
    credited_ -= n;
  }
  void promise_credited(std::size_t n) {
    uncredit(n);
    promised_ += n;
  }
  std::size_t credited_pages() const { return credited_; }
  // Pages that may still be created: the capacity less what is created, promised and credited.
  std::size_t creatable_pages() const {
    return capacity_pages_ - std::min(capacity_pages_, created_ + lent_ + promised_ + credited_);
  }
  // The most pages created at once (as created_pages counts them: a provision batch's new pages
  // from the moment it is booked), since the pool began.
  std::size_t peak_created_pages() const { return peak_created_; }
  // The reserve's pages (its budget's): the chunk reserve is apart, since its pages serve large
  // runs only (a budget shared with it starves the reserve: docs/speed.md, "Session 22").
  std::size_t reserve_pages() const { return std::size_t(reserve_.total()) + idle_.size() + idle_chunk_pages_; }
  std::size_t idle_pages() const { return idle_.size(); }
  // Pages a run of fresh slots could get now: reserve + idle + not yet created (a chunk's free
  // slots serve only runs placed in them).
  std::size_t available_pages() const {
    return std::size_t(reserve_.total()) + idle_.size() + creatable_pages();
  }
  std::size_t largest_unmapped_run() const { return unmapped_.largest(); }
  std::size_t slots_of_kind(SlotKind k) const { return kind_counts_[std::size_t(k)]; }

  // Memory outside the arena and the capacity accounting (the device handle table): a range of
  // its own, mapped a page at a time at its end, through the same door and counted with the
  // pool's other driver calls. Every call unwinds what it did on failure.
  struct OutsideRange {
    DevicePtr va = 0;
    std::size_t reserved = 0;
    std::vector<PhysicalPage> pages;
    std::size_t mapped_bytes() const { return pages.size() * kPageBytes; }
  };
  Status reserve_outside(OutsideRange& r, std::size_t bytes);
  // Maps one more page at the end of the mapped part (created, mapped, accessible).
  Status grow_outside(OutsideRange& r);
  // Writes host bytes at the start of the range (mapped).
  Status write_outside(const OutsideRange& r, const void* src, std::size_t bytes);
  // Unmaps, releases and unreserves all of it; the first error, everything attempted.
  Status release_outside(OutsideRange& r);

  // Checks the pool's own invariants and its agreement with the slot table.
  Status validate() const;

 private:
  friend struct PagePoolTestPeer;  // tests: corrupts the sets and page records
  static constexpr std::size_t kPage = kPageBytes;

  // take_run_onto's first choice: a queued dropping slot that maps `last_of`'s page with n - 1
  // reserve slots before it (a freed object's run and its shared tail, as the free left them).
  // Takes them out of the reserve and the queue and returns the run's start; the caller sets
  // their kind. nullopt when there is none.
  std::optional<std::uint32_t> take_dropped_run(std::uint32_t n, std::uint32_t last_of);
  // A placement's claim of a queued drop (page_pool_place.cpp): claimable when queued and not
  // held; claimed, it leaves the queue for `retargeting_` and the batch's `drops`.
  // return_free_slot gives a batch's slot back: a claimed drop still mapped to the queue, any
  // other to the free set.
  bool claimable_drop(std::uint32_t s) const;
  void claim_drop(std::uint32_t s, PlaceBatch& b);
  void return_free_slot(std::uint32_t s);
  // After the unmap of dropping slot `s` (off the queue): it maps nothing and is unmapped (not
  // yet in the free set); its page is idle if no other slot maps it.
  void book_dropped(std::uint32_t s);
  // begin_place's window: takes [at, at+n) out of the free sets into `b` (mapped slots large and
  // unowned, unmapped ones provisioning_); false (nothing changed but aliases unmapped) when a
  // slot is not free. unclaim: undoes it.
  bool claim_slots(std::uint32_t at, std::uint32_t n, PlaceBatch& b);
  // A tail batch's last slot `s`, unmapped and free (a queued alias there is unmapped now), into
  // provisioning_; false (nothing changed) if it is not free.
  bool claim_tail(std::uint32_t s, PlaceBatch& b);
  // A provision or place batch's moved reserve runs, after its calls (lock held): their slots
  // are unmapped (their pages mapped nowhere there any more), or, where the unmap failed or was
  // not reached, back in the reserve untouched.
  void book_moved_sources(const std::vector<ReleaseRun>& sources);
  void unclaim(PlaceBatch& b);
  // Slots [d - (n - 1), d) are in the reserve.
  bool reserve_before(std::uint32_t d, std::uint32_t n) const;

 public:
  // The pages that queued dropping slots map where take_run_onto(n, ...) would find such a run.
  std::vector<std::uint32_t> dropped_run_pages(std::uint32_t n) const;

 private:
  // A place batch's pages into (sign +1, at its begin) or out of (-1, at its finish) the counts
  // of placing_pages().
  void count_placing(const PlaceBatch& b, int sign);
  // Creates a page (within the capacity); it starts unmapped.
  Result<std::uint32_t> create_page();
  // Creates a chunk of `n` pages (within the capacity) and maps it at [start, start+n) (no
  // access yet). Precondition: those slots unmapped and in no set. On failure nothing changed
  // (but a chunk created whose release then failed: kept idle, released later).
  Status map_new_chunk(std::uint32_t start, std::uint32_t n);
  // A created chunk of `n` pages whose first slot is `first`: its record, counted as created
  // (the caller notes the peak). keep_idle_chunk: chunk `p`, mapped nowhere and not released,
  // waits idle for a later release.
  std::uint32_t add_chunk_record(PhysicalPage page, std::uint32_t n, std::uint32_t first);
  void keep_idle_chunk(std::uint32_t p);
  // After the unmap of a whole chunk `p` (mapped nowhere now): released, or idle on failure.
  void chunk_unmapped(std::uint32_t p);
  // give_back's and the release batch's sorting: [start, start+n) into reserve_ and
  // chunk_reserve_ by the pages their slots map.
  void insert_free(std::uint32_t start, std::uint32_t n);
  // Every whole free chunk into a release batch, or (`at_least`) enough of them for that many
  // pages (0: none).
  void take_free_chunks(ReleaseBatch& b, std::size_t at_least = kAllFreeChunks);
  // The free range [start, start+length) of the chunk reserve begins with a whole chunk.
  bool whole_free_chunk_at(std::uint32_t start, std::uint32_t length) const;
  // Releases idle chunks (unmapped, their release failed before) while `n` pages are wanted,
  // counting their pages off `n`. Stops at the first error.
  Status release_idle_chunks(std::size_t& n);
  Status validate_chunks() const;
  template <class F>
  bool for_each_whole_free_chunk(F&& f) const;
  // Gives created page `page` a record (in_use, mapped nowhere) and returns its index; the
  // caller counts it as created.
  std::uint32_t add_record(PhysicalPage page);
  // After `p`'s release by the backend: its record becomes unused and it is no longer created.
  void forget_record(std::uint32_t p);
  // A release batch's outcome for page `p` (mapped nowhere now): forgotten if the backend
  // released it, else idle, the first failure noted in `first`.
  void book_release(std::uint32_t p, bool released, Status& first);
  // Maps phys page `p` at `slot` (no access yet); a chunk whole, at `slot` onwards.
  // Precondition: those slots unmapped and not in a set.
  Status map_at(std::uint32_t slot, std::uint32_t p);
  // Maps the physical page of slot `of` at slot `slot` too and grants access there (a shared
  // tail's last slot, a slab page built on a tail). Precondition: `slot` unmapped and not in a
  // set. On failure `slot` is unmapped again.
  Status map_alias(std::uint32_t slot, std::uint32_t of);
  // The calls of one page mapped at `va` without the lock (no booking): map, then grant access;
  // if the grant fails, unmap again. `mapped` says whether the mapping stays (a failed grant
  // whose unmap failed too).
  Status map_accessible(DevicePtr va, PhysicalPage page, bool& mapped) const;
  // Unmaps [start, start+n) (all mapped); the pages become idle (mapping counts drop).
  Status unmap_run(std::uint32_t start, std::uint32_t n);
  Status release(std::uint32_t p);
  // Fills the fresh unmapped run [start, start+n) with pages (idle ones, then reserve pages
  // moved there when `from_reserve`, then new ones) and grants access. On failure everything is
  // unwound: the run is unmapped again; pages taken from the reserve, and new pages, are idle.
  // New pages go into one chunk at the run's end when there are chunk_min_pages_ of them and
  // the chunk ends at or before `chunk_end` (a large object's last slot stays a page of its own,
  // for a shared tail); 0: no chunk.
  Status back_run(std::uint32_t start, std::uint32_t n, bool from_reserve = true, std::uint32_t chunk_end = 0);
  // Chunked misses: a body of `body` pages may be new pages (see set_chunk_miss_pages).
  bool chunk_miss(std::uint32_t body) const {
    return chunk_miss_pages_ > 0 && body >= chunk_miss_pages_ && creatable_pages() >= body + 1 &&
           created_ + body + 1 <= create_ceiling_;
  }
  // A miss's placement options: the usual way, and a chunked miss's (new pages as one chunk,
  // no window, no reserve pages moved); `tail` holds the last slot.
  // `whole`: the object fills its last page (PlaceOptions::chunk_last).
  PlaceOptions usual_miss(bool tail, bool whole = false) const {
    PlaceOptions how;
    how.tail = tail;
    how.reserve_floor = miss_reserve_floor_;
    how.chunk_last = whole && !tail;
    return how;
  }
  PlaceOptions chunked_miss(bool tail, bool whole = false) const {
    PlaceOptions how = usual_miss(tail, whole);
    how.window = false;
    how.from_reserve = false;
    how.chunk_min = chunk_miss_pages_;
    return how;
  }
  // A fresh virtual run of n slots backed by pages (idle, reserve pages moved there, new): a
  // slab page's slot when the reserve has none.
  Result<std::uint32_t> take_fresh(std::uint32_t n, SlotKind kind, std::uint32_t owner);
  // A large object's body: the slots before its last one.
  static std::uint32_t body_end(std::uint32_t start, std::uint32_t n) { return start + n - 1; }
  void set_kind(std::uint32_t start, std::uint32_t n, SlotKind kind, std::uint32_t owner);
  // An error if a slot of [start, start+n) is held by queued work (nothing may unmap it).
  Status refuse_held(std::uint32_t start, std::uint32_t n) const;
  // validate()'s two halves: slot states (counting each page's mappings into `maps`, and its
  // dropping slots into `dropping`), then the page records against those counts.
  Status validate_slots(std::vector<std::uint32_t>& maps, std::vector<std::uint32_t>& dropping) const;
  Status validate_pages(const std::vector<std::uint32_t>& maps, const std::vector<std::uint32_t>& dropping) const;

  VmmDoor& backend_;
  std::size_t capacity_pages_;
  DevicePtr base_ = 0;
  std::size_t arena_bytes_ = 0;
  std::vector<SlotRecord> slots_;
  std::vector<PhysRecord> phys_;
  std::vector<std::uint32_t> free_phys_;  // unused indices of phys_
  std::vector<std::uint32_t> idle_;       // created pages mapped nowhere
  std::size_t created_ = 0;
  std::size_t promised_ = 0;  // promise()
  std::size_t credited_ = 0;  // credit()
  std::size_t peak_created_ = 0;
  void note_created_peak() { peak_created_ = std::max(peak_created_, created_ + lent_); }
  std::size_t lent_ = 0;  // pages lent to the copying region (lend)
  RangeSet unmapped_;
  RangeSet reserve_;
  RangeSet chunk_reserve_;  // free slots of chunks
  std::vector<std::uint32_t> idle_chunks_;  // chunks unmapped whose release failed
  std::size_t idle_chunk_pages_ = 0;
  std::uint32_t chunk_min_pages_ = 0;
  std::uint32_t chunk_miss_pages_ = 0;
  std::size_t miss_reserve_floor_ = 0;
  std::size_t create_ceiling_ = ~std::size_t{0};
  std::size_t chunk_pages_ = 0, chunks_ = 0;  // created chunks and their pages
  std::size_t chunks_created_ = 0;            // since the pool began
  RangeSet releasing_{RangeSet::Order::by_slot_only};  // reserve slots being unmapped and released (or moved) without the lock
  RangeSet provisioning_{RangeSet::Order::by_slot_only};  // unmapped slots a provision batch is mapping without the lock
  std::size_t in_flight_idle_ = 0;   // idle pages a batch took (released or mapped without the lock)
  std::size_t fresh_in_flight_ = 0;  // pages a provision or place batch is creating (counted as created)
  std::size_t freed_in_flight_ = 0;  // free chunks' pages a place batch is releasing (counted as released)
  std::size_t placing_ = 0;          // place batches begun, not finished
  // Their pages, by origin: idle pages, pages moved from reserve runs, new pages. They hold an
  // object's data once the batch is booked (a pending object's for as long as it is pending), so
  // they count as used, not as the reserve's (count_placing).
  std::size_t placing_idle_ = 0, placing_moved_ = 0, placing_fresh_ = 0;
  mutable std::atomic<std::uint32_t> callers_calling_{0};  // CallerCalls alive (no lock needed)
  mutable RankedMutex<LockRank::pool_defer> defer_mu_;     // with defer_cv_: deferring threads wait
  mutable std::condition_variable_any defer_cv_;
  void wake_deferring() const;
  std::chrono::microseconds defer_limit_ = kDefaultDeferLimit;
  std::size_t kind_counts_[kSlotKinds] = {};
  bool defer_drops_ = false;
  std::vector<std::uint32_t> drops_;  // dropping slots queued (not in a batch in flight)
  RangeSet dropped_{RangeSet::Order::by_slot_only};  // the same slots, for placement's lookups (best_window)
  void queue_drop(std::uint32_t s) {
    drops_.push_back(s);
    dropped_.insert(s, 1);
  }
  // Takes drops_[i] off the queue (swapping the last into its place).
  void unqueue_drop(std::size_t i) {
    dropped_.take_exact(drops_[i], 1);
    drops_[i] = drops_.back();
    drops_.pop_back();
  }
  // Slot `s`, booked as mapping its page and used by nobody, becomes a dropping slot on the
  // queue: a drop batch unmaps it (a deferred alias drop, or a mapping whose undo failed).
  void drop_later(std::uint32_t s) {
    ++phys_[slots_[s].phys].dropping;
    set_kind(s, 1, SlotKind::dropping, 0);
    queue_drop(s);
  }
  std::vector<std::uint32_t> drops_in_flight_;  // dropping slots of the batch in flight
  std::vector<std::uint32_t> retargeting_;      // dropping slots a retarget or placement remaps without the lock
  void unlist_retargeting(std::uint32_t s) { retargeting_.erase(std::find(retargeting_.begin(), retargeting_.end(), s)); }
  mutable RankedMutex<LockRank::pool_holds> holds_mu_;
  std::unordered_map<std::uint32_t, std::uint32_t> holds_;  // held slot -> holders
};

template <class F>
bool PagePool::for_each_whole_free_chunk(F&& f) const {
  // Whole chunks inside the chunk reserve's ranges (a range may hold several, side by side);
  // f(page) returns false to stop. Returns false if it stopped.
  bool go_on = true;
  chunk_reserve_.for_each([&](RangeSet::Range r) {
    for (std::uint32_t s = r.start; go_on && s < r.start + r.length;) {
      if (whole_free_chunk_at(s, r.start + r.length - s)) go_on = f(slots_[s].phys);
      const PhysRecord& c = phys_[slots_[s].phys];
      s = c.first + c.pages;
    }
  });
  return go_on;
}

}  // namespace valet::detail
