// The service's allocation wrapper: every allocate, free, resize, step boundary and probe of
// valet-serve goes through here, so that the control server's `trace_start` can record them (the
// heap itself has no operation hook). Objects get service ids, the trace recorder's names.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "valet/control_server.h"
#include "valet/heap.h"

namespace serve {

struct Object {
  valet::Handle handle;
  std::uint64_t id = 0;
  std::size_t bytes = 0;
};

class TracedHeap {
 public:
  TracedHeap(valet::Heap& heap, valet::TraceRecorder& trace) : heap_(heap), trace_(trace) {}

  valet::Heap& heap() { return heap_; }

  // Only operations that succeed are recorded: a trace has no way to say "this failed".
  valet::Result<Object> allocate(std::size_t bytes);
  valet::Status free(Object& object);
  valet::Status resize(Object& object, std::size_t bytes);
  void step() { trace_.on_step(); }
  // Allocates one object of `bytes` and frees it at once; true when it fit. Recorded as `p`.
  bool probe(std::size_t bytes);

 private:
  valet::Heap& heap_;
  valet::TraceRecorder& trace_;
  std::atomic<std::uint64_t> next_id_{1};
};

}  // namespace serve
