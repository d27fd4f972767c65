// How a heap is made. Which backend it runs on, and how that backend is opened, is the
// runtime's business (valet::BackendOptions and open_heap() in valet/runtime.h): a heap sees its
// backend only through valet/backend.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <thread>

namespace valet {

// Config::miss_mapper_spin_us's default: 200 us where the machine has 8 hardware threads or
// more (a core to spare for the poll), else 0.
inline std::uint32_t default_miss_mapper_spin_us() { return std::thread::hardware_concurrency() >= 8 ? 200 : 0; }

struct Config {
  // Bytes of physical memory the heap may hold. 0: what the device has free (less a margin for
  // the CUDA context), or 2 GiB on the host backend. Rounded down to whole 2 MiB pages.
  std::size_t capacity = 0;
  // Virtual address space reserved, as a multiple of the capacity (large objects need contiguous
  // virtual ranges; plenty of address space keeps them from fragmenting it).
  std::size_t address_space_factor = 8;
  // The reserve: created, mapped, unused pages that keep the driver off the allocation path.
  // Refilled (in the background) when it falls under `reserve_low_pages`, trimmed back to the
  // backend when it exceeds `reserve_high_pages`.
  std::size_t reserve_low_pages = 4;
  std::size_t reserve_high_pages = 16;
  // With the background keeper, the reserve also keeps freed large runs mapped for reuse, and
  // pages mapped ahead of demand (one contiguous run as long as twice the longest recent large
  // request), within a budget: at most `reserve_fraction` of the live bytes, and never more than
  // brings mapped memory above `reserve_peak_ratio` x the peak of the live bytes over the last
  // `reserve_window_ms` (requests of more than an eighth of the pages in use left out). The high
  // watermark is the budget's floor. Beyond the budget, pages go back to the backend (the
  // smallest runs first): the keeper trims the surplus, and a free that left the reserve above
  // the peak ratio's bound trims down to it on its own thread. docs/speed.md has the figures
  // behind the defaults (0.012 since session 24: frees leave the whole surplus to the keeper,
  // which held ~20 % more reserve on average at 0.02).
  double reserve_fraction = 0.012;
  double reserve_peak_ratio = 1.04;
  std::size_t reserve_window_ms = 10000;
  // With background misses, the keeper gives the reserve's surplus over its limit back (within the
  // peak bound; beyond it at once) only once that surplus sat unused for this long: pages a free
  // returned that the next allocations take again within the hold are neither released nor
  // created again (a create and a release cost ~26 us of driver time on an H100). 0: not timed.
  // Off by default: a hold in time holds more memory on a faster card (docs/speed.md, "Session
  // 31": 10 ms took fragmentation over 0.07 on the H100 without use, 3 ms raised the allocation
  // p99 1.5-2x); reserve_hold_allocs below counts it in allocations instead.
  std::size_t reserve_hold_ms = 0;
  // The same hold counted in allocations rather than time: the surplus goes once this many
  // allocations took pages (slab pages, large runs) without touching it. With both set, the hold
  // ends at whichever comes first; with this alone an idle heap keeps the surplus within the peak
  // bound, which falls as the recent peak (reserve_window_ms) is forgotten. 0: not counted.
  // With synchronous misses neither hold applies (on the host's t1, 8 allocations took mean
  // fragmentation from 0.068 to 0.071). 16 by default: on the host, with background misses,
  // 14-50 % fewer pages created and released than at 8 and 5-13 % fewer maps, fragmentation
  // 0.002-0.004 higher, within the 0.07 target with room (docs/speed.md, "Session 49"; 8 from
  // session 32 on, when fragmentation sat at the target).
  std::size_t reserve_hold_allocs = 16;
  // With background misses, false: the keeper creates pages only up to the low watermark
  // (reserve_low_pages, so that a new slab page finds a mapped page), none ahead of demand beyond
  // it (the misses create theirs on the mapper's thread), and its provisioning otherwise only
  // gathers the reserve's pages into its frontier run. Pages created ahead were released again at the next free's trim (42k of t1's
  // 56k creates on the host with --verify); with the hold, the pages a free returned serve the
  // next allocations instead (keeping the creates ahead with the hold: fragmentation 0.067 -> 0.062
  // without them on the host's t1 with --verify, 0.073 -> 0.069 without --verify).
  bool keeper_creates_ahead = false;
  // A background thread keeps the reserve within its targets, making every driver call of
  // refills and trims off the allocating threads and without the heap lock. Off: refill and
  // trim to the watermarks happen inline (on allocation and free) and in maintain().
  bool background_reserve = true;
  // The keeper's driver calls wait while a caller's are under way (a miss's placement, a free's
  // own trim, a shared tail's alias: the driver serializes VMM calls, so a caller's call would
  // wait for the keeper's), up to 2 ms each. On the H200 it cut alloc p99 by 14-27 % and replay
  // wall by 7-33 %, but the keeper's work, its trims above all, comes later, and fragmentation
  // rose by 0.2-0.7 points (to 0.069-0.070 on several traces; on the host t1 over 0.07:
  // docs/speed.md, "Session 25"), so off by default.
  bool keeper_defers = false;
  // Bytes one compaction batch copies at most (one copy, one event). Pins never wait for a copy
  // (they cancel the move of their object); the batch bounds the work a cancelled move wastes
  // and how long a free of a moving object waits: 0 picks 64 MiB on a GPU (tens of microseconds
  // of copy) and 2 MiB on the host emulation (a memcpy of ~0.5 ms).
  std::size_t move_batch_bytes = 0;
  // Chunks: when a large object's pages must be created (the reserve cannot cover it), at least
  // this many of them are created as one physical allocation (one create, map and access grant
  // on the GPU, instead of one of each per page). A chunk's free pages serve large runs of a
  // close size only, outside the reserve's budget, and the chunk goes back to the backend as
  // soon as none of its pages is in use (docs/speed.md, "Session 22"). 0: pages one by one.
  // 4 shortens replay walls by 1-16 % on the H100 (20-34 % on p23 and kv400 on the H200), memory
  // equal or lower, but the 8-thread stress at a full 1 GiB then meets out-of-memory (7-16 small
  // allocations in 20 s, none at 16): a partly used chunk's free pages serve no slab page
  // (docs/speed.md, "Session 45"). 16 until they can.
  std::size_t chunk_min_pages = 16;
  // Chunked misses: a large object that finds no mapped run of its size, whose body (the pages
  // before its last) has at least this many pages, gets a new chunk for its body rather than
  // reserve pages moved and mapped one by one (a layout miss: the reserve holds the pages, not in
  // one run), as long as created memory stays within reserve_peak_ratio x the recent peak of the
  // live bytes; above that it takes the reserve's pages as before. Fewer calls and a lower alloc
  // p99, but each such object's chunk is created and released on the caller's thread, so frees
  // cost more and an allocation pattern that reuses freed runs at once (KV caches reallocated
  // every token) pays a chunk per allocation at the median (docs/speed.md, "Session 23").
  // 0: off.
  std::size_t chunk_miss_pages = 0;
  // Background misses (on by default since session 41): a large allocation that finds no mapped
  // run returns at once with its handle; a thread of the heap (the mapper) chooses its run and
  // makes the driver calls that map it. The object is pending until then: a pin (host or stream) waits for the mapping, a free or resize waits
  // as for a move, compaction leaves it alone. The allocating thread makes no driver call and
  // does not wait for one; the wait moves to the object's first pin, so it pays where the gap
  // between allocation and first use covers the mapping (docs/background_misses.md). A small
  // allocation that needs a new slab page while the reserve has none is pending the same way
  // (the mapper builds the slab page, on an open tail where one has room), and a free whose
  // trim would make calls on the freeing thread (no ordinary demand) leaves it to the mapper.
  // Fixed objects are placed as before. An allocation that returned a handle is not lost: its
  // pages are promised out of the capacity, and a failed call is tried again (an object whose
  // calls fail three times is lost, with a message on stderr and stats().ops.lost_allocations).
  // Off: every miss maps on its allocating thread, which waits for the calls.
  bool background_misses = true;
  // Background misses pending at most: beyond this many, a miss makes its own calls (as without
  // the mapper), so that the mapper's queue stays bounded when allocations outrun it for good.
  // A queued miss holds only promised pages (counted against the capacity, created when it is
  // placed), and while misses are queued the keeper leaves freed chunks to them (reused where
  // they lie, or released before new pages are created), so a long queue adds no mapped memory:
  // on the host's KV-realloc trace 1,024 takes the caller's calls an operation from 3.1 (16) to
  // 0.011 at a peak of 1.02 (docs/background_misses.md, "Back-pressure"). At least 1.
  std::size_t background_miss_limit = 1024;
  // With background misses: after its queue empties, the mapper polls it for this many
  // microseconds before it sleeps, so that a miss submitted meanwhile costs its caller no wake
  // (a system call under the heap lock, ~3 us on the H100 machine and more under load; a miss
  // submitted while the mapper maps needs none either way). Spends up to that much of a core
  // after each burst of misses. 0: it sleeps at once. At most 100000. The default polls 200 us
  // where 8 hardware threads or more leave a core for it (with misses made without the heap
  // lock, the wakes were most of what remained of the slowest allocations: docs/speed.md,
  // "Session 48"), and not at all on smaller machines, where the poll would take a core from the
  // threads that allocate.
  std::uint32_t miss_mapper_spin_us = default_miss_mapper_spin_us();
  // With background misses: the mapper also chooses a missing object's run and pages (the
  // allocation only promises the pages out of the capacity not yet created, takes the handle and
  // queues the miss; the address is published before the first pin returns). Off: the
  // allocating thread chooses them under the heap lock, as it did before (a few microseconds a
  // miss). Where the pages cannot be promised (near the capacity) the allocating thread chooses
  // them either way (docs/background_misses.md, "Placement on the mapper").
  bool mapper_places_misses = true;
  // With background misses: a pin of a pending object whose miss is still queued takes the miss
  // and makes its calls on the pinning thread, which would wait for them anyway: it waits
  // neither for the misses queued before it nor for the mapper's hand-over. Off (the default):
  // every queued miss is the mapper's, and the pin waits. Off until measured on a GPU: on the
  // host a replay's step line no longer waits behind a freed probe the mapper is still mapping,
  // and samples it (docs/background_misses.md, "Pins that serve").
  bool pins_serve_misses = false;
  // With background misses (and the mapper placing them): a large allocation that finds the
  // heap lock held by another thread (the mapper between its calls, the keeper, a compaction
  // step) does not wait for it: the object is made pending at once, from a few handle indices
  // and pages of the capacity that the heap handed the thread's cache beforehand, and the
  // mapper queues and places it (docs/background_misses.md, "Misses without the heap lock").
  // Off: such an allocation waits for the lock, as any other.
  bool unlocked_misses = true;
  // Shared tails: new slab pages are built on the unused part of large objects' last pages
  // (docs/meshing.md). Off: every slab page has a physical page of its own.
  bool share_tails = true;
  // Stream-ordered frees (Heap::free(h, stream)): the footprint one stream may hold for its own
  // reuse before an event is recorded on it and the memory goes to every stream once the event
  // completes. Larger: fewer events (driver calls) on the free path; smaller: less memory held.
  std::size_t stream_cache_bytes = std::size_t{64} << 20;
  // Thread caches: each thread keeps up to this many bytes of the small objects (1 MiB and less)
  // it freed, and its next allocations of their size classes take them back without the heap
  // lock (at most 32 objects per class). They stay counted in the footprint while cached;
  // compaction cycles take them back first. 0: every allocate and free takes the heap lock.
  std::size_t thread_cache_bytes = std::size_t{1} << 20;
  // Large runs in the thread caches: each thread keeps up to this many bytes of the large objects
  // it freed (whole runs of pages, at most 8), and its next allocation of the same page count
  // and of at most the freed object's bytes takes one back, at the same address, without the
  // heap lock (docs/design.md, "Thread caches"). A cached run stays mapped and counted in the
  // footprint; compaction cycles and out-of-memory take the runs back first. 0: every large
  // allocate and free takes the heap lock.
  std::size_t thread_cache_run_bytes = std::size_t{16} << 20;
  // The runs all threads' caches hold together stay within this many bytes.
  std::size_t thread_cache_runs_total_bytes = std::size_t{128} << 20;
  // Standby tail aliases (with background misses): while the reserve is at its low watermark or
  // below, the keeper prepares aliases for up to this many of the roomiest open tails, and keeps
  // each while its tail stays open on the same page, so that a new slab page that finds the
  // reserve empty goes on a tail without a driver call on the allocating thread (docs/speed.md,
  // "Session 37" and "Session 38"). 0: the allocating thread maps the alias.
  std::size_t standby_tail_aliases = 0;
  // Emergency compaction: before reporting out-of-memory, evacuate sparse pages and retry.
  bool compact_on_oom = true;
  // The copying region (docs/copying_placement.md; experimental, off by default): movable
  // objects of at least `copy_region_min_bytes` are placed as byte ranges in one virtual range
  // whose mapped extent grows and shrinks only at its top, by physical chunks of
  // `copy_region_chunk_bytes`; compaction closes its holes by copying objects, never by moving
  // pages. The keeper keeps `copy_region_headroom_chunks` chunks mapped above the top and unmaps
  // the surplus once it reaches `copy_region_hysteresis_chunks`. An allocation that finds no room
  // there takes the page windows as before (the keeper grows the region meanwhile). Compaction
  // copies while the region's holes exceed `copy_region_hole_high` of its mapped bytes, down to
  // `copy_region_hole_low`. Fixed objects never go there. 0: off (a size above 1 MiB: on).
  std::size_t copy_region_min_bytes = 0;
  std::size_t copy_region_chunk_bytes = std::size_t{64} << 20;
  std::uint32_t copy_region_headroom_chunks = 1;
  std::uint32_t copy_region_hysteresis_chunks = 2;
  double copy_region_hole_high = 0.035;
  double copy_region_hole_low = 0.025;
};

}  // namespace valet
