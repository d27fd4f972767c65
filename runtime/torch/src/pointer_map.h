// The pointers handed to PyTorch, and what each one is: a sharded hash map from address to
// {handle, requested size, rounded size}. PyTorch frees by raw pointer, so the lookup must be O(1)
// and must not serialise threads that free unrelated tensors: each shard has its own mutex, and
// the shard is chosen by a multiplicative hash of the address (addresses are 512-aligned, so
// their low bits carry nothing).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "valet/handle.h"

namespace valet::torch {

struct Allocation {
  Handle handle{};
  std::size_t requested = 0;  // the size PyTorch asked for (and passes back to free)
  std::size_t rounded = 0;    // what the heap holds for it: requested rounded up to 512
};

class PointerMap {
 public:
  enum class Take : std::uint8_t { taken, unknown, size_mismatch };

  // False (and nothing changed) if `ptr` is present already.
  bool insert(std::uintptr_t ptr, const Allocation& a) {
    Shard& s = shard(ptr);
    std::lock_guard lock(s.mutex);
    return s.map.emplace(ptr, a).second;
  }

  // Removes `ptr` when it is present with `requested` bytes; `out` receives its entry whenever it
  // is present (for messages), removed or not.
  Take take(std::uintptr_t ptr, std::size_t requested, Allocation& out) {
    Shard& s = shard(ptr);
    std::lock_guard lock(s.mutex);
    auto it = s.map.find(ptr);
    if (it == s.map.end()) return Take::unknown;
    out = it->second;
    if (it->second.requested != requested) return Take::size_mismatch;
    s.map.erase(it);
    return Take::taken;
  }

  std::optional<Allocation> find(std::uintptr_t ptr) const {
    const Shard& s = shard(ptr);
    std::lock_guard lock(s.mutex);
    auto it = s.map.find(ptr);
    if (it == s.map.end()) return std::nullopt;
    return it->second;
  }

  std::size_t size() const {
    std::size_t n = 0;
    for (const Shard& s : shards_) {
      std::lock_guard lock(s.mutex);
      n += s.map.size();
    }
    return n;
  }

 private:
  static constexpr unsigned kShardBits = 6;

  struct alignas(64) Shard {
    mutable std::mutex mutex;
    std::unordered_map<std::uintptr_t, Allocation> map;
  };

  static std::size_t index(std::uintptr_t ptr) {
    return std::size_t((std::uint64_t(ptr >> 9) * 0x9E3779B97F4A7C15ull) >> (64 - kShardBits));
  }
  Shard& shard(std::uintptr_t ptr) { return shards_[index(ptr)]; }
  const Shard& shard(std::uintptr_t ptr) const { return shards_[index(ptr)]; }

  std::array<Shard, std::size_t{1} << kShardBits> shards_;
};

}  // namespace valet::torch
