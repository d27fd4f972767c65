// The host backend's VMM: reservations (mmap PROT_NONE), physical pages (ranges of the memfd),
// mappings (mmap MAP_FIXED of a page's range) and access (mprotect), kept in its own page table
// so that it refuses what CUDA refuses.
#include "host/host_backend_state.h"

#include <sys/mman.h>
#include <unistd.h>

namespace valet {

using host::aligned;
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

Result<PhysicalPage> HostBackend::create_page() {
  VALET_TRY(s_->init);
  std::uint32_t index;
  {
    std::lock_guard lock(s_->mu);
    if (!s_->take_index(index))
      return make_error(Errc::out_of_memory, "create_page: the emulated device memory (" +
                                                 std::to_string(s_->options.capacity_bytes >> 20) +
                                                 " MiB) is full");
  }
  // Commit the memory now, as cuMemCreate does: a page that exists has memory behind it. The
  // index is off the free list, so nobody else touches it; the lock is not held meanwhile.
  if (fallocate(s_->fd, 0, off_t(index) * off_t(kPage), off_t(kPage)) != 0) {
    const int err = errno;
    {
      std::lock_guard lock(s_->mu);
      s_->free_pages.push_back(index);
    }
    errno = err;
    if (err == ENOSPC || err == ENOMEM)
      return make_error(Errc::out_of_memory, "create_page: the host has no memory left for the page");
    return sys_error("fallocate");
  }
  std::lock_guard lock(s_->mu);
  s_->pages[index] = State::PageRecord{};
  ++s_->in_use;
  return PhysicalPage{std::uint64_t{index} + 1};
}

Status HostBackend::release_page(PhysicalPage page) {
  const std::uint64_t index = page.id - 1;
  {
    std::lock_guard lock(s_->mu);
    State::PageRecord* rec = s_->live_page(page);
    if (!rec) return make_error(Errc::not_found, "release_page: unknown or already released page");
    if (rec->mappings > 0) {
      rec->release_pending = true;
      return {};
    }
    s_->forget_page(std::uint32_t(index));
  }
  s_->return_memory(std::uint32_t(index));
  return {};
}

Status HostBackend::map(DevicePtr va, PhysicalPage page) {
  std::lock_guard lock(s_->mu);
  const std::uint64_t index = page.id - 1;
  State::PageRecord* rec = s_->live_page(page);
  if (!rec) return make_error(Errc::not_found, "map: unknown or released page");
  if (!aligned(va) || !s_->reserved(va, kPage))
    return make_error(Errc::invalid_argument, "map: address not aligned or not inside a reservation");
  if (s_->mappings.count(va)) return make_error(Errc::invalid_state, "map: the address is already mapped");
  void* r = mmap(reinterpret_cast<void*>(va), kPage, PROT_NONE, MAP_SHARED | MAP_FIXED, s_->fd,
                 off_t(index) * off_t(kPage));
  if (r == MAP_FAILED) return sys_error("mmap(MAP_SHARED|MAP_FIXED)");
  s_->mappings.emplace(va, State::Mapping{std::uint32_t(index), false});
  ++rec->mappings;
  return {};
}

Status HostBackend::unmap(DevicePtr va, std::size_t bytes) {
  std::vector<std::uint32_t> freed;
  {
    std::lock_guard lock(s_->mu);
    if (!aligned(va) || bytes == 0 || bytes % kPage != 0)
      return make_error(Errc::invalid_argument, "unmap: range not aligned to 2 MiB");
    if (!s_->all_mapped(va, bytes, false))
      return make_error(Errc::invalid_state, "unmap: part of the range is not mapped");
    void* r = mmap(reinterpret_cast<void*>(va), bytes, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return sys_error("mmap(PROT_NONE) over an unmapped range");
    for (DevicePtr p = va; p < va + bytes; p += kPage) {
      auto it = s_->mappings.find(p);
      const std::uint32_t index = it->second.page;
      s_->mappings.erase(it);
      auto& rec = s_->pages.find(index)->second;  // a mapped page keeps its record
      if (--rec.mappings == 0 && rec.release_pending) {
        s_->forget_page(index);
        freed.push_back(index);
      }
    }
  }
  for (std::uint32_t index : freed) s_->return_memory(index);
  return {};
}

Status HostBackend::set_access(DevicePtr va, std::size_t bytes) {
  {
    std::lock_guard lock(s_->mu);
    if (!aligned(va) || bytes == 0 || bytes % kPage != 0)
      return make_error(Errc::invalid_argument, "set_access: range not aligned to 2 MiB");
    if (!s_->all_mapped(va, bytes, false))
      return make_error(Errc::invalid_state, "set_access: part of the range is not mapped");
    if (mprotect(reinterpret_cast<void*>(va), bytes, PROT_READ | PROT_WRITE) != 0)
      return sys_error("mprotect");
    for (DevicePtr p = va; p < va + bytes; p += kPage) s_->mappings[p].accessible = true;
  }
  // The page tables are filled now, as the driver's are: a device mapping is complete once
  // access is granted, and faulting it in 4 KiB at a time on first touch would charge the
  // emulation's cost to whoever touches the memory first (in a virtual machine, several times
  // the cost of filling them here). Without the lock, as the hole punch of a release: maps and
  // unmaps of other pages never queue behind it. The caller owns the range until this returns;
  // a kernel without MADV_POPULATE_WRITE (before 5.14) falls back to faulting on touch.
  (void)madvise(reinterpret_cast<void*>(va), bytes, MADV_POPULATE_WRITE);
  return {};
}

}  // namespace valet
