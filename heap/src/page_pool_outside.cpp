// PagePool: memory outside the arena (page_pool.h, "OutsideRange").
#include "page_pool.h"

namespace valet::detail {

Status PagePool::reserve_outside(OutsideRange& r, std::size_t bytes) {
  auto va = backend_.reserve(bytes);
  if (!va.ok()) return va.error();
  r.va = *va;
  r.reserved = bytes;
  return {};
}

Status PagePool::grow_outside(OutsideRange& r) {
  if (r.mapped_bytes() + kPageBytes > r.reserved)
    return make_error(Errc::out_of_address_space, "the device handle table's range is full");
  const DevicePtr at = r.va + r.mapped_bytes();
  auto page = backend_.create_page();
  if (!page.ok()) return page.error();
  if (auto st = backend_.map(at, *page); !st.ok()) {
    (void)backend_.release_page(*page);
    return st;
  }
  if (auto st = backend_.set_access(at, kPageBytes); !st.ok()) {
    (void)backend_.unmap(at, kPageBytes);
    (void)backend_.release_page(*page);
    return st;
  }
  r.pages.push_back(*page);
  return {};
}

Status PagePool::write_outside(const OutsideRange& r, const void* src, std::size_t bytes) {
  if (bytes > r.mapped_bytes()) return make_error(Errc::invalid_argument, "write beyond the mapped part of an outside range");
  return backend_.write(r.va, src, bytes);
}

Status PagePool::release_outside(OutsideRange& r) {
  Status first;
  auto note = [&](Status st) {
    if (!st.ok() && first.ok()) first = st;
  };
  if (!r.pages.empty()) {
    note(backend_.unmap(r.va, r.mapped_bytes()));
  }
  for (PhysicalPage p : r.pages) {
    note(backend_.release_page(p));
  }
  r.pages.clear();
  if (r.va) note(backend_.unreserve(r.va, r.reserved));
  r.va = 0;
  r.reserved = 0;
  return first;
}

}  // namespace valet::detail
