// The client side of the control protocol (valet/control_server.h): connecting to a service's
// socket, one request/reply exchange, and finding running services in the discovery directory.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "valet/result.h"

namespace valetctl {

using valet::Result;
using valet::Status;

class ControlClient {
 public:
  // Connects to the socket at `path` (system_error naming connect's errno when nothing listens).
  static Result<ControlClient> connect(const std::string& path);
  ControlClient(ControlClient&& other) noexcept : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}
  ControlClient& operator=(ControlClient&&) = delete;
  ControlClient(const ControlClient&) = delete;
  ~ControlClient();

  // Sends `request` (the protocol version is added) and waits up to `timeout` for the reply line.
  // A reply with "ok": false is returned as it is (the caller reports its "error").
  Result<nlohmann::json> call(nlohmann::json request, std::chrono::milliseconds timeout);
  const std::string& path() const { return path_; }

 private:
  ControlClient(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
  std::string pending_;  // bytes read past the last reply line
};

struct Service {
  std::string socket;
  nlohmann::json info;  // the reply to `info`
};

// Services answering in the discovery directory; sockets whose connect() fails are stale and
// listed in `stale` (when given) instead.
std::vector<Service> discover_services(std::vector<std::string>* stale = nullptr);

// The socket to talk to: `option` (-s) when given, else $VALET_CONTROL_SOCKET, else the only
// service in the discovery directory (none or several: an error that says what to do).
Result<std::string> choose_socket(const std::string& option);

}  // namespace valetctl
