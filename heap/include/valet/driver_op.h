// The operations of the VMM door (valet/backend.h's VmmDoor): one value per call that reaches the
// driver, the key by which adaptors fail, delay and count them. name(), granularity() and
// capabilities() are fixed properties of a backend, not driver calls, and have no value here.
#pragma once

#include <cstddef>
#include <cstdint>

namespace valet {

enum class DriverOp : std::uint8_t {
  memory_info,
  reserve,
  unreserve,
  create_page,
  release_page,
  map,
  unmap,
  set_access,
  create_stream,
  destroy_stream,
  synchronize_stream,
  create_event,
  destroy_event,
  record_event,
  query_event,
  synchronize_event,
  copy,
  write,
  count  // not an operation: the number of them
};

inline constexpr std::size_t kDriverOpCount = std::size_t(DriverOp::count);

// The operation's name as the door spells it ("create_page"); "?" for a value out of range.
constexpr const char* driver_op_name(DriverOp op) {
  switch (op) {
    case DriverOp::memory_info: return "memory_info";
    case DriverOp::reserve: return "reserve";
    case DriverOp::unreserve: return "unreserve";
    case DriverOp::create_page: return "create_page";
    case DriverOp::release_page: return "release_page";
    case DriverOp::map: return "map";
    case DriverOp::unmap: return "unmap";
    case DriverOp::set_access: return "set_access";
    case DriverOp::create_stream: return "create_stream";
    case DriverOp::destroy_stream: return "destroy_stream";
    case DriverOp::synchronize_stream: return "synchronize_stream";
    case DriverOp::create_event: return "create_event";
    case DriverOp::destroy_event: return "destroy_event";
    case DriverOp::record_event: return "record_event";
    case DriverOp::query_event: return "query_event";
    case DriverOp::synchronize_event: return "synchronize_event";
    case DriverOp::copy: return "copy";
    case DriverOp::write: return "write";
    case DriverOp::count: break;
  }
  return "?";
}

}  // namespace valet
