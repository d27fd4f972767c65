// How a heap is made.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace valet {

enum class BackendChoice : std::uint8_t { automatic, cuda, host };

struct Config {
  // Which backend open_heap() picks (runtime/): auto = CUDA where usable, else the host emulation.
  BackendChoice backend = BackendChoice::automatic;
  int device = 0;
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
  // A background thread keeps the reserve between its watermarks. Off: refill and trim happen
  // inline (on allocation and free) and in maintain().
  bool background_reserve = true;
  // Bytes one compaction batch copies at most (one copy, one event). Pins never wait for a copy
  // (they cancel the move of their object); the batch bounds the work a cancelled move wastes
  // and how long a free of a moving object waits: 0 picks 64 MiB on a GPU (tens of microseconds
  // of copy) and 2 MiB on the host emulation (a memcpy of ~0.5 ms).
  std::size_t move_batch_bytes = 0;
  // Shared tails: new slab pages are built on the unused part of large objects' last pages
  // (docs/meshing.md). Off: every slab page has a physical page of its own.
  bool share_tails = true;
  // Emergency compaction: before reporting out-of-memory, evacuate sparse pages and retry.
  bool compact_on_oom = true;
  // Host backend only: delay injected before each queued copy/fill (ordering tests).
  std::chrono::microseconds host_task_delay{0};
};

}  // namespace valet
