// What a heap reports about itself: one structure, with a JSON form (valet/stats_json.h) used by
// the replayer, the control server and the CLI alike.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace valet {

// Why a compaction cycle ran.
// tails: slab pages can move onto large objects' unused last-page bytes (docs/meshing.md).
enum class CompactionTrigger : std::uint8_t { explicit_request, emergency, fragmentation, reserve_low, idle, safepoint, tails };
const char* trigger_name(CompactionTrigger t);

// The record one compaction cycle leaves.
struct CompactionRecord {
  CompactionTrigger trigger = CompactionTrigger::explicit_request;
  std::uint64_t objects_moved = 0;
  std::uint64_t bytes_moved = 0;
  std::uint64_t pages_freed = 0;     // slab pages emptied by evacuation, given back (reserve or backend)
  std::uint64_t pages_meshed = 0;    // pages meshed onto another: each gave its physical page back
  std::uint64_t bytes_meshed = 0;    // bytes copied by meshing (addresses unchanged)
  std::uint64_t objects_skipped = 0; // left in place: pinned, unpin pending, moving, or a pin cancelled the move
  std::uint64_t duration_ns = 0;
  std::uint64_t longest_pin_wait_ns = 0;  // longest wait a pin saw on this cycle's moves
};

// Sums the cycles of one request that ran several (the trigger stays `a`'s; the longest pin wait
// is the longest of both).
inline CompactionRecord& operator+=(CompactionRecord& a, const CompactionRecord& b) {
  a.objects_moved += b.objects_moved;
  a.bytes_moved += b.bytes_moved;
  a.pages_freed += b.pages_freed;
  a.pages_meshed += b.pages_meshed;
  a.bytes_meshed += b.bytes_meshed;
  a.objects_skipped += b.objects_skipped;
  a.duration_ns += b.duration_ns;
  a.longest_pin_wait_ns = std::max(a.longest_pin_wait_ns, b.longest_pin_wait_ns);
  return a;
}

struct CompactionTotals {
  std::uint64_t cycles = 0;
  std::uint64_t objects_moved = 0;
  std::uint64_t bytes_moved = 0;
  std::uint64_t pages_freed = 0;
  std::uint64_t pages_meshed = 0;
  std::uint64_t bytes_meshed = 0;
  std::uint64_t emergency_cycles = 0;
};

// The slab pages of one size class, for planners: how full each page is.
struct ClassOccupancy {
  std::uint32_t class_size = 0;
  std::uint32_t slots_per_page = 0;
  std::vector<std::uint32_t> used;  // used slots of each page of the class (not those on tails)
  // Free slots of the class's pages on large objects' tails: they take moved objects, but
  // emptying one frees nothing, so they are never candidates (valet/evacuation_plan.h).
  std::uint64_t tail_free_slots = 0;
};

// One virtual page slot of the heap's arena that is in use (Heap::page_map()).
enum class PageKind : std::uint8_t {
  slab,     // a slab page: its own physical page
  meshed,   // a slab page's alias: maps the physical page of slot `maps_page_of`
  large,    // one page of a large object
  reserve,  // mapped, unused, ready for the next request
};
const char* page_kind_name(PageKind k);

struct PageInfo {
  std::uint64_t slot = 0;              // index of the 2 MiB slot in the arena (address order)
  PageKind kind = PageKind::reserve;
  std::uint32_t class_size = 0;        // slab, meshed: the size class in bytes
  std::uint32_t used_slots = 0;        // slab, meshed: objects on the physical page (all sharers)
  std::uint32_t total_slots = 0;
  std::uint32_t through_this = 0;      // slab, meshed: objects addressed through this slot
  std::uint64_t maps_page_of = 0;      // meshed: the slab slot whose physical page this maps;
                                       // slab with blocked_slots: the large object's last slot
  std::uint32_t blocked_slots = 0;     // slab on a large object's last page (shared tail): its
                                       // low slots holding that object's bytes (in used_slots)
  std::uint32_t sharers = 1;           // virtual slots mapping this slot's physical page
  std::uint64_t used_bytes = 0;        // large: bytes of the object inside this page
};

