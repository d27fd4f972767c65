// Helpers of the control server's unit tests: a small host heap and a raw socket client.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>

#include "valet/runtime.h"

namespace valet::test {

inline std::unique_ptr<valet::Heap> small_heap() {
  valet::Config config;
  config.capacity = std::size_t{64} << 20;
  return valet::open_heap(valet::BackendOptions{.choice = valet::BackendChoice::host}, config).value();
}

inline int connect_to(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline void send_all(int fd, const std::string& data) {
  for (std::size_t sent = 0; sent < data.size();) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += std::size_t(n);
  }
}

// One reply line (empty on timeout or EOF).
inline std::string read_line(int fd, int timeout_ms = 5000) {
  std::string line;
  char c;
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return line;
    if (::recv(fd, &c, 1, 0) != 1) return line;
    if (c == '\n') return line;
    line += c;
  }
}

}  // namespace valet::test
