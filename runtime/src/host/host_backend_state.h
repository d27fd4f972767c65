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
  // Memfd indices [index, index + pages).
  struct Run {
    std::uint32_t index = 0;
    std::uint32_t pages = 0;
  };
  struct PageRecord {
    bool release_pending = false;  // released while still mapped: freed at the last unmap
    std::uint32_t mappings = 0;
    std::uint32_t pages = 1;       // a chunk's pages (create_chunk)
    // Where a chunk's memory is (in address order) when it is not the one run [key, key + pages):
    // a chunk takes retained memory of any sizes before new memory (take_runs).
    std::vector<Run> runs;
  };
  // A run taken for a create, and whether its memory is still there (retained).
  struct TakenRun {
    Run run;
    bool committed = false;
  };
  struct Mapping {
    std::uint32_t page = 0;  // the record's index (a chunk's first)
    bool accessible = false;
  };

  HostBackendOptions options;
  int fd = -1;
  std::size_t page_count = 0;   // the emulated capacity, in pages
  // Indices of the memfd (sparse: unused ones cost nothing): more than the capacity, so that a
  // chunk's new memory is mostly one run of fresh indices (one fallocate, one mmap per map).
  std::size_t index_count = 0;
  Status init;

  mutable std::mutex mu;  // pages, mappings, reservations
  // Per-page state exists only for pages that exist: the capacity may be terabytes (a memfd of
  // that size is sparse), and tables sized by it would cost gigabytes of host memory up front.
  std::unordered_map<std::uint32_t, PageRecord> pages;  // created pages, by index
  std::vector<std::uint32_t> free_pages;                // indices given back, reused first
  // Released pages whose memory was kept (HostBackendOptions::retained_bytes), as runs of
  // contiguous indices (first index -> pages, adjacent runs merged), so that chunks, whose pages
  // are most of the memory a replay creates, are recycled as well as pages: a create takes the
  // smallest run that holds it, else pieces of several (take_runs). At most retain_limit pages in
  // all (retained_count), and in_use + retained_count <= peak_in_use: the memfd holds no more
  // memory than at the peak of pages in use, what an emulation that returned every release's
  // memory would hold then. (A create takes new memory only once every retained page is taken,
  // so only a release could break the bound, and return_memory keeps it.)
  std::map<std::uint32_t, std::uint32_t> retained;
  std::size_t retained_count = 0;
  std::size_t retain_limit = 0;
  std::uint32_t fresh_pages = 0;                        // indices [0, fresh_pages) have been used
  std::size_t in_use = 0;
  std::size_t peak_in_use = 0;  // the most pages in use at once (counted when a create takes them)
  std::map<DevicePtr, std::size_t> reservations;
  std::unordered_map<DevicePtr, Mapping> mappings;  // by page-aligned address
  ChunkMappings chunk_maps;                          // mappings of chunks of more than one page

  // HostBackendOptions::gpu_pace: held by a page call for its whole paced time, as the driver
  // serializes its VMM calls.
  std::mutex pace_mu;

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

  // Precondition: mu held, the range checked (check_mapped_range). HostBackendOptions::gpu_pace:
  // a call's cost over the range's mappings, one `per_mapping(pages)` for each page mapped alone
  // and each chunk's mapping.
  std::int64_t paced_mappings_ns(DevicePtr va, std::size_t bytes, std::int64_t (*per_mapping)(std::size_t)) const {
    std::int64_t ns = 0;
    for (DevicePtr p = va; p < va + bytes; p += kPage) {
      const auto rec = pages.find(mappings.at(p).page);
      const std::uint32_t n = rec == pages.end() ? 1 : rec->second.pages;
      if (n == 1 || chunk_maps.starts_at(p)) ns += per_mapping(n);
    }
    return ns;
  }

  // Precondition: mu held. What unmap and set_access both require of their range, as the driver
  // does: whole 2 MiB pages, every one mapped, no chunk's mapping cut. `call` names the call.
  Status check_mapped_range(DevicePtr va, std::size_t bytes, const char* call) const {
    if (!host::aligned(va) || bytes == 0 || bytes % host::kPage != 0)
      return make_error(Errc::invalid_argument, std::string(call) + ": range not aligned to 2 MiB");
    if (!all_mapped(va, bytes, false))
      return make_error(Errc::invalid_state, std::string(call) + ": part of the range is not mapped");
    if (!chunk_maps.whole(va, bytes))
      return make_error(Errc::invalid_state, std::string(call) + ": the range cuts a chunk's mapping");
    return {};
  }

  // Precondition: mu held. The record of a created page that is not being released, or null.
  PageRecord* live_page(PhysicalPage page) {
    if (page.id == 0 || page.id > index_count) return nullptr;
    auto it = pages.find(std::uint32_t(page.id - 1));
    return it == pages.end() || it->second.release_pending ? nullptr : &it->second;
  }

  // Precondition: mu held, in_use + n <= page_count. Takes indices for a new page or chunk of `n`
  // pages into `out` (empty on entry): retained memory first (the smallest run that holds all `n`,
  // else the largest runs until `n`), then indices without memory (a returned one for a page,
  // fresh ones for the rest, else returned ones one by one). Fewer runs make fewer mmaps per map
  // of the chunk; retained memory first makes fewer commits and no hole punches (a replay's
  // chunks come in many sizes, and a commit of new memory while retained memory waits, which
  // then went back to keep the peak bound, cost the emulation most of its time).
  // False, with nothing taken, where the memfd has fewer free indices than `n` (its indices are
  // 4x the capacity, so only while many releases are between forget_page and return_memory).
  bool take_runs(std::uint32_t n, std::vector<TakenRun>& out) {
    std::uint32_t need = n;
    std::uint32_t index = 0;
    if (take_retained(n, index)) {
      out.push_back({{index, n}, true});
      return true;
    }
    while (need > 0 && !retained.empty()) {
      auto largest = std::max_element(retained.begin(), retained.end(),
                                      [](const auto& x, const auto& y) { return x.second < y.second; });
      const Run run{largest->first, std::min(need, largest->second)};
      take_retained_at(largest, run.pages);
      out.push_back({run, true});
      need -= run.pages;
    }
    if (need == 1 && !free_pages.empty()) {
      out.push_back({{free_pages.back(), 1}, false});
      free_pages.pop_back();
      need = 0;
    }
    if (need > 0 && fresh_pages + need > index_count) {
      if (free_pages.size() + (index_count - fresh_pages) < need) {
        give_back_runs(out);
        return false;
      }
      // Returned indices, one by one (merged where adjacent), until fresh ones hold the rest.
      std::sort(free_pages.begin(), free_pages.end(), std::greater<>());
      while (need > 0 && fresh_pages + need > index_count) {
        const std::uint32_t i = free_pages.back();
        free_pages.pop_back();
        if (!out.empty() && !out.back().committed && out.back().run.index + out.back().run.pages == i)
          ++out.back().run.pages;
        else
          out.push_back({{i, 1}, false});
        --need;
      }
    }
    if (need > 0) {
      out.push_back({{fresh_pages, need}, false});
      fresh_pages += need;
    }
    return true;
  }

  // Precondition: mu held. Puts back what take_runs took (nothing was committed meanwhile).
  void give_back_runs(std::vector<TakenRun>& taken) {
    for (const auto& t : taken) {
      if (t.committed) {
        add_retained(t.run.index, t.run.pages);
      } else {
        for (std::uint32_t k = 0; k < t.run.pages; ++k) free_pages.push_back(t.run.index + k);
      }
    }
    taken.clear();
  }

  // Precondition: mu held. The first `n` indices of the smallest retained run that holds them.
  bool take_retained(std::uint32_t n, std::uint32_t& index) {
    auto best = retained.end();
    for (auto it = retained.begin(); it != retained.end(); ++it)
      if (it->second >= n && (best == retained.end() || it->second < best->second)) {
        best = it;
        if (it->second == n) break;
      }
    if (best == retained.end()) return false;
    index = best->first;
    take_retained_at(best, n);
    return true;
  }

  // Precondition: mu held, n <= it->second. Takes the first `n` indices of the retained run `it`.
  void take_retained_at(std::map<std::uint32_t, std::uint32_t>::iterator it, std::uint32_t n) {
    const std::uint32_t index = it->first;
    const std::uint32_t rest = it->second - n;
    retained.erase(it);
    if (rest > 0) retained.emplace(index + n, rest);
    retained_count -= n;
  }

  // Precondition: mu held. Where a record's memory is.
  static std::vector<Run> runs_of(std::uint32_t key, const PageRecord& rec) {
    return rec.runs.empty() ? std::vector<Run>{{key, rec.pages}} : rec.runs;
  }

  // Precondition: mu held. Adds [index, index + n) to the retained runs, merged with its neighbours.
  void add_retained(std::uint32_t index, std::uint32_t n) {
    retained_count += n;
    auto next = retained.lower_bound(index);
    if (next != retained.end() && next->first == index + n) {
      n += next->second;
      next = retained.erase(next);
    }
    if (next != retained.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == index) {
        prev->second += n;
        return;
      }
    }
    retained.emplace_hint(next, index, n);
  }

  // Precondition: mu held. Forgets a page or chunk; its indices are reused only after
  // return_memory().
  void forget_page(std::uint32_t index) {
    auto it = pages.find(index);
    in_use -= it->second.pages;
    pages.erase(it);
  }
  // Precondition: mu NOT held. Gives a forgotten page's (or chunk's: `n` pages) indices back:
  // up to retain_limit pages keep their memory for the next creates (where `retain`; a
  // failed commit's are not kept, its memory may be partial); the rest go back to the
  // OS first (the hole punch, ~0.5 ms for 2 MiB, runs without the lock, so that maps and unmaps
  // of other pages, a compaction's remap that pins may wait for, never queue behind it).
  void return_memory(std::uint32_t index, std::uint32_t n = 1, bool retain = true) {
    std::uint32_t kept = 0;
    if (retain) {
      std::lock_guard lock(mu);
      // Within both bounds as they are now: another thread's create may have taken the pages'
      // share of the peak since they were forgotten.
      const std::size_t held = in_use + retained_count;
      const std::size_t room = std::min(retain_limit - std::min(retain_limit, retained_count),
                                        peak_in_use - std::min(peak_in_use, held));
      kept = std::uint32_t(std::min<std::size_t>(n, room));
      if (kept > 0) add_retained(index, kept);
    }
    if (kept == n) return;
    // A failed punch only delays the return of memory; the pages are still free for reuse.
    (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(index + kept) * off_t(kPage),
                    off_t(n - kept) * off_t(kPage));
    std::lock_guard lock(mu);
    for (std::uint32_t i = kept; i < n; ++i) free_pages.push_back(index + i);
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
