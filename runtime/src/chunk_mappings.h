// Where chunks (physical allocations of more than one page, VmmDoor::create_chunk) are mapped:
// the driver maps, unmaps and grants access to a chunk only as a whole, so both backends refuse a
// range that cuts one of these mappings. Mappings of one page are not listed (any page-aligned
// range covers them whole or not at all). Not thread-safe: the backends hold their locks.
#pragma once

#include <cstddef>
#include <iterator>
#include <map>

#include "valet/types.h"

namespace valet {

class ChunkMappings {
 public:
  void add(DevicePtr start, std::size_t bytes) { starts_.emplace(start, bytes); }
  bool starts_at(DevicePtr va) const { return starts_.count(va) != 0; }
  // True when no listed mapping lies partly inside [va, va + bytes).
  bool whole(DevicePtr va, std::size_t bytes) const {
    const DevicePtr end = va + bytes;
    auto it = starts_.lower_bound(va);
    if (it != starts_.begin()) {
      auto before = std::prev(it);
      if (before->first + before->second > va) return false;
    }
    for (; it != starts_.end() && it->first < end; ++it)
      if (it->first + it->second > end) return false;
    return true;
  }
  // Forgets the mappings that start inside [va, va + bytes) (after an unmap of that range).
  void forget(DevicePtr va, std::size_t bytes) {
    starts_.erase(starts_.lower_bound(va), starts_.lower_bound(va + bytes));
  }

 private:
  std::map<DevicePtr, std::size_t> starts_;  // start -> bytes
};

}  // namespace valet
