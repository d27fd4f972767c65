// The host backend's VMM: reservations (mmap PROT_NONE), physical pages (ranges of the memfd),
// mappings (mmap MAP_FIXED of a page's range) and access (mprotect), kept in its own page table
// so that it refuses what CUDA refuses.
#include "host/host_backend_state.h"
#include "host/host_pace.h"

#include <sys/mman.h>
#include <unistd.h>

namespace valet {

using host::aligned;
using host::GpuPace;
using host::PacedCall;
using host::kMaxBytes;
using host::kPage;
using host::sys_error;

Result<MemoryInfo> HostBackend::memory_info() {
  std::lock_guard lock(s_->mu);
  return MemoryInfo{(s_->page_count - s_->in_use) * kPage, s_->page_count * kPage};
}

Result<DevicePtr> HostBackend::reserve(std::size_t bytes) {
  VALET_TRY(s_->init);
  if (bytes == 0 || bytes % kPage != 0)
    return make_error(Errc::invalid_argument, "reserve: size must be a non-zero multiple of 2 MiB");
  if (bytes > kMaxBytes) return make_error(Errc::out_of_address_space, "reserve: more than 64 TiB asked");
  // Over-reserve by one page so the start can be aligned, then trim both ends.
  const std::size_t span = bytes + kPage;
  void* raw = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    if (errno == ENOMEM) return make_error(Errc::out_of_address_space, "reserve: mmap: out of address space");
    return sys_error("mmap(PROT_NONE)");
  }
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t start = (base + kPage - 1) / kPage * kPage;
  if (start > base) munmap(raw, start - base);
  const std::uintptr_t end = start + bytes;
  if (base + span > end) munmap(reinterpret_cast<void*>(end), base + span - end);
  std::lock_guard lock(s_->mu);
  s_->reservations.emplace(start, bytes);
  return DevicePtr{start};
}

Status HostBackend::unreserve(DevicePtr va, std::size_t bytes) {
  std::lock_guard lock(s_->mu);
  auto it = s_->reservations.find(va);
  if (it == s_->reservations.end() || it->second != bytes)
    return make_error(Errc::not_found, "unreserve: not a reservation of this size");
  // Walk whichever is smaller: the range's pages or the mappings (a reservation may be terabytes).
  bool mapped = false;
  if (bytes / kPage <= s_->mappings.size()) {
    for (DevicePtr p = va; p < va + bytes && !mapped; p += kPage) mapped = s_->mappings.count(p) != 0;
  } else {
    for (const auto& m : s_->mappings) mapped = mapped || (m.first >= va && m.first < va + bytes);
  }
  if (mapped) return make_error(Errc::invalid_state, "unreserve: the range still has mapped pages");
  if (munmap(reinterpret_cast<void*>(va), bytes) != 0) return sys_error("munmap");
  s_->reservations.erase(it);
  return {};
}

Result<PhysicalPage> HostBackend::create_page() { return create_chunk(1); }

Result<PhysicalPage> HostBackend::create_chunk(std::size_t pages) {
  VALET_TRY(s_->init);
  PacedCall paced(s_->options.gpu_pace, s_->pace_mu);
  paced.add(GpuPace::create_ns(pages));
  const char* what = pages == 1 ? "create_page" : "create_chunk";
  if (pages == 0 || pages > s_->page_count)
    return make_error(pages == 0 ? Errc::invalid_argument : Errc::out_of_memory,
                      std::string(what) + ": " + std::to_string(pages) + " pages (the emulated device holds " +
                          std::to_string(s_->page_count) + ")");
  const auto n = std::uint32_t(pages);
  std::vector<State::TakenRun> taken;
  {
    std::lock_guard lock(s_->mu);
    if (s_->in_use + n > s_->page_count)
      return make_error(Errc::out_of_memory, std::string(what) + ": the emulated device memory (" +
                                                 std::to_string(s_->options.capacity_bytes >> 20) +
                                                 " MiB) is full");
    if (!s_->take_runs(n, taken))
      return make_error(Errc::out_of_memory, std::string(what) + ": no " + std::to_string(n) +
                                                 " free indices in the emulation's memfd");
    // Counted now, so that a create on another thread sees the capacity taken meanwhile.
    s_->in_use += n;
    s_->peak_in_use = std::max(s_->peak_in_use, s_->in_use);
  }
  // Commit the new memory now, as cuMemCreate does: a page that exists has memory behind it (a
  // retained page still has). The indices are off the free lists, so nobody else touches them;
  // the lock is not held meanwhile. Paced as a GPU (gpu_pace), the memory comes at first touch
  // instead: the driver's create costs microseconds at any size, a commit of a large chunk here
  // milliseconds, which the pace would count as the driver's.
  for (const auto& t : taken) {
    if (t.committed || s_->options.gpu_pace ||
        fallocate(s_->fd, 0, off_t(t.run.index) * off_t(kPage), off_t(t.run.pages) * off_t(kPage)) == 0)
      continue;
    const int err = errno;
    {
      std::lock_guard lock(s_->mu);
      s_->in_use -= n;
    }
    for (const auto& r : taken) s_->return_memory(r.run.index, r.run.pages, /*retain=*/false);
    errno = err;
    if (err == ENOSPC || err == ENOMEM)
      return make_error(Errc::out_of_memory, std::string(what) + ": the host has no memory left for it");
    return sys_error("fallocate");
  }
  const std::uint32_t key = taken.front().run.index;
  std::lock_guard lock(s_->mu);
  State::PageRecord& rec = s_->pages[key];
  rec = State::PageRecord{false, 0, n, {}};
  if (taken.size() > 1)
    for (const auto& t : taken) rec.runs.push_back(t.run);
  return PhysicalPage{std::uint64_t{key} + 1};
}

