// What makes objects move during the stress run: synchronous compaction cycles with random
// limits, far more often than a service would run them. Kept in one function so that the
// background Compactor (runtime/include/valet/compactor.h) can be driven from here later, e.g. by
// changing its policy at random instead of calling compact() directly.
#pragma once

#include "stress_support.h"
#include "valet/heap.h"

namespace valet::stress {

// One compaction cycle with max_occupancy in [0.5, 0.95] and random byte/page budgets (sometimes
// unlimited), now and then followed by maintain(). Every failure must be a clean one: with
// `faults_armed`, driver_error is counted as a surfaced fault; anything else is an error.
void drive_compaction_once(Heap& heap, Rng& rng, bool faults_armed, StressCounters& counters, ErrorSink& errors);

}  // namespace valet::stress