struct HeapStats {
  std::string backend;
  std::size_t capacity_bytes = 0;
  std::size_t live_bytes = 0;         // sum of the sizes users asked for
  std::size_t live_objects = 0;
  std::size_t footprint_bytes = 0;    // the same objects rounded to their size class or pages
  std::size_t mapped_bytes = 0;       // physical pages held, reserve included, a shared page once
  std::size_t peak_mapped_bytes = 0;  // the most mapped_bytes ever held, at any moment (not sampled)
  std::size_t reserved_bytes = 0;     // virtual address space reserved
  std::size_t reserve_bytes = 0;      // created pages held unused (the reserve)
  double fragmentation = 0;           // 1 - live / mapped (0 when nothing is mapped)
  std::size_t largest_allocatable_bytes = 0;
  std::size_t fixed_objects = 0;        // live fixed objects (Heap::allocate_fixed) and their bytes
  std::size_t fixed_bytes = 0;
  // Footprint of stream-ordered frees held for their streams: cached (reusable by their stream
  // only) and deferred (until their events complete).
  std::size_t stream_cached_bytes = 0;
  std::size_t stream_deferred_bytes = 0;
  struct Pages {
    // slab: slab pages (those counted in shared_tails have no physical page of their own);
    // meshed: further virtual pages mapping a slab page's physical page (aliases left by
    // meshing, no memory of their own). shared_tails: slab pages built on a large object's last
    // page. reserve includes idle (created, mapped nowhere; pages the reserve keeper is creating
    // or mapping without the heap lock count here). releasing: reserve pages being given back to
    // the backend, or moved into a longer run, without the heap lock (still mapped where they
    // were, not usable meanwhile), and pages mapped only at alias slots the keeper has yet to
    // unmap. moving: pages a
    // move in flight has taken and not yet handed over (unsharing a tail copies into one without
    // the heap lock).
    // region: pages of the copying region's mapped chunks (Config::copy_region_min_bytes), its
    // objects and holes and the headroom above its top.
    // Physical pages: (slab - shared_tails) + large + reserve + releasing + moving + region =
    // mapped pages.
    std::size_t slab = 0, large = 0, reserve = 0, meshed = 0, idle = 0, shared_tails = 0, releasing = 0, moving = 0;
    std::size_t region = 0;
    // chunked: pages created as chunks (several pages in one physical allocation, counted among
    // large, reserve and releasing above); chunks: how many; chunk_reserve: free chunk pages
    // (counted in reserve), which serve large objects only.
    // chunks_created: chunks made since the heap began.
    std::size_t chunked = 0, chunks = 0, chunk_reserve = 0, chunks_created = 0;
  } pages;
  // The copying region (Config::copy_region_min_bytes; all 0 while it is off): its mapped bytes,
  // its top, the bytes of its holes below the top, the objects placed there; allocations placed
  // there, and those it had no room for (placed in the page windows instead); compaction's rounds
  // there, the objects they moved (and the moves cancelled by a pin or a claim refused), the
  // bytes copied; chunks mapped and unmapped by the keeper.
  struct CopyRegion {
    std::size_t mapped_bytes = 0, top_bytes = 0, hole_bytes = 0, objects = 0;
    std::uint64_t placed = 0, fell_back = 0, rounds = 0, moves = 0, moves_cancelled = 0, bytes_moved = 0;
    std::uint64_t chunks_mapped = 0, chunks_unmapped = 0;
  } copy_region;
  // Slab pages by occupancy: bin i counts pages with used/capacity in [i/10, (i+1)/10), bin 9
  // includes full pages.
  std::array<std::uint64_t, 10> occupancy_histogram{};
  struct Ops {
    std::uint64_t allocate = 0, free = 0, resize = 0, pin = 0, failed_allocations = 0;
    // Config::background_misses: allocations whose run the heap's thread mapped after they
    // returned; of those, objects given up because the driver kept failing (their handles
    // became stale: pins and frees fail with stale_handle); and of the background misses, those
    // whose run the heap's thread also chose (Config::mapper_places_misses); small objects the
    // heap's thread placed because they needed a new slab page while the reserve had none
    // (counted among the background misses, not among misses_placed_by_mapper).
    std::uint64_t background_misses = 0, lost_allocations = 0, misses_placed_by_mapper = 0;
    std::uint64_t small_misses_placed_by_mapper = 0;
    // Background misses whose steps a pin made, the miss still queued when the object was
    // pinned (Config::pins_serve_misses; counted among the background misses).
    std::uint64_t misses_served_by_pins = 0;
    // Background misses made without the heap lock, while another thread held it
    // (Config::unlocked_misses; counted among the background misses once mapped).
    std::uint64_t unlocked_misses = 0;
    // Submits (misses, turns) that woke the sleeping mapper: a system call each on the thread
    // that submitted, under the heap lock.
    std::uint64_t mapper_wakes = 0;
    // Allocations a thread cache served without the heap lock (Config::thread_cache_bytes), and
    // of those, freed large runs taken back (Config::thread_cache_run_bytes).
    std::uint64_t cached_allocations = 0, cached_run_allocations = 0;
  } ops;
  // under_heap_lock: of all these, the calls a thread made while it held the heap lock (every
  // other thread that wants the lock waits for them). time: how long every door call took, in
  // all and by the role of the thread that made it (as lock_holds names them): the driver
  // serializes its calls, so the total bounds what a run's driver work can overlap.
  struct DriverTime {
    std::uint64_t total_ns = 0, callers_ns = 0, mapper_ns = 0, keeper_ns = 0, compaction_ns = 0;
  };
  struct DriverCalls {
    std::uint64_t create = 0, release = 0, map = 0, unmap = 0, set_access = 0, copy = 0;
    std::uint64_t under_heap_lock = 0;
    DriverTime time;
  } driver_calls;
  // The background reserve keeper's waits to take the heap lock back: after each batch of driver
  // calls it made without it (`batches`: callers holding the lock meanwhile delay its work), and
  // after letting a caller that waited for the lock go first between its batches (`yields`).
  // The wait figures count both.
  struct Keeper {
    std::uint64_t batches = 0, yields = 0, lock_wait_ns = 0, longest_lock_wait_ns = 0, lock_waits_over_1ms = 0;
  } keeper;
  // How long the heap lock was held at a time, by whom (callers: allocate, free, pin and the
  // rest on users' threads; the mapper; the keeper; compaction, on any thread): a thread that
  // wants the lock waits for the holds under way. Since the heap opened, stats()'s own hold
  // excepted. p50_ns and p99_ns are upper bounds (holds are counted by powers of two);
  // over_8us counts holds of 8192 ns or more.
  struct LockHolds {
    std::uint64_t holds = 0, total_ns = 0, longest_ns = 0, p50_ns = 0, p99_ns = 0, over_8us = 0;
  };
  struct LockHoldsByRole {
    LockHolds callers, mapper, keeper, compaction;
  } lock_holds;
  CompactionTotals compaction;
  std::vector<CompactionRecord> recent_cycles;  // newest last
};

}  // namespace valet
