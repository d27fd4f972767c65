// Writing and checking test objects' patterns through the heap's own pins and the backend's
// pattern work (GPU kernels on CUDA, parallel host loops on the host backend).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "stress_support.h"
#include "valet/heap.h"

namespace valet::stress {

// Writes the object's whole pattern. With `stream_ordered`, the write is queued on `stream` under a
// stream pin that is released at once (the heap must keep the object in place until the stream
// passes the write: the caller does not wait); otherwise a host pin is held until the write
// completes.
Status fill_object(Heap& heap, Stream stream, const TrackedObject& o, bool stream_ordered);

// Pins the object and checks its first `bytes` (all when larger than the object) against `seed`,
// on `stream`. Returns the number of differing bytes; a pin that reports a size other than
// `expected_size` is reported as a mismatch of the whole object.
Result<std::uint64_t> count_mismatches(Heap& heap, Stream stream, Handle h, std::size_t expected_size,
                                       std::uint64_t seed, std::size_t bytes);

// Verifies the object fully; reports to `errors` (naming `context`) and counts the bytes checked.
// Returns false on any mismatch or failure.
bool verify_object(Heap& heap, Stream stream, const TrackedObject& o, const char* context, StressCounters& counters,
                   ErrorSink& errors);

// Verifies the whole object when it is at most 3 windows long, else three windows of `window`
// bytes: at the start, at a random 8-byte aligned offset, and at the end.
bool verify_windows(Heap& heap, Stream stream, const TrackedObject& o, std::size_t window, Rng& rng,
                    const char* context, StressCounters& counters, ErrorSink& errors);

// Verifies many objects with few backend calls (host pins on all of them, then batched checks);
// reports every object that differs. Returns the number of objects that failed.
std::size_t verify_objects(Heap& heap, Stream stream, std::span<const TrackedObject> objects, const char* context,
                           StressCounters& counters, ErrorSink& errors);

}  // namespace valet::stress
