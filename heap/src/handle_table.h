// The handle table: one entry per object, indexed by Handle::index. Entries live in chunks that
// never move, so a pin can read its entry without the heap lock while other threads add chunks.
// An entry's `state` word and its transitions are the move claims (move_claims.h).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "invariants.h"
#include "move_claims.h"
#include "valet/backend.h"

namespace valet::detail {

enum class ObjectKind : std::uint8_t { slab, large, region };

// Where an object lives. Slab: slot `index` of the slab page at virtual slot `page`. Large:
// `pages` whole page slots from `page`. Region (the copying region, HeapCore::Region): its
// offset there, in units of kRegionAlign, in `index` (`page` and `pages` 0: it holds no slot).
struct Location {
  ObjectKind kind = ObjectKind::slab;
  std::uint32_t page = 0;
  std::uint32_t index = 0;  // slab slot index; region: offset / kRegionAlign
  std::uint32_t pages = 0;  // large: page count
};
// The copying region's alignment of every object (a PyTorch tensor's, too).
inline constexpr std::uint64_t kRegionAlign = 512;

struct alignas(64) HandleEntry {
  std::atomic<std::uint64_t> state{0};
  std::atomic<DevicePtr> address{0};
  std::atomic<DevicePtr> alias{0};  // read by pins while ALIASED
  // The object's bytes: written under the heap lock, or by a thread cache's fast allocation
  // without it (the entry is that thread's then, but a mover whose claim a pin cancelled may still
  // read it: its pair is dropped, yet the read must not race), so a relaxed atomic. Pins read it
  // while holding a pin (which keeps it constant).
  std::size_t size() const { return size_bytes.load(std::memory_order_relaxed); }
  void set_size(std::size_t bytes) { size_bytes.store(bytes, std::memory_order_relaxed); }
  std::atomic<std::size_t> size_bytes{0};
  // Fields below are written under the heap lock, or (a pending object made without it:
  // HeapCore::allocate_unlocked_miss) before the state word's release store that makes the
  // entry live, by the only thread that holds its index.
  Location loc;
  // A fixed object (Heap::allocate_fixed): no move claim is granted for it except meshing's at a
  // safe point, which keeps its address.
  bool fixed = false;
  std::vector<Event> pending_unpins;  // events of stream-ordered unpins not yet known complete
  // Set (before its pin drops) when a stream-ordered unpin is recorded, cleared when the object
  // is freed: a free on a thread cache's fast path (thread_caches.h), which must not read
  // `pending_unpins` without the heap lock, takes the locked path while it is set.
  std::atomic<bool> unpins_recorded{false};
};

class HandleTable {
 public:
  static constexpr std::size_t kChunkBits = 12;
  static constexpr std::size_t kChunk = std::size_t{1} << kChunkBits;
  static constexpr std::size_t kMaxChunks = std::size_t{1} << 14;  // 64 M objects

  HandleTable();
  ~HandleTable();

  // The entry of `index`, or nullptr past the end. Lock-free.
  HandleEntry* get(std::uint32_t index) const {
    const std::size_t c = index >> kChunkBits;
    if (c >= kMaxChunks) return nullptr;
    HandleEntry* chunk = chunks_[c].load(std::memory_order_acquire);
    return chunk ? &chunk[index & (kChunk - 1)] : nullptr;
  }

  // Precondition: heap lock held. An unused index (its entry not LIVE), or nullopt when full.
  bool acquire(std::uint32_t& index);
  // Precondition: heap lock held; the entry is no longer LIVE.
  void release(std::uint32_t index) {
    VALET_ASSERT(index != 0 && index < high_water_ && !(get(index)->state.load(std::memory_order_relaxed) & state::kLive));
    VALET_EXPENSIVE_ASSERT(std::find(free_.begin(), free_.end(), index) == free_.end());
    free_.push_back(index);
  }

  // Indices handed out so far (live or free): entries [0, high_water()) exist.
  std::uint32_t high_water() const { return high_water_; }
  std::size_t free_count() const { return free_.size(); }

  // Checks the table's own invariants (precondition: heap lock held); an error names the first
  // broken one. The chunks below the high water exist and none above it; entry 0 is never used;
  // every free index is below the high water, listed once, and its entry is settled (not LIVE,
  // no flags, no pins, no pending unpins); every entry below the high water is LIVE, free or
  // held by a thread cache (`cached[i]`, sized to the high water or empty when none is).
  Status validate(const std::vector<bool>& cached = {}) const;

 private:
  friend struct HandleTableTestPeer;  // tests: corrupts the free list and the high water

  std::unique_ptr<std::atomic<HandleEntry*>[]> chunks_;
  std::vector<std::uint32_t> free_;
  std::uint32_t high_water_ = 0;
};

}  // namespace valet::detail
