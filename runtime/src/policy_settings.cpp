// PolicySettings by key, for the control server and the CLI: names, values, validation.
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <functional>
#include <string>

#include "valet/compactor.h"

namespace valet {
namespace {

struct Field {
  const char* key;
  std::function<std::string(const PolicySettings&)> get;
  std::function<Status(PolicySettings&, const std::string&)> set;
};

Status bad(const std::string& key, const std::string& value, const char* want) {
  return make_error(Errc::invalid_argument, "policy " + key + "=" + value + ": expected " + want);
}

bool parse_u64(const std::string& v, std::uint64_t& out) {
  if (v.empty() || v[0] == '-') return false;
  char* end = nullptr;
  errno = 0;
  const unsigned long long x = std::strtoull(v.c_str(), &end, 10);
  if (errno || *end) return false;
  out = x;
  return true;
}

bool parse_double(const std::string& v, double& out) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end || !(x == x)) return false;
  out = x;
  return true;
}

// The shortest text that reads back as the same double ("0.1", not "0.100000"): what people
// write, and exact through set_policy_value's round trip.
std::string shortest(double x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

Field bool_field(const char* key, bool PolicySettings::*m) {
  return {key, [m](const PolicySettings& s) { return std::string(s.*m ? "true" : "false"); },
          [=](PolicySettings& s, const std::string& v) -> Status {
            if (v == "true" || v == "on" || v == "1") s.*m = true;
            else if (v == "false" || v == "off" || v == "0") s.*m = false;
            else return bad(key, v, "true or false");
            return {};
          }};
}

Field u64_field(const char* key, std::uint64_t PolicySettings::*m, std::uint64_t lo, std::uint64_t hi, const char* want) {
  return {key, [m](const PolicySettings& s) { return std::to_string(s.*m); },
          [=](PolicySettings& s, const std::string& v) -> Status {
            std::uint64_t x;
            if (!parse_u64(v, x) || x < lo || x > hi) return bad(key, v, want);
            s.*m = x;
            return {};
          }};
}

Field double_field(const char* key, double PolicySettings::*m, double lo, double hi, const char* want) {
  return {key, [m](const PolicySettings& s) { return shortest(s.*m); },
          [=](PolicySettings& s, const std::string& v) -> Status {
            double x;
            if (!parse_double(v, x) || x < lo || x > hi) return bad(key, v, want);
            s.*m = x;
            return {};
          }};
}

const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      {"background", [](const PolicySettings& s) { return std::string(s.background ? "true" : "false"); },
       [](PolicySettings& s, const std::string& v) -> Status {
         if (v == "true" || v == "on" || v == "1") s.background = true;
         else if (v == "false" || v == "off" || v == "0") s.background = false;
         else return bad("background", v, "true or false");
         return {};
       }},
      double_field("fragmentation_threshold", &PolicySettings::fragmentation_threshold, 0.0, 1.0, "a fraction in [0, 1]"),
      double_field("max_occupancy", &PolicySettings::max_occupancy, 0.01, 0.99, "a fraction in [0.01, 0.99]"),
      u64_field("min_free_pages", &PolicySettings::min_free_pages, 0, 1u << 30, "a page count"),
      u64_field("max_bytes_per_second", &PolicySettings::max_bytes_per_second, 1 << 20, std::uint64_t{1} << 44,
                "bytes per second in [1 MiB, 16 TiB]"),
      u64_field("max_pages_per_cycle", &PolicySettings::max_pages_per_cycle, 1, 1u << 30, "a page count >= 1"),
      u64_field("max_pause_us", &PolicySettings::max_pause_us, 10, 10'000'000, "microseconds in [10, 10000000]"),
      double_field("idle_allocs_per_second", &PolicySettings::idle_allocs_per_second, 0, 1e9, "a rate >= 0"),
      u64_field("interval_ms", &PolicySettings::interval_ms, 1, 60'000, "milliseconds in [1, 60000]"),
      u64_field("min_reclaim_pages", &PolicySettings::min_reclaim_pages, 1, 1u << 30, "a page count >= 1"),
      u64_field("tails_min_pages", &PolicySettings::tails_min_pages, 1, 1u << 30, "a page count >= 1"),
      double_field("tails_min_fraction", &PolicySettings::tails_min_fraction, 0.0, 1.0, "a fraction in [0, 1]"),
      u64_field("tails_interval_ms", &PolicySettings::tails_interval_ms, 0, 60'000, "milliseconds in [0, 60000]"),
      bool_field("mesh", &PolicySettings::mesh),
      bool_field("evacuate", &PolicySettings::evacuate),
  };
  return f;
}

}  // namespace

std::vector<std::string> policy_keys() {
  std::vector<std::string> k;
  for (const auto& f : fields()) k.push_back(f.key);
  return k;
}

std::map<std::string, std::string> policy_values(const PolicySettings& s) {
  std::map<std::string, std::string> m;
  for (const auto& f : fields()) m[f.key] = f.get(s);
  return m;
}

Status set_policy_value(PolicySettings& s, const std::string& key, const std::string& value) {
  for (const auto& f : fields())
    if (key == f.key) return f.set(s, value);
  std::string valid;
  for (const auto& f : fields()) valid += (valid.empty() ? "" : ", ") + std::string(f.key);
  return make_error(Errc::invalid_argument, "unknown policy key '" + key + "' (valid keys: " + valid + ")");
}

}  // namespace valet
