// How a device's heap is made: the settings of valet_torch_configure() and the environment
// (VALET_TORCH_CAPACITY, VALET_TORCH_BACKEND, VALET_TORCH_POLICY, VALET_TORCH_CONTROL), parsed
// and checked. Every error names the variable and the value, so the one line PyTorch's user sees
// on stderr says what to fix.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "valet/compactor.h"
#include "valet/result.h"
#include "valet/runtime.h"

namespace valet::torch {

// A capacity: bytes, or a fraction of the device's total memory (exactly one is set), or neither
// (the heap's default: what the device has free).
struct Capacity {
  std::size_t bytes = 0;
  double fraction = 0;
};

// "8GiB", "4096" (bytes, valet::parse_size); a plain number in (0,1] is a fraction ("1" is the
// whole device, never one byte); "" or "0" is the default.
Result<Capacity> parse_capacity(std::string_view text);
// "key=value,key=value" with the keys of set_policy_value(); "" gives the defaults.
Result<PolicySettings> parse_policy(std::string_view text);
// VALET_TORCH_CONTROL: "" or "0" -> nullopt (no socket); "1" -> the default path; else the
// path. Device d > 0 gets "-dev<d>" before the path's ".sock" (or at its end), so that the
// heaps of one process never share a socket.
std::optional<std::string> control_socket_for(std::string_view text, int device);

// What valet_torch_configure() set: each one replaces its environment variable when present.
struct Overrides {
  std::optional<std::string> capacity;
  std::optional<std::string> policy;
};

// Every setting of one device's heap, checked.
struct DeviceSettings {
  BackendChoice backend = BackendChoice::automatic;
  Capacity capacity;
  PolicySettings policy;
  std::optional<std::string> control_socket;
};

// Reads the environment (and `o` over it) for `device`; the error names the variable at fault.
Result<DeviceSettings> resolve_settings(const Overrides& o, int device);

}  // namespace valet::torch
