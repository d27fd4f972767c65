#include "handle_table.h"

#include <string>

namespace valet::detail {

HandleTable::HandleTable() : chunks_(new std::atomic<HandleEntry*>[kMaxChunks]) {
  for (std::size_t i = 0; i < kMaxChunks; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
}

HandleTable::~HandleTable() {
  for (std::size_t i = 0; i < kMaxChunks; ++i) delete[] chunks_[i].load(std::memory_order_relaxed);
}

bool HandleTable::acquire(std::uint32_t& index) {
  if (!free_.empty()) {
    // LIFO reuse keeps the table dense; generations keep reused indices safe.
    index = free_.back();
    free_.pop_back();
    return true;
  }
  const std::size_t c = high_water_ >> kChunkBits;
  if (c >= kMaxChunks) return false;
  if (!chunks_[c].load(std::memory_order_relaxed)) chunks_[c].store(new HandleEntry[kChunk], std::memory_order_release);
  index = high_water_++;
  // Index 0 of the table is never used: a zeroed Handle must never name an object.
  if (index == 0) index = high_water_++;
  return true;
}

}  // namespace valet::detail

namespace valet::detail {

namespace {
Error bad(const std::string& what) { return make_error(Errc::internal, "handle table: " + what); }
std::string s(std::uint64_t v) { return std::to_string(v); }
}  // namespace

Status HandleTable::validate(const std::vector<bool>& cached) const {
  if (std::uint64_t(high_water_) > kMaxChunks * kChunk) return bad("high water " + s(high_water_) + " past the table's end");
  const std::size_t chunks = (std::size_t(high_water_) + kChunk - 1) >> kChunkBits;
  for (std::size_t c = 0; c < kMaxChunks; ++c)
    if ((chunks_[c].load(std::memory_order_acquire) != nullptr) != (c < chunks))
      return bad("chunk " + s(c) + (c < chunks ? " is missing below" : " exists above") + " the high water " + s(high_water_));
  if (high_water_ > 0 && get(0)->state.load(std::memory_order_acquire) != 0) return bad("entry 0 is in use");
  std::vector<bool> listed(high_water_, false);
  for (std::uint32_t i : free_) {
    if (i == 0 || i >= high_water_) return bad("free index " + s(i) + " is not in [1, high water " + s(high_water_) + ")");
    if (listed[i]) return bad("free index " + s(i) + " is listed twice");
    if (i < cached.size() && cached[i]) return bad("free index " + s(i) + " is also held by a thread cache");
    listed[i] = true;
    const HandleEntry* e = get(i);
    const std::uint64_t st = e->state.load(std::memory_order_acquire);
    if (st & state::kLive) return bad("free index " + s(i) + " names a LIVE entry");
    if ((st & 0xffffffffu) != 0)
      return bad("free index " + s(i) + " has state flags or pins (state " + s(st & 0xffffffffu) + ")");
    if (!e->pending_unpins.empty()) return bad("free index " + s(i) + " still has pending stream unpins");
  }
  std::size_t live = 0, held = 0;
  for (std::uint32_t i = 1; i < high_water_; ++i) {
    const bool is_live = (get(i)->state.load(std::memory_order_acquire) & state::kLive) != 0;
    const bool is_cached = i < cached.size() && cached[i];
    if (is_live && is_cached) return bad("entry " + s(i) + " is LIVE and held by a thread cache");
    live += is_live;
    held += is_cached;
  }
  const std::size_t used = high_water_ > 0 ? high_water_ - 1 : 0;
  if (live + held + free_.size() != used)
    return bad(s(used - live - held - free_.size()) +
               " entries below the high water are neither LIVE, free nor cached (leaked indices)");
  return {};
}

}  // namespace valet::detail
