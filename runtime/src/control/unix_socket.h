// The Unix-domain socket plumbing of the control server: a listening socket that replaces only
// stale sockets, the peer's uid, and removal of exactly the socket file we made.
#pragma once

#include <sys/types.h>

#include <string>

#include "valet/result.h"

namespace valet::control {

// A bound, listening, non-blocking socket at `path` (mode 0600). A socket file already there is
// replaced only when nothing listens on it (a dead service's); anything else there is refused.
struct Listener {
  int fd = -1;
  std::string path;
  dev_t dev = 0;  // identity of the socket file we made, so stop() never removes a successor's
  ino_t ino = 0;
};

Result<Listener> listen_unix(const std::string& path);
// Closes the socket and removes its file if it is still the one listen_unix() made.
void close_listener(Listener& listener);

// The uid of the process at the other end of a connected Unix socket (SO_PEERCRED).
Result<uid_t> peer_uid(int fd);

Status set_nonblocking(int fd);

// errno as text, for messages: "bind: Permission denied".
std::string errno_text(const char* call);

}  // namespace valet::control
