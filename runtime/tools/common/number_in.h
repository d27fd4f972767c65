// Command-line helpers shared by the tools and examples built on the runtime (valetctl,
// valet-serve): numbers written as people write them, and a CLI11 validator that says what it
// wants in words. Header-only, so each program compiles it with its own CLI11.
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>

namespace valet::cli {

// The shortest text that reads back as the same double, as the policy settings write their values
// (runtime/src/policy_settings.cpp), but without an exponent for everyday magnitudes: "0.05",
// "1000000", as people write bounds (and scripts read them); "1e+20" beyond.
inline std::string shortest(double x) {
  char buf[64];
  const double m = std::fabs(x);
  const bool everyday = m == 0 || (m >= 1e-6 && m < 1e15);
  const auto r = std::to_chars(buf, buf + sizeof buf, x, everyday ? std::chars_format::fixed : std::chars_format::general);
  return std::string(buf, r.ptr);
}

// Accepts a number in [lo, hi] (an integer when `integer`), and says so in words, with the bounds
// as people write them: number_in(0.05, 3600, "a number of seconds") refuses -1 with
// "--interval: must be a number of seconds in [0.05, 3600], not -1".
inline CLI::Validator number_in(double lo, double hi, const std::string& what, bool integer = false) {
  const std::string range = what + " in [" + shortest(lo) + ", " + shortest(hi) + "]";
  return CLI::Validator(
      [lo, hi, integer, range](std::string& input) -> std::string {
        const char* begin = input.c_str();
        char* end = nullptr;
        const double v = std::strtod(begin, &end);
        const bool parsed = end != begin && *end == '\0';
        if (!parsed || !(v >= lo && v <= hi) || (integer && v != std::floor(v)))
          return "must be " + range + ", not " + input;
        return {};
      },
      range);
}

}  // namespace valet::cli