Status HostBackend::release_page(PhysicalPage page) {
  const std::uint64_t index = page.id - 1;
  std::vector<State::Run> runs;
  PacedCall paced(s_->options.gpu_pace, s_->pace_mu);
  {
    std::lock_guard lock(s_->mu);
    State::PageRecord* rec = s_->live_page(page);
    if (!rec) return make_error(Errc::not_found, "release_page: unknown or already released page");
    paced.add(GpuPace::release_ns(rec->pages));
    if (rec->mappings > 0) {
      rec->release_pending = true;
      return {};
    }
    runs = State::runs_of(std::uint32_t(index), *rec);
    s_->forget_page(std::uint32_t(index));
  }
  for (auto r : runs) s_->return_memory(r.index, r.pages);
  return {};
}

Status HostBackend::map(DevicePtr va, PhysicalPage page) {
  PacedCall paced(s_->options.gpu_pace, s_->pace_mu);
  std::lock_guard lock(s_->mu);
  const std::uint64_t index = page.id - 1;
  State::PageRecord* rec = s_->live_page(page);
  if (!rec) return make_error(Errc::not_found, "map: unknown or released page");
  paced.add(GpuPace::map_ns(rec->pages));
  const std::size_t bytes = std::size_t(rec->pages) * kPage;
  if (!aligned(va) || !s_->reserved(va, bytes))
    return make_error(Errc::invalid_argument, "map: address not aligned or not inside a reservation");
  for (DevicePtr p = va; p < va + bytes; p += kPage)
    if (s_->mappings.count(p)) return make_error(Errc::invalid_state, "map: the address is already mapped");
  DevicePtr at = va;
  for (auto run : State::runs_of(std::uint32_t(index), *rec)) {
    void* r = mmap(reinterpret_cast<void*>(at), std::size_t(run.pages) * kPage, PROT_NONE, MAP_SHARED | MAP_FIXED,
                   s_->fd, off_t(run.index) * off_t(kPage));
    if (r == MAP_FAILED) {
      const Error e = sys_error("mmap(MAP_SHARED|MAP_FIXED)");
      // The runs mapped so far go back to reserved-only address space.
      (void)mmap(reinterpret_cast<void*>(va), bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
                 -1, 0);
      return e;
    }
    at += std::size_t(run.pages) * kPage;
  }
  for (DevicePtr p = va; p < va + bytes; p += kPage) s_->mappings.emplace(p, State::Mapping{std::uint32_t(index), false});
  ++rec->mappings;
  if (rec->pages > 1) s_->chunk_maps.add(va, bytes);
  return {};
}

Status HostBackend::unmap(DevicePtr va, std::size_t bytes) {
  std::vector<State::Run> freed;
  PacedCall paced(s_->options.gpu_pace, s_->pace_mu);
  {
    std::lock_guard lock(s_->mu);
    VALET_TRY(s_->check_mapped_range(va, bytes, "unmap"));
    if (paced.on()) paced.add(s_->paced_mappings_ns(va, bytes, &GpuPace::unmap_ns));
    void* r = mmap(reinterpret_cast<void*>(va), bytes, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return sys_error("mmap(PROT_NONE) over an unmapped range");
    for (DevicePtr p = va; p < va + bytes; p += kPage) {
      auto it = s_->mappings.find(p);
      const std::uint32_t index = it->second.page;
      s_->mappings.erase(it);
      // A mapped page keeps its record, but a chunk's record goes at its mapping's first page
      // when that was its last mapping (the rest of its pages come after, in this loop).
      auto found = s_->pages.find(index);
      if (found == s_->pages.end()) continue;
      auto& rec = found->second;
      // A chunk's mapping is one mapping of its record, counted at its first page.
      if (rec.pages > 1 && !s_->chunk_maps.starts_at(p)) continue;
      if (--rec.mappings == 0 && rec.release_pending) {
        for (auto r : State::runs_of(index, rec)) freed.push_back(r);
        s_->forget_page(index);
      }
    }
    s_->chunk_maps.forget(va, bytes);
  }
  for (auto r : freed) s_->return_memory(r.index, r.pages);
  return {};
}

// The page tables fill at first touch: populating them here (MADV_POPULATE_WRITE) cost more than
// it saved in the virtual machine this project is developed on, where the first touch of a 4 KiB
// page after a map costs microseconds either way (docs/speed.md, "Session 36").
Status HostBackend::set_access(DevicePtr va, std::size_t bytes) {
  PacedCall paced(s_->options.gpu_pace, s_->pace_mu);
  std::lock_guard lock(s_->mu);
  VALET_TRY(s_->check_mapped_range(va, bytes, "set_access"));
  if (paced.on()) paced.add(s_->paced_mappings_ns(va, bytes, &GpuPace::access_ns));
  if (mprotect(reinterpret_cast<void*>(va), bytes, PROT_READ | PROT_WRITE) != 0) return sys_error("mprotect");
  for (DevicePtr p = va; p < va + bytes; p += kPage) s_->mappings[p].accessible = true;
  return {};
}

}  // namespace valet
