#include "settings.h"

#include <cstdlib>
#include <string>

#include "valet/control_server.h"

namespace valet::torch {

namespace {

std::string env_or(const char* name, const std::optional<std::string>& override_value) {
  if (override_value) return *override_value;
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string trimmed(std::string_view s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t");
  return std::string(s.substr(first, last - first + 1));
}

// Prefixes an error's message with the setting it came from.
Error named(const char* name, std::string_view value, const Error& e) {
  return make_error(e.code, std::string(name) + "='" + std::string(value) + "': " + e.message);
}

}  // namespace

Result<Capacity> parse_capacity(std::string_view text) {
  const std::string t = trimmed(text);
  if (t.empty() || t == "0") return Capacity{};
  // A plain number (no suffix) of at most 1 is a fraction of the device.
  if (t.find_first_not_of("0123456789.") == std::string::npos) {
    char* end = nullptr;
    const double x = std::strtod(t.c_str(), &end);
    if (end && *end == '\0' && x > 0 && x <= 1) return Capacity{.bytes = 0, .fraction = x};
  }
  auto bytes = parse_size(t);
  if (!bytes.ok()) return bytes.error();
  if (*bytes == 0) return Capacity{};
  return Capacity{.bytes = *bytes, .fraction = 0};
}

Result<PolicySettings> parse_policy(std::string_view text) {
  PolicySettings s;
  std::string_view rest = text;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    const std::string item = trimmed(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string::npos)
      return make_error(Errc::invalid_argument, "'" + item + "' is not key=value");
    VALET_TRY(set_policy_value(s, trimmed(item.substr(0, eq)), trimmed(item.substr(eq + 1))));
  }
  return s;
}

std::optional<std::string> control_socket_for(std::string_view text, int device) {
  const std::string t = trimmed(text);
  if (t.empty() || t == "0") return std::nullopt;
  std::string path = control_socket_path(t == "1" ? std::string() : t);
  if (device == 0) return path;
  const std::string tag = "-dev" + std::to_string(device);
  const std::string ext = ".sock";
  if (path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
    return path.insert(path.size() - ext.size(), tag);
  return path + tag;
}

Result<DeviceSettings> resolve_settings(const Overrides& o, int device) {
  DeviceSettings d;
  const std::string backend = env_or("VALET_TORCH_BACKEND", std::nullopt);
  if (!backend.empty()) {
    auto choice = parse_backend_choice(trimmed(backend));
    if (!choice.ok()) return named("VALET_TORCH_BACKEND", backend, choice.error());
    d.backend = *choice;
  }
  const std::string capacity = env_or("VALET_TORCH_CAPACITY", o.capacity);
  auto cap = parse_capacity(capacity);
  if (!cap.ok()) return named(o.capacity ? "capacity" : "VALET_TORCH_CAPACITY", capacity, cap.error());
  d.capacity = *cap;
  const std::string policy = env_or("VALET_TORCH_POLICY", o.policy);
  auto pol = parse_policy(policy);
  if (!pol.ok()) return named(o.policy ? "policy" : "VALET_TORCH_POLICY", policy, pol.error());
  d.policy = *pol;
  d.control_socket = control_socket_for(env_or("VALET_TORCH_CONTROL", std::nullopt), device);
  return d;
}

}  // namespace valet::torch
