// valetctl's command line beyond what CLI11 says by itself: readable range checks, and naming
// the unknown command a user typed (CLI11 only says that a subcommand is required).
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

namespace valetctl {

// Accepts a number in [lo, hi] (an integer when `integer`), and says so in words, with the bounds
// as people write them: number_in(0.05, 3600, "a number of seconds") refuses -1 with
// "--interval: must be a number of seconds in [0.05, 3600], not -1".
CLI::Validator number_in(double lo, double hi, const std::string& what, bool integer = false);

// When argv names a command that `app` (or the command group it names first) does not have:
// "unknown command 'frobnicate' (commands: list, stats, ...)"; when it names no command where
// one is required: "missing command (commands: ...)". Otherwise nothing.
std::optional<std::string> command_error(CLI::App& app, int argc, const char* const* argv);

}  // namespace valetctl
