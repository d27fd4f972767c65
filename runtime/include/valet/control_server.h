// The control server: an opt-in Unix-domain socket through which `valetctl` inspects and steers a
// running heap (stats, compaction on demand, policy, page map, trace recording).
//
// Protocol (version 1): one JSON object per line each way.
//   request  {"v":1,"cmd":"stats"}            optional "id" (any scalar) is echoed in the reply
//   reply    {"v":1,"ok":true,"cmd":"stats",...}  or  {"v":1,"ok":false,"error":"..."}
// Commands: info, stats, compact, policy_get, policy_set, pages, trace_start, trace_stop
// (see runtime/src/control/commands.cpp for each one's fields).
//
// Security: the socket file is mode 0600 in a 0700 directory, the peer's uid is checked with
// SO_PEERCRED (other users are refused), and there is no TCP listener.
//
// Threading: one server thread polls every connection (non-blocking sockets), so a slow or silent
// client never blocks another; compactions that a client waits for run on a worker thread. Neither
// thread touches the allocation fast path: they only call Heap::stats()/compact(), the
// compaction control and the trace recorder.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "valet/compactor.h"
#include "valet/heap.h"
#include "valet/trace_recorder.h"

namespace valet {

inline constexpr int kControlProtocolVersion = 1;

// The access rule of the control socket: only the service's own user may steer it.
bool peer_allowed(uid_t peer, uid_t self);

// The discovery directory where services put their sockets (one `<pid>.sock` each):
// $XDG_RUNTIME_DIR/valet when XDG_RUNTIME_DIR is set, else /tmp/valet-<uid>.
std::string control_socket_dir();
// Creates `dir` (mode 0700) if it is missing, and checks that it is a directory owned by this user
// that no one else can enter (a pre-planted /tmp/valet-<uid> is refused).
Status prepare_control_socket_dir(const std::string& dir);
// The path a service listens on: `requested` when not empty, else $VALET_CONTROL_SOCKET when set
// and not empty (both used exactly as given), else <control_socket_dir()>/<pid>.sock.
std::string control_socket_path(const std::string& requested = {});

// What the control server needs from a compaction engine. The server holds it through this
// interface so that libvalet's control server does not depend on the Compactor's implementation
// (tests pass fakes; a service without a Compactor passes none and gets Heap::compact()).
class CompactionControl {
 public:
  virtual ~CompactionControl() = default;
  virtual Result<CompactionRecord> request(const CompactRequest& request, bool wait) = 0;
  virtual std::map<std::string, std::string> policy() const = 0;
  virtual std::vector<std::string> policy_keys() const = 0;
  // Applies every pair or none (the first invalid key or value refuses the whole set).
  virtual Status set_policy(const std::vector<std::pair<std::string, std::string>>& pairs) = 0;
  virtual Compactor::Counters counters() const = 0;
};

// CompactionControl over a valet::Compactor. Inline on purpose: only a program that makes one
// links against the Compactor.
class CompactorControl final : public CompactionControl {
 public:
  explicit CompactorControl(Compactor& compactor) : c_(compactor) {}
  Result<CompactionRecord> request(const CompactRequest& r, bool wait) override { return c_.request(r, wait); }
  std::map<std::string, std::string> policy() const override { return policy_values(c_.settings()); }
  std::vector<std::string> policy_keys() const override { return valet::policy_keys(); }
  Status set_policy(const std::vector<std::pair<std::string, std::string>>& pairs) override {
    PolicySettings s = c_.settings();
    for (const auto& [key, value] : pairs) VALET_TRY(set_policy_value(s, key, value));
    return c_.update(s);
  }
  Compactor::Counters counters() const override { return c_.counters(); }

 private:
  Compactor& c_;
};

struct ControlServerOptions {
  // See control_socket_path(): empty means $VALET_CONTROL_SOCKET, else the discovery directory.
  std::string socket_path;
  // Both must outlive the server (stop it first).
  std::shared_ptr<CompactionControl> compaction;  // none: `compact` runs Heap::compact()
  TraceRecorder* trace = nullptr;                  // none: trace_start is refused
  std::size_t max_request_bytes = std::size_t{64} << 10;
  // A client must complete each request within this long of connecting or of its last reply.
  std::chrono::milliseconds idle_timeout{5000};
  // Connections open at once. When all are taken, a new one closes the connection that has been
  // idle (no request in progress) the longest; only when none is idle is it refused.
  std::size_t max_clients = 64;
  // Where the server reports what it refuses (peers of other users, failed background cycles).
  // The library never writes to stdout; none: silent.
  std::function<void(const std::string&)> log;
};

class ControlServer {
 public:
  // Binds the socket (mode 0600; a stale socket left by a dead service is replaced, a live one is
  // refused) and starts the server thread. `heap` must outlive the server.
  static Result<std::unique_ptr<ControlServer>> start(Heap& heap, ControlServerOptions options = {});
  static Result<std::unique_ptr<ControlServer>> start(Heap& heap, Compactor& compactor,
                                                      ControlServerOptions options = {}) {
    options.compaction = std::make_shared<CompactorControl>(compactor);
    return start(heap, std::move(options));
  }
  ~ControlServer();  // stop()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Closes every connection, waits for a running compaction job, removes the socket file.
  // Idempotent.
  void stop();
  const std::string& socket_path() const;

  struct Counters {
    std::uint64_t connections = 0, requests = 0, errors = 0, refused_peers = 0, timeouts = 0;
    std::uint64_t evicted_idle = 0;  // idle connections closed to make room for new ones
  };
  Counters counters() const;

 private:
  struct Impl;
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace valet
