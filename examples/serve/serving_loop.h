// The workload of valet-serve: an LLM serving loop on the heap, the model of the trace generator
// (`valet-replay generate`, runtime/tools/replay/workload.h) run live. Requests arrive at random; each owns a KV cache that
// grows with resize() as tokens are generated, and a few small objects (sampling state, logits
// rows) of a size mix that shifts now and then while old objects linger; every step allocates and
// frees temporaries that follow the batch; now and then a probe asks for one large object of a
// fraction of the free memory. Sizes scale with the heap's capacity.
//
// Every object gets a pattern when written and is checked later (object_access.h), so a move or
// resize that loses data is reported; every few steps a handle sweep (handle_sweep.h) checks every
// object the loop holds, read through its handle. Allocation failures are part of serving: a request that
// does not fit is rejected, one whose KV cache cannot grow ends early.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <random>
#include <vector>

#include "handle_sweep.h"
#include "object_access.h"
#include "traced_heap.h"

namespace serve {

struct LoopCounters {
  std::uint64_t steps = 0;
  std::uint64_t requests_admitted = 0, requests_finished = 0, requests_rejected = 0, requests_cut = 0;
  std::uint64_t probes = 0, probes_failed = 0;
  std::uint64_t checks = 0, corrupt_bytes = 0;
  // Handle sweeps: objects resolved through their handles and checked, the bytes read, the bytes
  // that differ from the pattern, handles that did not resolve; sweeps skipped for lack of memory
  // for their argument object.
  std::uint64_t sweeps = 0, sweeps_skipped = 0;
  std::uint64_t swept_objects = 0, swept_bytes = 0, swept_corrupt_bytes = 0, swept_unresolved = 0;
  std::uint64_t errors = 0;  // unexpected heap errors (anything but out_of_memory)
  std::size_t running = 0;   // requests in flight now
};

class ServingLoop {
 public:
  // `sweep` (may be null: no sweeps) runs every `sweep_every` steps (0: never).
  ServingLoop(TracedHeap& heap, ObjectAccess& access, HandleSweep* sweep, std::uint64_t sweep_every,
              std::size_t capacity_bytes, std::uint64_t seed);
  ~ServingLoop();  // free_all()

  // One serving tick: admissions, temporaries, one decoded token per request, completions.
  void step();
  // Frees every object the loop holds.
  void free_all();
  const LoopCounters& counters() const { return c_; }

 private:
  struct Tracked {
    Object obj;
    std::uint64_t seed = 0;
    std::size_t pattern_bytes = 0;  // the size the pattern was written for
  };
  struct Request {
    Tracked kv;
    std::size_t kv_tokens = 0, tokens = 0, target = 0;
    std::vector<Tracked> smalls;
  };
  struct Lingering {
    std::uint64_t until_step;
    Tracked obj;
  };

  bool allocate(std::size_t bytes, Tracked& out);
  void release(Tracked& t);
  bool grow(Tracked& t, std::size_t bytes);
  void write(Tracked& t);
  void check(const Tracked& t, std::size_t limit);
  void note_error(const valet::Error& e);
  void admit();
  std::size_t small_size();
  std::size_t lognormal(double median, std::size_t cap);
  void finish(Request& r);
  // Every object held now (the step's temporaries included), through its handle.
  void sweep(const std::vector<Tracked>& temps);

  TracedHeap& heap_;
  ObjectAccess& access_;
  HandleSweep* sweep_;
  std::uint64_t sweep_every_;
  std::vector<CheckItem> sweep_items_;
  std::size_t capacity_;
  std::size_t bytes_per_token_;
  double temp_scale_;
  std::mt19937_64 rng_;
  std::size_t live_bytes_ = 0;  // bytes the loop holds (its own admission control, as in the trace generator)
  std::vector<Request> requests_;
  std::deque<Lingering> lingering_;
  LoopCounters c_;
};

}  // namespace serve
