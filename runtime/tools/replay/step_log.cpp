// The per-step CSV (see step_log.h).
#include "step_log.h"

namespace valet::replay {

bool StepLog::open(const std::string& path) {
  out_.open(path);
  if (!out_) return false;
  out_ << "line,step,live_bytes,heap_live_bytes,footprint_bytes,mapped_bytes,reserve_bytes,slab_pages,large_pages,"
          "sparse_slab_pages,cycles,step_cycle_moved_bytes,step_cycle_pages_freed,step_cycle_ns,stats_ns,meshed_pages,"
          "shared_tails\n";
  return true;
}

void StepLog::row(std::uint32_t line, std::uint64_t live_bytes, const HeapStats& s, std::uint64_t stats_ns,
                  const CompactionRecord* cycle) {
  std::uint64_t sparse = 0;  // slab pages under 80% occupancy
  for (std::size_t bin = 0; bin < 8; ++bin) sparse += s.occupancy_histogram[bin];
  out_ << line << ',' << step_++ << ',' << live_bytes << ',' << s.live_bytes << ',' << s.footprint_bytes << ','
       << s.mapped_bytes << ',' << s.reserve_bytes << ',' << s.pages.slab << ',' << s.pages.large << ',' << sparse
       << ',' << s.compaction.cycles << ',' << (cycle ? cycle->bytes_moved : 0) << ','
       << (cycle ? cycle->pages_freed : 0) << ',' << (cycle ? cycle->duration_ns : 0) << ',' << stats_ns << ','
       << s.pages.meshed << ',' << s.pages.shared_tails << '\n';
}

}  // namespace valet::replay
