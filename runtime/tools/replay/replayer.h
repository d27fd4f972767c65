// The replayer core: runs a parsed trace against a heap and measures what report.h describes.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "pinners.h"
#include "report.h"
#include "signature.h"
#include "trace.h"
#include "valet/compactor.h"
#include "valet/heap.h"

namespace valet::replay {

struct ReplayOptions {
  // The background compactor running on the heap, or null for none. The replayer calls its
  // safepoint() at every step line (a step boundary is the serving loop's known-good moment),
  // and stops it once the trace's lines are replayed, before it frees what the trace left live
  // and validates the heap, so that its counters are final. The heap's own emergency compaction
  // is the heap's Config::compact_on_oom, set by whoever made the heap.
  Compactor* compactor = nullptr;
  bool verify = false;
  SignaturePath signature_path = SignaturePath::host_address;
  PinnerOptions pinners;  // threads = 0: no pinners
  // Where to write one CSV row per step line (what the heap holds and why), or empty for none.
  std::string step_log;
  // Every object (probes too) a fixed object of its size rounded up to 512 bytes, as
  // libvalet_torch.so allocates PyTorch's tensors.
  bool fixed = false;
  // Frees ordered on this stream (Heap::free(h, stream)), or plain frees.
  std::optional<Stream> free_stream;
  // After each step line (and its safepoint) the replaying thread sleeps this long: the GPU
  // work of a serving tick, during which a service's thread makes no allocator call and the
  // heap's background threads find the driver idle. Zero: the ops back to back, the worst case
  // for the allocator.
  std::chrono::microseconds think_per_step{0};
};

// Replays every op `trace` yields on `heap`, then checks and frees what the trace left live and
// validates the heap. `checked`: what check_trace() found in the same file (object slots, ops).
// The report's failed() says whether anything went wrong; its trace_error, that the trace could
// not be read again as it was checked (the replay then stops early).
ReplayReport replay(Heap& heap, TraceReader& trace, const TraceSummary& checked, const ReplayOptions& options);

}  // namespace valet::replay
