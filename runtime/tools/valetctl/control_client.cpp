#include "control_client.h"

#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "valet/control_server.h"

namespace valetctl {

using valet::Errc;
using valet::make_error;

namespace {

// Replies can be large (a page map of an 80 GB device), but not unbounded.
constexpr std::size_t kMaxReplyBytes = std::size_t{256} << 20;

std::string errno_text(const char* call) { return std::string(call) + ": " + std::strerror(errno); }

int remaining_ms(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
  return int(std::max<std::int64_t>(0, left));
}

}  // namespace

Result<ControlClient> ControlClient::connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return make_error(Errc::invalid_argument, "socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(Errc::system_error, errno_text("socket"));
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    auto e = make_error(Errc::system_error, "cannot connect to " + path + ": " + std::strerror(errno));
    ::close(fd);
    return e;
  }
  return ControlClient(fd, path);
}

ControlClient::~ControlClient() {
  if (fd_ >= 0) ::close(fd_);
}

Result<nlohmann::json> ControlClient::call(nlohmann::json request, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  request["v"] = valet::kControlProtocolVersion;
  const std::string line = request.dump() + "\n";
  for (std::size_t sent = 0; sent < line.size();) {
    const ssize_t n = ::send(fd_, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(Errc::system_error, "sending to " + path_ + ": " + std::strerror(errno));
    sent += std::size_t(n);
  }
  for (;;) {
    if (const auto nl = pending_.find('\n'); nl != std::string::npos) {
      std::string reply = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      try {
        return nlohmann::json::parse(reply);
      } catch (const nlohmann::json::parse_error& e) {
        return make_error(Errc::invalid_state, std::string("the service sent a reply that is not JSON: ") + e.what());
      }
    }
    if (pending_.size() > kMaxReplyBytes) return make_error(Errc::invalid_state, "the service's reply is too long");
    pollfd p{fd_, POLLIN, 0};
    const int ready = ::poll(&p, 1, remaining_ms(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return make_error(Errc::system_error, errno_text("poll"));
    if (ready == 0)
      return make_error(Errc::system_error, "no reply from " + path_ + " within " + std::to_string(timeout.count()) + " ms");
    char buf[64 * 1024];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(Errc::system_error, "reading from " + path_ + ": " + std::strerror(errno));
    if (n == 0) return make_error(Errc::system_error, "the service closed the connection without replying");
    pending_.append(buf, std::size_t(n));
  }
}

std::vector<Service> discover_services(std::vector<std::string>* stale) {
  std::vector<Service> services;
  const std::string dir = valet::control_socket_dir();
  DIR* d = ::opendir(dir.c_str());
  if (!d) return services;
  std::vector<std::string> sockets;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".sock") == 0) sockets.push_back(dir + "/" + name);
  }
  ::closedir(d);
  std::sort(sockets.begin(), sockets.end());
  for (const auto& path : sockets) {
    auto client = ControlClient::connect(path);
    if (!client.ok()) {
      if (stale) stale->push_back(path);
      continue;
    }
    auto info = client->call({{"cmd", "info"}}, std::chrono::milliseconds(2000));
    services.push_back({path, info.ok() ? *info : nlohmann::json{{"ok", false}, {"error", info.error().message}}});
  }
  return services;
}

Result<std::string> choose_socket(const std::string& option) {
  if (!option.empty()) return option;
  if (const char* env = std::getenv("VALET_CONTROL_SOCKET"); env && *env) return std::string(env);
  std::vector<std::string> stale;
  auto services = discover_services(&stale);
  if (services.size() == 1) return services.front().socket;
  const std::string dir = valet::control_socket_dir();
  if (services.empty())
    return make_error(Errc::not_found, "no running valet service found in " + dir +
                                           (stale.empty() ? "" : " (" + std::to_string(stale.size()) + " stale sockets)") +
                                           "; start one (valet-serve) or pass -s SOCKET");
  std::string list;
  for (const auto& s : services) {
    const auto pid = s.info.contains("pid") ? s.info["pid"].dump() : std::string("?");
    list += (list.empty() ? "" : ", ") + s.socket + " (pid " + pid + ")";
  }
  return make_error(Errc::invalid_argument,
                    std::to_string(services.size()) + " valet services are running: " + list + "; pick one with -s SOCKET");
}

}  // namespace valetctl
