// The commands of the control protocol: one request line in, one reply (or a job that makes the
// reply on the worker thread) out. Independent of sockets, so the protocol can be tested alone.
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "valet/control_server.h"

namespace valet::control {

// What the commands act on.
struct ServiceContext {
  Heap& heap;
  CompactionControl* compaction = nullptr;
  TraceRecorder* trace = nullptr;
  std::string socket_path;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  // Reports a failure no client will see (a background compaction's).
  std::function<void(const std::string&)> log;
};

// The server's response to one request line.
struct Outcome {
  nlohmann::json reply;                 // sent at once when not null
  std::function<nlohmann::json()> job;  // runs on the worker; its result is the reply when
                                        // `reply` is null, and is dropped otherwise
};

Outcome handle_request(std::string_view line, const ServiceContext& ctx);

// {"v":1,"ok":false,"error":message}
nlohmann::json error_reply(const std::string& message);
// The reply as one line, newline included. Never throws: invalid UTF-8 is replaced.
std::string encode_line(const nlohmann::json& reply);

// The commands this server knows, for error messages and `info`.
const std::vector<std::string>& command_names();

}  // namespace valet::control
