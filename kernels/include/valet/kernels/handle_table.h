// Device-side handle resolution: kernels turn handles into addresses through a device copy of the
// heap's handle table. Usable from device code and host code (host tasks on the host backend).
//
// Safety comes from the host API that hands the table out (Heap::pin_table): while a table scope
// is held, and until the stream has passed its release, the heap moves no object, so an address
// read here is never stale and never points at a half-copied object. Handles allocated after the
// scope was taken are not in that scope's table (resolve returns nullptr).
#pragma once

#include <cstdint>

#include "valet/kernels/pattern.h"  // VALET_HOST_DEVICE

namespace valet::kernels {

// The same layout as valet::Handle (heap/include/valet/handle.h checks it).
struct DeviceHandle {
  std::uint32_t index;
  std::uint32_t generation;
  std::uint32_t heap;
};

struct DeviceHandleEntry {
  std::uint64_t address;     // 0 when no object lives at this index
  std::uint32_t generation;  // of the object living there
  std::uint32_t reserved;
  std::uint64_t size;
};

// What a kernel receives (by value, as a launch argument).
struct DeviceHandleTable {
  const DeviceHandleEntry* entries;
  std::uint32_t count;
  std::uint32_t heap;
};

// The object's address, or nullptr for a null, foreign, stale or newer-than-the-table handle.
VALET_HOST_DEVICE void* resolve(const DeviceHandleTable& t, DeviceHandle h) {
  if (h.generation == 0 || h.heap != t.heap || h.index >= t.count) return nullptr;
  const DeviceHandleEntry e = t.entries[h.index];
  if (e.generation != h.generation || e.address == 0) return nullptr;
  return reinterpret_cast<void*>(e.address);
}

VALET_HOST_DEVICE std::uint64_t resolved_size(const DeviceHandleTable& t, DeviceHandle h) {
  return resolve(t, h) ? t.entries[h.index].size : 0;
}

}  // namespace valet::kernels
