// HostBackend::State: what one host backend holds. Private to runtime/src/host/; its member
// functions are defined by idea across host_backend.cpp (lifetime, properties), host_page_table.cpp
// (reservations, pages, mappings), host_backend_streams.cpp (streams, events) and
// host_transfers.cpp (copies, pattern fill and verify, read and write).
#pragma once

#include <fcntl.h>
#include <linux/falloc.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "chunk_mappings.h"
#include "host/host_stream.h"
#include "valet/host_backend.h"

namespace valet::host {

inline constexpr std::size_t kPage = HostBackend::kPageSize;
// The most address space one reserve() takes, and so the most memory the emulation backs: pages
// beyond it could never all be mapped at once. (Page indices are 32-bit: 2^25 pages fit.)
inline constexpr std::size_t kMaxBytes = std::size_t{1} << 46;

inline Error sys_error(const char* call) {
  return make_error(Errc::system_error, std::string(call) + " failed: " + std::strerror(errno));
}

inline bool aligned(std::uintptr_t v) { return v % kPage == 0; }

}  // namespace valet::host

namespace valet {

struct HostBackend::State {
  static constexpr std::size_t kPage = host::kPage;
  struct PageRecord {
    bool release_pending = false;  // released while still mapped: freed at the last unmap
    std::uint32_t mappings = 0;
    std::uint32_t pages = 1;       // a chunk's pages (create_chunk): memfd indices [index, index + pages)
  };
  struct Mapping {
    std::uint32_t page = 0;  // the record's index (a chunk's first)
    bool accessible = false;
  };

  HostBackendOptions options;
  int fd = -1;
  std::size_t page_count = 0;   // the emulated capacity, in pages
  // Indices of the memfd (sparse: unused ones cost nothing): more than the capacity, so that a
  // chunk finds contiguous indices where freed pages left holes.
  std::size_t index_count = 0;
  Status init;

  mutable std::mutex mu;  // pages, mappings, reservations
  // Per-page state exists only for pages that exist: the capacity may be terabytes (a memfd of
  // that size is sparse), and tables sized by it would cost gigabytes of host memory up front.
  std::unordered_map<std::uint32_t, PageRecord> pages;  // created pages, by index
  std::vector<std::uint32_t> free_pages;                // indices given back, reused first
  std::uint32_t fresh_pages = 0;                        // indices [0, fresh_pages) have been used
  std::size_t in_use = 0;
  std::map<DevicePtr, std::size_t> reservations;
  std::unordered_map<DevicePtr, Mapping> mappings;  // by page-aligned address
  ChunkMappings chunk_maps;                          // mappings of chunks of more than one page

  std::atomic<std::int64_t> delay_us{0};
  std::mutex work_mu;  // streams and events
  // Shared, as events are: a call that found a stream keeps it alive while it enqueues, even if
  // another thread destroys the stream meanwhile (the last holder drains and frees it).
  std::unordered_map<std::uintptr_t, std::shared_ptr<host::HostStream>> streams;
  std::unordered_map<std::uintptr_t, std::shared_ptr<host::HostEvent>> events;
  std::shared_ptr<host::HostStream> default_stream;

  // Precondition: mu held. Is [va, va+bytes) inside one reservation?
  bool reserved(DevicePtr va, std::size_t bytes) const {
    auto it = reservations.upper_bound(va);
    if (it == reservations.begin()) return false;
    --it;
    return va >= it->first && va + bytes <= it->first + it->second && va + bytes > va;
  }

  // Precondition: mu held. Is every page overlapping [va, va+bytes) mapped (and accessible)?
  bool all_mapped(DevicePtr va, std::size_t bytes, bool need_access) const {
    if (bytes == 0) return true;
    for (DevicePtr p = va - va % kPage; p < va + bytes; p += kPage) {
      auto it = mappings.find(p);
      if (it == mappings.end() || (need_access && !it->second.accessible)) return false;
    }
    return true;
  }

  // Precondition: mu held. The record of a created page that is not being released, or null.
  PageRecord* live_page(PhysicalPage page) {
    if (page.id == 0 || page.id > index_count) return nullptr;
    auto it = pages.find(std::uint32_t(page.id - 1));
    return it == pages.end() || it->second.release_pending ? nullptr : &it->second;
  }

  // Precondition: mu held. Takes `n` contiguous indices for a new page or chunk (returned ones
  // first for a page), or false: the capacity would be exceeded, or no contiguous range is free.
  bool take_indices(std::uint32_t n, std::uint32_t& index) {
    if (in_use + n > page_count) return false;
    if (n == 1 && !free_pages.empty()) {
      index = free_pages.back();
      free_pages.pop_back();
      return true;
    }
    if (fresh_pages + n <= index_count) {
      index = fresh_pages;
      fresh_pages += n;
      return true;
    }
    // A run of n returned indices.
    std::sort(free_pages.begin(), free_pages.end());
    for (std::size_t i = 0; i + n <= free_pages.size(); ++i)
      if (free_pages[i + n - 1] - free_pages[i] == n - 1) {
        index = free_pages[i];
        free_pages.erase(free_pages.begin() + std::ptrdiff_t(i), free_pages.begin() + std::ptrdiff_t(i + n));
        return true;
      }
    return false;
  }

  // Precondition: mu held. Forgets a page or chunk; its indices are reused only after
  // return_memory().
  void forget_page(std::uint32_t index) {
    auto it = pages.find(index);
    in_use -= it->second.pages;
    pages.erase(it);
  }
  // Precondition: mu NOT held. Gives a forgotten page's (or chunk's: `n` pages) memory back to
  // the OS, then its indices to the free list. The hole punch (~0.5 ms for 2 MiB) runs without
  // the lock, so that maps and unmaps of other pages (a compaction's remap, which pins may wait
  // for) never queue behind it.
  void return_memory(std::uint32_t index, std::uint32_t n = 1) {
    // A failed punch only delays the return of memory; the pages are still free for reuse.
    (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(index) * off_t(kPage),
                    off_t(n) * off_t(kPage));
    std::lock_guard lock(mu);
    for (std::uint32_t i = 0; i < n; ++i) free_pages.push_back(index + i);
  }

  std::shared_ptr<host::HostStream> stream(Stream s) {
    if (s.id == 0) return default_stream;
    std::lock_guard lock(work_mu);
    auto it = streams.find(s.id);
    return it == streams.end() ? nullptr : it->second;
  }
  // Shared: queued tasks keep an event alive after destroy_event, as the driver does.
  std::shared_ptr<host::HostEvent> event(Event e) {
    std::lock_guard lock(work_mu);
    auto it = events.find(e.id);
    return it == events.end() ? nullptr : it->second;
  }

  Status check_ranges_accessible(DevicePtr a, std::size_t n, const char* what) const {
    if (n == 0) return {};
    if (a == 0 || a + n < a) return make_error(Errc::invalid_argument, std::string(what) + ": null or wrapping range");
    if (!all_mapped(a, n, true))
      return make_error(Errc::invalid_state,
                        std::string(what) + ": range is not mapped with access at " + std::to_string(a));
    return {};
  }
};

}  // namespace valet
