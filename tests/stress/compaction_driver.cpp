#include "compaction_driver.h"

namespace valet::stress {

namespace {

// A budget that is unlimited a third of the time, else log-uniform between lo and hi.
std::uint64_t random_budget(Rng& rng, std::uint64_t lo, std::uint64_t hi) {
  if (chance(rng, 1.0 / 3)) return ~0ull;
  std::uniform_real_distribution<double> bits(std::log2(double(lo)), std::log2(double(hi)));
  return std::uint64_t(std::exp2(bits(rng)));
}

bool acceptable(Errc code, bool faults_armed) { return faults_armed && code == Errc::driver_error; }

}  // namespace

void drive_compaction_once(Heap& heap, Rng& rng, bool faults_armed, StressCounters& counters, ErrorSink& errors) {
  CompactRequest req;
  req.max_occupancy = std::uniform_real_distribution<double>(0.5, 0.95)(rng);
  req.max_bytes = random_budget(rng, 4096, std::uint64_t{512} << 20);
  req.max_pages = random_budget(rng, 1, 1024);
  // Meshing alone, evacuation alone, or both (the default).
  const int mix = std::uniform_int_distribution<int>(0, 3)(rng);
  req.mesh = mix != 1;
  req.evacuate = mix != 0;
  counters.add(counters.compact_calls);
  auto rec = heap.compact(req);
  if (!rec.ok()) {
    if (acceptable(rec.code(), faults_armed))
      counters.add(counters.fault_errors);
    else
      errors.report("compact", rec.error());
  } else if (rec->bytes_moved + rec->bytes_meshed > req.max_bytes || rec->pages_freed + rec->pages_meshed > req.max_pages ||
             (!req.mesh && rec->pages_meshed > 0) || (!req.evacuate && rec->objects_moved > 0)) {
    errors.report("compact exceeded its request: moved " + std::to_string(rec->bytes_moved) + " + meshed " +
                  std::to_string(rec->bytes_meshed) + " of " + std::to_string(req.max_bytes) + " bytes, freed " +
                  std::to_string(rec->pages_freed) + " + meshed " + std::to_string(rec->pages_meshed) + " of " +
                  std::to_string(req.max_pages) + " pages");
  }
  if (chance(rng, 0.05)) {
    auto st = heap.maintain();
    if (!st.ok()) {
      if (acceptable(st.code(), faults_armed) || st.code() == Errc::out_of_memory)
        counters.add(counters.fault_errors, st.code() == Errc::driver_error);
      else
        errors.report("maintain", st.error());
    }
  }
}

}  // namespace valet::stress
