#include "valet/result.h"

namespace valet {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::out_of_memory: return "out_of_memory";
    case Errc::out_of_address_space: return "out_of_address_space";
    case Errc::invalid_handle: return "invalid_handle";
    case Errc::stale_handle: return "stale_handle";
    case Errc::foreign_handle: return "foreign_handle";
    case Errc::pinned: return "pinned";
    case Errc::shut_down: return "shut_down";
    case Errc::invalid_state: return "invalid_state";
    case Errc::not_found: return "not_found";
    case Errc::unsupported: return "unsupported";
    case Errc::driver_error: return "driver_error";
    case Errc::system_error: return "system_error";
    case Errc::data_mismatch: return "data_mismatch";
    case Errc::internal: return "internal";
  }
  return "unknown";
}

std::string Error::to_string() const { return std::string(errc_name(code)) + ": " + message; }

}  // namespace valet
