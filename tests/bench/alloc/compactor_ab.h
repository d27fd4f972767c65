// valet-bench-alloc --compactor-ab: the allocation fast path with the background compactor on
// against off, on one heap in one process.
//
// Rounds of MS milliseconds (default 10 rounds of 100 ms per mode and size) alternate on, off,
// off, on, ... so that a drift in the machine's load falls on both alike; a round starts a
// Compactor (policy defaults) or not (as valet-replay --no-compact), then times groups of 16 pairs
// (each pair, and each group's mean per pair), each group followed by 16 untimed churn steps (free
// a random object of a background of 16384, allocate one of the current phase's size; see
// kPhaseSizes) that keep fragmenting the slab pages, so the compactor has cycles to run while the
// pairs are timed. Prints per mode and size the median and p99 of the pairs, the median of the
// group means, the ratios of the medians (on / off), the median over k of (k-th on round / k-th
// off round) of the rounds' median group means, the cycles the compactor ran and the pairs each
// mode timed. The heap's emergency compaction is on in both modes (no allocation fails here, so
// it never runs).
#pragma once

#include "valet/heap.h"

namespace valet::bench {

// Runs the comparison on `heap` and prints its table; the exit status of the run.
int compactor_ab(Heap& heap, int rounds, int round_ms);

}  // namespace valet::bench
