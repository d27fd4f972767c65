// `valet-replay generate`: the command line of the workload generator (workload.h).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "workload.h"

namespace valet::replay {

struct GenerateArguments {
  WorkloadOptions workload;
  std::string capacity = "8GiB";
  std::string output;
};

// Adds the `generate` subcommand to `app`, filling `args` when it is parsed.
CLI::App* add_generate_command(CLI::App& app, GenerateArguments& args);

// Writes the trace; the exit status: 0, or 2 with a message on stderr.
int run_generate(GenerateArguments& args);

}  // namespace valet::replay
