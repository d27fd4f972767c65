// valetctl's command line beyond what CLI11 says by itself: readable range checks, and naming
// the unknown command a user typed (CLI11 only says that a subcommand is required).
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "number_in.h"

namespace valetctl {

// The validator of numeric options, shared with valet-serve (runtime/tools/common/number_in.h).
using valet::cli::number_in;

// When argv names a command that `app` (or the command group it names first) does not have:
// "unknown command 'frobnicate' (commands: list, stats, ...)"; when it names no command where
// one is required: "missing command (commands: ...)". Otherwise nothing.
std::optional<std::string> command_error(CLI::App& app, int argc, const char* const* argv);

}  // namespace valetctl
