// A synthetic LLM-serving workload, written as a gpuheap-trace v1 (`valet-replay generate`).
//
// The model, one serving tick (a step line) at a time:
//   - Model weights (optional, --weights-fraction of the capacity): one tensor per projection of
//     each of 32 layers plus the embeddings, allocated before the first step and kept to the end.
//   - Requests arrive as a Poisson process. Each has a prompt length and an output length drawn
//     from log-normal distributions, and owns a KV cache with room for its prompt plus
//     --grow-every tokens. A request is admitted only if the memory it will need at its largest
//     still fits under --admit-fraction of the capacity (with room for one cache to be copied
//     while it grows), so that an allocator that never fragments never runs out; otherwise it is
//     turned away (a busy server sheds load).
//   - Each request also holds 1..--small-objects small objects (sampling state, token buffers,
//     logits rows); one of them is replaced now and then.
//   - Every step allocates 2 to 5 activation tensors sized by the tokens of the batch (one token
//     per running request, plus the whole prompt of each request admitted this step) and frees
//     them at the end of the step.
//   - Every running request generates one token per step. When its KV cache is full it is
//     reallocated --grow-every tokens larger: the trace format has no resize, so the larger
//     buffer is allocated before the old one is freed, as a copy-on-grow allocator would do.
//   - A finished request frees its cache and its small objects except one, which lingers for a
//     random 50..--linger steps (a results cache). With --phase-every, the sizes of the small
//     objects change every that many steps (another model, adapter or batch shape), so objects
//     of the old sizes linger among the new ones.
//   - Every --probe-every steps, after the step line, a probe asks for one object of
//     --probe-fraction of the memory then free (capacity minus live bytes): the request that a
//     fragmented heap refuses although enough memory is free in total. valet-replay counts the
//     probes that fail.
// At the end everything still live is freed. The same options give the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "trace_writer.h"
#include "valet/result.h"

namespace valet::replay {

struct WorkloadOptions {
  std::uint64_t seed = 1;
  std::uint64_t steps = 3000;
  std::size_t capacity = std::size_t{8} << 30;    // the memory the trace is written for
  double weights_fraction = 0;                    // of the capacity, held from start to end
  double admit_fraction = 0.7;                    // requests are admitted under this share
  std::uint64_t bytes_per_token = 32 * 1024;      // KV cache bytes per token
  double arrivals = 0.6;                          // mean requests arriving per step
  std::uint64_t prompt_median = 384;              // tokens
  std::uint64_t output_median = 192;              // tokens
  std::uint64_t max_prompt = 8192;                // tokens
  std::uint64_t max_output = 4096;                // tokens
  std::uint64_t grow_every = 16;                  // tokens between KV cache reallocations
  std::uint64_t small_objects = 6;                // most small objects per request
  std::uint64_t phase_every = 0;                  // steps between changes of the small sizes
  std::uint64_t linger = 800;                     // most steps a leftover small object lives
  std::uint64_t probe_every = 250;                // 0: no probes
  double probe_fraction = 0.5;                    // of the free memory
};

// What was written.
struct WorkloadSummary {
  std::uint64_t ops = 0;  // a, f, s and p lines
  std::uint64_t steps = 0;
  std::uint64_t probes = 0;
  std::uint64_t requests_admitted = 0;
  std::uint64_t requests_turned_away = 0;
  std::uint64_t peak_live_bytes = 0;
};

// Checks the options together (each one's range is checked by the command line too).
Status check_workload_options(const WorkloadOptions& options);

// The options as a `valet-replay generate` command line would give them (for the header).
std::string describe_workload_options(const WorkloadOptions& options);

// Writes the whole trace to `writer` (the caller finishes the writer and reports its errors).
Result<WorkloadSummary> generate_workload(const WorkloadOptions& options, TraceWriter& writer);

}  // namespace valet::replay
