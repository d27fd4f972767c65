// `valet-replay generate` (see generate_command.h).
#include "generate_command.h"

#include <cstdio>
#include <iostream>

#include "valet/runtime.h"

namespace valet::replay {

namespace {

constexpr const char* kDescription =
    "Writes a synthetic LLM-serving workload as a gpuheap-trace v1 (gzip-compressed when FILE ends in\n"
    ".gz), for valet-replay to replay: optional model weights held throughout; requests arriving at\n"
    "random, with log-normal prompt and output lengths, each owning a KV cache reallocated every\n"
    "--grow-every tokens and a few small objects; activations sized by the batch at every step;\n"
    "probes of one large object every --probe-every steps. The same options write the same bytes.\n"
    "docs/cli.md describes the model in full.";

constexpr int kExitUsage = 2;

}  // namespace

CLI::App* add_generate_command(CLI::App& app, GenerateArguments& args) {
  CLI::App* cmd = app.add_subcommand("generate", kDescription);
  WorkloadOptions& w = args.workload;
  cmd->add_option("-o,--output", args.output, "The trace to write ('-': standard output, uncompressed)")->required();
  cmd->add_option("--seed", w.seed, "Seed of every random choice")->capture_default_str();
  cmd->add_option("--steps", w.steps, "Serving steps (step lines)")->check(CLI::Range(1ull, 100000000ull))->capture_default_str();
  cmd->add_option("--capacity", args.capacity,
                  "Memory the trace is written for (bytes, or a size such as 8GiB); the header's capacity=")
      ->capture_default_str();
  cmd->add_option("--weights-fraction", w.weights_fraction,
                  "Share of the capacity taken by model weights, allocated first and held to the end")
      ->check(CLI::Range(0.0, 0.95))->capture_default_str();
  cmd->add_option("--admit-fraction", w.admit_fraction,
                  "Requests are admitted while what they need at their largest fits under this share of the capacity")
      ->check(CLI::Range(0.05, 0.95))->capture_default_str();
  cmd->add_option("--bytes-per-token", w.bytes_per_token, "KV cache bytes per token")
      ->check(CLI::Range(1ull, 1ull << 30))->capture_default_str();
  cmd->add_option("--arrivals", w.arrivals, "Mean requests arriving per step (Poisson)")
      ->check(CLI::Range(0.001, 64.0))->capture_default_str();
  cmd->add_option("--prompt-median", w.prompt_median, "Median prompt length in tokens (log-normal)")
      ->check(CLI::Range(1ull, 1ull << 20))->capture_default_str();
  cmd->add_option("--output-median", w.output_median, "Median output length in tokens (log-normal)")
      ->check(CLI::Range(1ull, 1ull << 20))->capture_default_str();
  cmd->add_option("--max-prompt", w.max_prompt, "Longest prompt in tokens")
      ->check(CLI::Range(8ull, 1ull << 24))->capture_default_str();
  cmd->add_option("--max-output", w.max_output, "Longest output in tokens")
      ->check(CLI::Range(8ull, 1ull << 24))->capture_default_str();
  cmd->add_option("--grow-every", w.grow_every, "Tokens between reallocations of a KV cache")
      ->check(CLI::Range(1ull, 1ull << 20))->capture_default_str();
  cmd->add_option("--small-objects", w.small_objects, "Most small objects per request (1 to N, uniform)")
      ->check(CLI::Range(1ull, 256ull))->capture_default_str();
  cmd->add_option("--phase-every", w.phase_every,
                  "Steps between changes of the small objects' sizes (0: one mix throughout)")
      ->capture_default_str();
  cmd->add_option("--linger", w.linger, "Most steps a finished request's leftover small object stays live (at least 50)")
      ->capture_default_str();
  cmd->add_option("--probe-every", w.probe_every, "Steps between probes (0: no probes)")->capture_default_str();
  cmd->add_option("--probe-fraction", w.probe_fraction, "A probe's size, as a share of the memory free at that step")
      ->check(CLI::Range(0.001, 1.0))->capture_default_str();
  return cmd;
}

int run_generate(GenerateArguments& args) {
  auto capacity = parse_size(args.capacity);
  if (!capacity.ok()) {
    std::cerr << "valet-replay generate: --capacity: " << capacity.error().message << "\n";
    return kExitUsage;
  }
  args.workload.capacity = *capacity;
  if (auto st = check_workload_options(args.workload); !st.ok()) {
    std::cerr << "valet-replay generate: " << st.error().message << "\n";
    return kExitUsage;
  }
  TraceWriter writer(args.output);
  auto summary = generate_workload(args.workload, writer);
  const Status closed = writer.finish();
  if (!summary.ok() || !closed.ok()) {
    std::cerr << "valet-replay generate: " << (summary.ok() ? closed.error().message : summary.error().message) << "\n";
    return kExitUsage;
  }
  if (args.output != "-")
    std::printf("valet-replay generate: %s: %llu ops, %llu steps, %llu probes, %llu requests (%llu turned away), "
                "peak live %.1f MiB of %.1f MiB\n",
                args.output.c_str(), (unsigned long long)summary->ops, (unsigned long long)summary->steps,
                (unsigned long long)summary->probes, (unsigned long long)summary->requests_admitted,
                (unsigned long long)summary->requests_turned_away, double(summary->peak_live_bytes) / (1 << 20),
                double(args.workload.capacity) / (1 << 20));
  return 0;
}

}  // namespace valet::replay
