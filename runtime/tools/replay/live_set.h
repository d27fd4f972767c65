// The live objects, shared between the replayer (which adds and removes them) and the pinner
// threads (which pick one at random to pin). One mutex guards it: the replayer holds it for an
// O(1) insert or swap-remove, a pinner only to copy one entry out, never while it pins, so a pin
// that waits on a move never blocks the replay.
//
// A pinner may copy out a handle that the replayer frees a moment later; its pin then fails with
// stale_handle (or, if it got in first, the replayer's free sees `pinned` and retries). Both are
// the normal races of a service whose kernels touch objects that the host frees.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <random>
#include <vector>

#include "valet/handle.h"

namespace valet::replay {

struct LiveEntry {
  Handle handle;
  std::uint64_t id = 0;  // the trace's id (the signature's seed)
  std::size_t bytes = 0;
};

class LiveSet {
 public:
  // `objects`: how many object numbers the trace uses ([0, objects)).
  explicit LiveSet(std::uint32_t objects) : position_(objects, kAbsent) {}

  void insert(std::uint32_t object, const LiveEntry& entry) {
    std::lock_guard lock(mu_);
    position_[object] = std::uint32_t(entries_.size());
    entries_.push_back(entry);
    owners_.push_back(object);
  }

  void erase(std::uint32_t object) {
    std::lock_guard lock(mu_);
    const std::uint32_t at = position_[object];
    if (at == kAbsent) return;
    const std::uint32_t last = std::uint32_t(entries_.size() - 1);
    entries_[at] = entries_[last];
    owners_[at] = owners_[last];
    position_[owners_[at]] = at;
    entries_.pop_back();
    owners_.pop_back();
    position_[object] = kAbsent;
  }

  // A uniformly chosen live object, or nothing when none is live.
  std::optional<LiveEntry> pick(std::mt19937_64& rng) const {
    std::lock_guard lock(mu_);
    if (entries_.empty()) return std::nullopt;
    return entries_[std::uniform_int_distribution<std::size_t>(0, entries_.size() - 1)(rng)];
  }

 private:
  static constexpr std::uint32_t kAbsent = ~0u;
  mutable std::mutex mu_;
  std::vector<LiveEntry> entries_;
  std::vector<std::uint32_t> owners_;    // object number of each entry
  std::vector<std::uint32_t> position_;  // object number -> index in entries_, or kAbsent
};

}  // namespace valet::replay
