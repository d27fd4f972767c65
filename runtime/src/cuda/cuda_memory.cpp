// The CUDA backend's memory: virtual ranges, physical pages, mappings and access, and the page
// table that lets the backend refuse what the driver would refuse (or what would kill the context).
#include <algorithm>
#include <cstring>

#include "cuda/cuda_backend_state.h"
#include "cuda/cuda_context.h"
#include "valet/kernels/work_items.h"  // items_of: the items a range is cut into

namespace valet::cuda {
namespace {

bool page_aligned(std::uintptr_t v) { return v % kPage == 0; }

}  // namespace

CUmemAllocationProp page_properties(int ordinal) {
  CUmemAllocationProp prop;
  std::memset(&prop, 0, sizeof prop);
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = ordinal;
  return prop;
}

// --- The page table -----------------------------------------------------------------------------

CudaBackend::State::Reservation* CudaBackend::State::find_reservation(DevicePtr a, DevicePtr* base) {
  auto it = reservations.upper_bound(a);
  if (it == reservations.begin()) return nullptr;
  --it;
  if (a - it->first >= it->second.bytes) return nullptr;
  *base = it->first;
  return &it->second;
}

bool CudaBackend::State::mapped_runs(DevicePtr va, std::size_t bytes, std::vector<Run>& runs) {
  const DevicePtr end = va + bytes;
  for (DevicePtr p = va; p < end;) {
    DevicePtr base = 0;
    Reservation* r = find_reservation(p, &base);
    if (!r) return false;
    const DevicePtr run_end = std::min<DevicePtr>(end, base + r->bytes);
    const std::size_t first = (p - base) / kPage;
    const std::size_t last = (run_end - base) / kPage;
    for (std::size_t i = first; i < last; ++i)
      if (r->slot(i) == 0) return false;
    runs.push_back(Run{p, run_end - p, r, first});
    p = run_end;
  }
  return true;
}

Status CudaBackend::State::check_accessible(DevicePtr a, std::size_t n, const char* what, Lookup& c) {
  if (n == 0) return {};
  if (a == 0 || a + n < a) return make_error(Errc::invalid_argument, std::string(what) + ": null or wrapping range");
  const DevicePtr last = a + n - 1;
  DevicePtr p = a;
  for (;;) {
    if (p < c.base || p >= c.end) {
      DevicePtr base = 0;
      const Reservation* r = find_reservation(p, &base);
      if (!r)
        return make_error(Errc::invalid_state,
                          std::string(what) + ": range is not mapped with access at " + std::to_string(p));
      c = Lookup{base, base + r->bytes, r};
    }
    const DevicePtr stop = std::min<DevicePtr>(last, c.end - 1);
    for (std::size_t i = (p - c.base) / kPage, e = (stop - c.base) / kPage; i <= e; ++i)
      if ((c.r->slot(i) & 1u) == 0)
        return make_error(Errc::invalid_state, std::string(what) + ": range is not mapped with access at " +
                                                   std::to_string(c.base + i * kPage));
    if (last < c.end) return {};
    p = c.end;
  }
}

bool CudaBackend::State::accessible(DevicePtr a, std::size_t n, Lookup& c) {
  if (n == 0) return true;
  const DevicePtr last = a + n - 1;
  if (a >= c.base && last < c.end && last >= a && a != 0) {
    for (std::size_t i = (a - c.base) / kPage, e = (last - c.base) / kPage; i <= e; ++i)
      if ((c.r->slot(i) & 1u) == 0) return false;
    return true;
  }
  return check_accessible(a, n, "", c).ok();
}

Status CudaBackend::State::check_patterns(std::span<const PatternRange> ranges, const char* what,
                                          std::uint64_t* items) {
  std::lock_guard lock(mu);
  Lookup cache;
  std::uint64_t total = 0;
  for (const PatternRange& r : ranges) {
    if (!accessible(r.dst, r.bytes, cache)) VALET_TRY(check_accessible(r.dst, r.bytes, what, cache));
    total += kernels::abi::items_of(r.bytes);
  }
  *items = total;
  return {};
}

void CudaBackend::State::drop_mapping(std::uint64_t id, DevicePtr at) {
  auto it = pages.find(id);
  if (it == pages.end()) return;
  // A chunk's mapping is one mapping of its record, counted at its first page.
  if (it->second.pages > 1 && !chunk_maps.starts_at(at)) return;
  if (--it->second.mappings == 0 && it->second.release_pending) pages.erase(it);
}

// --- Virtual address space and physical pages ---------------------------------------------------

Result<DevicePtr> CudaBackend::reserve(std::size_t bytes) {
  if (bytes == 0 || bytes % kPage != 0)
    return make_error(Errc::invalid_argument, "reserve: size must be a non-zero multiple of 2 MiB");
  if (bytes > kMaxReserveBytes) return make_error(Errc::out_of_address_space, "reserve: more than 64 TiB asked");
  VALET_CUDA_SCOPE();
  CUdeviceptr va = 0;
  const CUresult r = s_->d->cuMemAddressReserve(&va, bytes, kPage, 0, 0);
  if (r != CUDA_SUCCESS)
    return cu_error_oom("cuMemAddressReserve", r, Errc::out_of_address_space,
                        "reserve: no virtual address range of " + std::to_string(bytes) + " bytes");
  State::Reservation res;
  res.bytes = bytes;
  res.chunks.resize((bytes / kPage + kSlotsPerChunk - 1) / kSlotsPerChunk);
  std::lock_guard lock(s_->mu);
  s_->reservations.emplace(static_cast<DevicePtr>(va), std::move(res));
  return static_cast<DevicePtr>(va);
}

Status CudaBackend::unreserve(DevicePtr va, std::size_t bytes) {
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  auto it = s_->reservations.find(va);
  if (it == s_->reservations.end() || it->second.bytes != bytes)
    return make_error(Errc::not_found, "unreserve: not a reservation of this size");
  if (it->second.mapped > 0) return make_error(Errc::invalid_state, "unreserve: the range still has mapped pages");
  VALET_CU("cuMemAddressFree", s_->d->cuMemAddressFree(va, bytes));
  s_->reservations.erase(it);
  return {};
}

Result<PhysicalPage> CudaBackend::create_page() { return create_chunk(1); }

Result<PhysicalPage> CudaBackend::create_chunk(std::size_t pages) {
  if (pages == 0 || pages > kMaxReserveBytes / kPage)
    return make_error(Errc::invalid_argument, "create_chunk: " + std::to_string(pages) + " pages");
  VALET_CUDA_SCOPE();
  const CUmemAllocationProp prop = page_properties(s_->ordinal);
  CUmemGenericAllocationHandle handle = 0;
  const CUresult r = s_->d->cuMemCreate(&handle, pages * kPage, &prop, 0);
  if (r != CUDA_SUCCESS)
    return cu_error_oom("cuMemCreate", r, Errc::out_of_memory,
                        pages == 1 ? std::string("create_page: the device has no memory left for another 2 MiB page")
                                   : "create_chunk: the device has no memory left for " + std::to_string(pages) +
                                         " pages in one allocation");
  std::lock_guard lock(s_->mu);
  const std::uint64_t id = s_->next_page++;
  s_->pages.emplace(id, State::PageRecord{handle, 0, false, pages});
  return PhysicalPage{id};
}

Status CudaBackend::release_page(PhysicalPage page) {
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  auto it = s_->pages.find(page.id);
  if (it == s_->pages.end() || it->second.release_pending)
    return make_error(Errc::not_found, "release_page: unknown or already released page");
  // The driver keeps the memory until the last mapping goes away.
  VALET_CU("cuMemRelease", s_->d->cuMemRelease(it->second.handle));
  if (it->second.mappings > 0) {
    it->second.release_pending = true;
  } else {
    s_->pages.erase(it);
  }
  return {};
}

Status CudaBackend::map(DevicePtr va, PhysicalPage page) {
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  auto it = s_->pages.find(page.id);
  if (it == s_->pages.end() || it->second.release_pending)
    return make_error(Errc::not_found, "map: unknown or released page");
  const std::size_t n = it->second.pages;
  DevicePtr base = 0;
  State::Reservation* r = page_aligned(va) ? s_->find_reservation(va, &base) : nullptr;
  if (!r || va - base + n * kPage > r->bytes)
    return make_error(Errc::invalid_argument, "map: address not aligned or not inside a reservation");
  const std::size_t index = (va - base) / kPage;
  for (std::size_t i = index; i < index + n; ++i)
    if (r->slot(i) != 0) return make_error(Errc::invalid_state, "map: the address is already mapped");
  const CUresult res = s_->d->cuMemMap(va, n * kPage, 0, it->second.handle, 0);
  if (res != CUDA_SUCCESS)
    return cu_error_oom("cuMemMap", res, Errc::out_of_memory, "map: the device has no memory left for the mapping");
  for (std::size_t i = index; i < index + n; ++i) r->slot_ref(i) = page.id << 1;  // mapped, no access yet
  r->mapped += n;
  ++it->second.mappings;
  if (n > 1) s_->chunk_maps.add(va, n * kPage);
  return {};
}

Status CudaBackend::unmap(DevicePtr va, std::size_t bytes) {
  if (!page_aligned(va) || bytes == 0 || bytes % kPage != 0 || va + bytes < va)
    return make_error(Errc::invalid_argument, "unmap: range not aligned to 2 MiB");
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  std::vector<State::Run> runs;
  if (!s_->mapped_runs(va, bytes, runs))
    return make_error(Errc::invalid_state, "unmap: part of the range is not mapped");
  if (!s_->chunk_maps.whole(va, bytes))
    return make_error(Errc::invalid_state, "unmap: the range cuts a chunk's mapping");
  // One call per reservation the range crosses (one, in practice): cuMemUnmap takes any range
  // made of whole mappings.
  for (const State::Run& run : runs) {
    VALET_CU("cuMemUnmap", s_->d->cuMemUnmap(run.start, run.bytes));
    for (std::size_t i = run.first; i < run.first + run.bytes / kPage; ++i) {
      std::uint64_t& slot = run.r->slot_ref(i);
      s_->drop_mapping(slot >> 1, run.start + (i - run.first) * kPage);
      slot = 0;
      --run.r->mapped;
    }
  }
  s_->chunk_maps.forget(va, bytes);
  return {};
}

Status CudaBackend::set_access(DevicePtr va, std::size_t bytes) {
  if (!page_aligned(va) || bytes == 0 || bytes % kPage != 0 || va + bytes < va)
    return make_error(Errc::invalid_argument, "set_access: range not aligned to 2 MiB");
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->mu);
  std::vector<State::Run> runs;
  if (!s_->mapped_runs(va, bytes, runs))
    return make_error(Errc::invalid_state, "set_access: part of the range is not mapped");
  if (!s_->chunk_maps.whole(va, bytes))
    return make_error(Errc::invalid_state, "set_access: the range cuts a chunk's mapping");
  CUmemAccessDesc access;
  std::memset(&access, 0, sizeof access);
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = s_->ordinal;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  for (const State::Run& run : runs) {
    VALET_CU("cuMemSetAccess", s_->d->cuMemSetAccess(run.start, run.bytes, &access, 1));
    for (std::size_t i = run.first; i < run.first + run.bytes / kPage; ++i) run.r->slot_ref(i) |= 1u;
  }
  return {};
}

}  // namespace valet::cuda
