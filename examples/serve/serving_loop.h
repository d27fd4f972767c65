// The workload of valet-serve: an LLM serving loop on the heap, the model of
// shared/workloads/gen_trace.py run live. Requests arrive at random; each owns a KV cache that
// grows with resize() as tokens are generated, and a few small objects (sampling state, logits
// rows) of a size mix that shifts now and then while old objects linger; every step allocates and
// frees temporaries that follow the batch; now and then a probe asks for one large object of a
// fraction of the free memory. Sizes scale with the heap's capacity.
//
// Every object gets a pattern when written and is checked later (object_access.h), so a move or
// resize that loses data is reported. Allocation failures are part of serving: a request that
// does not fit is rejected, one whose KV cache cannot grow ends early.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <random>
#include <vector>

#include "object_access.h"
#include "traced_heap.h"

namespace serve {

struct LoopCounters {
  std::uint64_t steps = 0;
  std::uint64_t requests_admitted = 0, requests_finished = 0, requests_rejected = 0, requests_cut = 0;
  std::uint64_t probes = 0, probes_failed = 0;
  std::uint64_t checks = 0, corrupt_bytes = 0;
  std::uint64_t errors = 0;  // unexpected heap errors (anything but out_of_memory)
  std::size_t running = 0;   // requests in flight now
};

class ServingLoop {
 public:
  ServingLoop(TracedHeap& heap, ObjectAccess& access, std::size_t capacity_bytes, std::uint64_t seed);
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

  TracedHeap& heap_;
  ObjectAccess& access_;
  std::size_t capacity_;
  std::size_t bytes_per_token_;
  double temp_scale_;
  std::mt19937_64 rng_;
  std::size_t live_bytes_ = 0;  // bytes the loop holds (its own admission control, as in gen_trace.py)
  std::vector<Request> requests_;
  std::deque<Lingering> lingering_;
  LoopCounters c_;
};

}  // namespace serve
