// Socket paths, the discovery directory and the listening socket of the control server.
#include "unix_socket.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "valet/control_server.h"

namespace valet {

bool peer_allowed(uid_t peer, uid_t self) { return peer == self; }

std::string control_socket_dir() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg && *xdg) return std::string(xdg) + "/valet";
  return "/tmp/valet-" + std::to_string(::getuid());
}

Status prepare_control_socket_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return make_error(Errc::system_error, control::errno_text("mkdir") + " (" + dir + ")");
  struct stat st {};
  // lstat: a symlink planted at the directory's name is refused, not followed.
  if (::lstat(dir.c_str(), &st) != 0)
    return make_error(Errc::system_error, control::errno_text("lstat") + " (" + dir + ")");
  if (!S_ISDIR(st.st_mode))
    return make_error(Errc::invalid_state, "socket directory " + dir + " is not a directory");
  if (st.st_uid != ::geteuid())
    return make_error(Errc::invalid_state, "socket directory " + dir + " belongs to uid " +
                                               std::to_string(st.st_uid) + ", not to this user");
  if (st.st_mode & 077)
    return make_error(Errc::invalid_state, "socket directory " + dir + " is open to other users (mode " +
                                               std::to_string(st.st_mode & 0777) + " decimal); expected 0700");
  return {};
}

std::string control_socket_path(const std::string& requested) {
  if (!requested.empty()) return requested;
  const char* env = std::getenv("VALET_CONTROL_SOCKET");
  if (env && *env) return env;
  return control_socket_dir() + "/" + std::to_string(::getpid()) + ".sock";
}

}  // namespace valet

namespace valet::control {

std::string errno_text(const char* call) { return std::string(call) + ": " + std::strerror(errno); }

Status set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return make_error(Errc::system_error, errno_text("fcntl"));
  return {};
}

namespace {

Result<sockaddr_un> address_of(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty()) return make_error(Errc::invalid_argument, "empty socket path");
  if (path.size() >= sizeof addr.sun_path)
    return make_error(Errc::invalid_argument, "socket path too long (" + std::to_string(path.size()) + " bytes, at most " +
                                                  std::to_string(sizeof addr.sun_path - 1) + "): " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// True when a process accepts connections on the socket at `addr`.
bool someone_listens(const sockaddr_un& addr) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool live = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return live;
}

}  // namespace

Result<Listener> listen_unix(const std::string& path) {
  auto addr = address_of(path);
  if (!addr.ok()) return addr.error();
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return make_error(Errc::invalid_state, path + " exists and is not a socket; not replacing it");
    if (someone_listens(*addr)) return make_error(Errc::invalid_state, "another service is listening on " + path);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return make_error(Errc::system_error, errno_text("unlink") + " (stale socket " + path + ")");
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return make_error(Errc::system_error, errno_text("socket"));
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0) {
    auto e = make_error(Errc::system_error, errno_text("bind") + " (" + path + ")");
    ::close(fd);
    return e;
  }
  // bind() made the file with the umask's mode; narrow it before anyone can be accepted. The
  // directory (0700 in the discovery case) and the peer-uid check guard the short window.
  Listener l{fd, path, 0, 0};
  if (::chmod(path.c_str(), 0600) != 0 || ::lstat(path.c_str(), &st) != 0) {
    auto e = make_error(Errc::system_error, errno_text("chmod") + " (" + path + ")");
    ::close(fd);
    ::unlink(path.c_str());
    return e;
  }
  l.dev = st.st_dev;
  l.ino = st.st_ino;
  if (::listen(fd, 64) != 0) {
    auto e = make_error(Errc::system_error, errno_text("listen"));
    close_listener(l);
    return e;
  }
  return l;
}

void close_listener(Listener& l) {
  if (l.fd < 0) return;
  ::close(l.fd);
  l.fd = -1;
  struct stat st {};
  if (::lstat(l.path.c_str(), &st) == 0 && st.st_dev == l.dev && st.st_ino == l.ino) ::unlink(l.path.c_str());
}

Result<uid_t> peer_uid(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return make_error(Errc::system_error, errno_text("getsockopt(SO_PEERCRED)"));
  return cred.uid;
}

}  // namespace valet::control
