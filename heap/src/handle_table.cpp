#include "handle_table.h"

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
