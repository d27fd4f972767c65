// ControlServer: one thread polls the listening socket, every connection and a wake-up eventfd.
// Sockets are non-blocking and each connection has its own buffers and deadline, so a client that
// says nothing, sends garbage or never reads its replies costs the others nothing.
//
// Per connection, requests are answered in order: while one waits for a job (a compaction run on
// the worker) or while a reply is still being written, the connection is not read, which also
// bounds its buffers (backpressure instead of unbounded queues).
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <list>
#include <thread>

#include "commands.h"
#include "job_worker.h"
#include "unix_socket.h"
#include "valet/control_server.h"

namespace valet {

using control::encode_line;
using control::error_reply;
using Clock = std::chrono::steady_clock;

// Named, not anonymous: ControlServer::Impl, a class with linkage, holds a list of them.
namespace control_connection {

struct Connection {
  int fd = -1;
  std::uint64_t id = 0;
  std::string in;                // bytes received, not yet a complete line
  std::string out;               // reply bytes not yet written
  std::size_t discarded = 0;     // >0: inside an oversized line, dropping bytes until its newline
  bool eof = false;              // the client closed its side
  bool busy = false;             // a job owes this connection its reply
  bool closing = false;          // close once `out` is written and no job is pending
  bool dead = false;             // close now
  std::uint64_t born = 0;        // the server round that accepted it
  Clock::time_point deadline;    // a complete request must arrive by then (when not busy)

  // Waiting for its next request with nothing of one received: may give its slot to a newcomer.
  bool idle() const { return !busy && !closing && !dead && out.empty() && in.empty() && discarded == 0; }
};

}  // namespace control_connection
using control_connection::Connection;

struct ControlServer::Impl {
  Heap& heap;
  ControlServerOptions options;
  control::ServiceContext ctx;
  control::Listener listener;
  int wake_fd = -1;
  std::atomic<bool> stopping{false};
  std::list<Connection> connections;
  std::uint64_t next_id = 1;
  std::uint64_t round = 0;  // poll rounds run
  std::unique_ptr<control::JobWorker> worker;
  std::thread thread;
  std::mutex stop_mu;
  bool stopped = false;

  std::atomic<std::uint64_t> n_connections{0}, n_requests{0}, n_errors{0}, n_refused{0}, n_timeouts{0},
      n_evicted{0};

  Impl(Heap& h, ControlServerOptions o)
      : heap(h), options(std::move(o)), ctx{.heap = h,
            .compaction = options.compaction.get(),
            .trace = options.trace,
            .socket_path = {},
            .started = Clock::now(),
            .log = options.log} {}

  void log(const std::string& message) const {
    if (options.log) options.log(message);
  }
  void wake() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd, &one, sizeof one);
  }

  void run();
  void accept_all();
  bool make_room();
  void read_from(Connection& c);
  void process_lines(Connection& c);
  void answer(Connection& c, const std::string& line);
  void reply(Connection& c, const nlohmann::json& r);
  void flush(Connection& c);
  void deliver_jobs();
  void expire(Clock::time_point now);
  int poll_timeout_ms(Clock::time_point now) const;
  void close(Connection& c) {
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
  }
};

void ControlServer::Impl::reply(Connection& c, const nlohmann::json& r) {
  if (r.is_object() && r.contains("ok") && r["ok"] == false) ++n_errors;
  c.out += encode_line(r);
  c.deadline = Clock::now() + options.idle_timeout;
  flush(c);
}

void ControlServer::Impl::flush(Connection& c) {
  while (!c.out.empty() && !c.dead) {
    const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out.erase(0, std::size_t(n));
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;  // POLLOUT will tell us when to go on
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      c.dead = true;  // EPIPE, ECONNRESET: the client is gone
    }
  }
}

void ControlServer::Impl::answer(Connection& c, const std::string& line) {
  ++n_requests;
  control::Outcome outcome = control::handle_request(line, ctx);
  if (!outcome.job) return reply(c, outcome.reply);
  const bool owes_reply = outcome.reply.is_null();
  const bool queued = worker->submit(c.id, owes_reply, std::move(outcome.job));
  if (owes_reply) {
    if (queued) c.busy = true;
    else reply(c, error_reply("the service is stopping"));
  } else {
    // A background job identical to one still queued was merged into it.
    if (!queued) outcome.reply["coalesced"] = true;
    reply(c, outcome.reply);
  }
}

void ControlServer::Impl::process_lines(Connection& c) {
  const std::size_t max = options.max_request_bytes;
  while (!c.busy && c.out.empty() && !c.dead && !c.closing) {
    const std::size_t nl = c.in.find('\n');
    if (nl == std::string::npos) {
      if (c.in.size() > max) {
        // Too long to be a request: drop it as it comes, answer once its newline arrives.
        c.discarded = c.in.size();
        c.in.clear();
      } else if (c.eof && !c.in.empty()) {
        reply(c, error_reply("truncated request: the connection closed after " + std::to_string(c.in.size()) +
                             " bytes without a newline"));
        c.in.clear();
      }
      break;
    }
    std::string line = c.in.substr(0, nl);
    c.in.erase(0, nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > max) {
      reply(c, error_reply("request too long: " + std::to_string(line.size()) + " bytes (limit " + std::to_string(max) + ")"));
    } else if (line.find_first_not_of(" \t") == std::string::npos) {
      reply(c, error_reply("empty request: send one JSON object per line, e.g. {\"v\":1,\"cmd\":\"stats\"}"));
    } else {
      answer(c, line);
    }
  }
  if (c.eof && !c.busy && c.in.empty() && c.discarded == 0) c.closing = true;
}

void ControlServer::Impl::read_from(Connection& c) {
  char buf[64 * 1024];
  // A bounded number of reads per round keeps one fast sender from starving the others.
  for (int round = 0; round < 4 && !c.eof && !c.dead; ++round) {
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) {
      c.eof = true;
      if (c.discarded) {
        reply(c, error_reply("request too long: " + std::to_string(c.discarded) + " bytes and no newline (limit " +
                             std::to_string(options.max_request_bytes) + ")"));
        c.discarded = 0;
      }
      break;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
      break;
    }
    std::string_view chunk(buf, std::size_t(n));
    if (c.discarded) {
      const std::size_t nl = chunk.find('\n');
      if (nl == std::string_view::npos) {
        c.discarded += chunk.size();
        continue;
      }
      reply(c, error_reply("request too long: " + std::to_string(c.discarded + nl) + " bytes (limit " +
                           std::to_string(options.max_request_bytes) + ")"));
      c.discarded = 0;
      chunk.remove_prefix(nl + 1);
    }
    c.in.append(chunk);
    // Stop reading once a full request (or an overflowing one) is buffered: answer it first.
    if (c.in.find('\n') != std::string::npos || c.in.size() > options.max_request_bytes) break;
  }
  process_lines(c);
}

void ControlServer::Impl::accept_all() {
  for (;;) {
    const int fd = ::accept4(listener.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        // Out of descriptors or memory: the listener stays readable, so pause instead of spinning.
        log("control: " + control::errno_text("accept"));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      return;
    }
    ++n_connections;
    Connection c;
    c.fd = fd;
    c.id = next_id++;
    c.deadline = Clock::now() + options.idle_timeout;
    auto uid = control::peer_uid(fd);
    if (!uid.ok() || !peer_allowed(*uid, ::geteuid())) {
      ++n_refused;
      const std::string who = uid.ok() ? "uid " + std::to_string(*uid) : uid.error().message;
      log("control: refused a connection from " + who + " (only uid " + std::to_string(::geteuid()) + " may connect)");
      reply(c, error_reply("permission denied: only the service's own user may use this socket"));
      c.closing = true;
    } else if (!make_room()) {
      reply(c, error_reply("too many clients (" + std::to_string(options.max_clients) +
                           ", none of them idle); try again later"));
      c.closing = true;
    }
    c.born = round;
    connections.push_back(std::move(c));
  }
}

// True when a new connection may be served: fewer than max_clients are open, or the one idle the
// longest was closed to make room. Idle connections cost nothing to drop (no request of theirs is
// lost), and dropping them keeps a crowd of silent clients from locking valetctl out. A
// connection accepted in this round has not been read yet, so it is not taken for idle.
bool ControlServer::Impl::make_room() {
  std::size_t open = 0;
  Connection* oldest = nullptr;
  for (auto& c : connections) {
    if (c.closing || c.dead) continue;
    ++open;
    if (c.idle() && c.born < round && (!oldest || c.deadline < oldest->deadline)) oldest = &c;
  }
  if (open < options.max_clients) return true;
  if (!oldest) return false;
  ++n_evicted;
  reply(*oldest, error_reply("closed: idle while the service was at its limit of " +
                             std::to_string(options.max_clients) + " clients; reconnect to send a request"));
  oldest->closing = true;
  return true;
}

void ControlServer::Impl::deliver_jobs() {
  for (auto& [id, r] : worker->take_done()) {
    for (auto& c : connections) {
      if (c.id != id) continue;
      c.busy = false;
      if (!c.dead) reply(c, r);
      process_lines(c);  // requests that arrived meanwhile
      break;
    }
  }
}

void ControlServer::Impl::expire(Clock::time_point now) {
  for (auto& c : connections) {
    if (c.busy || c.dead || now < c.deadline) continue;
    if (!c.out.empty() || c.closing) {
      c.dead = true;  // it does not read its replies: nothing more to say
      continue;
    }
    ++n_timeouts;
    reply(c, error_reply("timed out: no complete request within " +
                         std::to_string(options.idle_timeout.count()) + " ms"));
    c.closing = true;
    c.in.clear();
    c.discarded = 0;
  }
}

int ControlServer::Impl::poll_timeout_ms(Clock::time_point now) const {
  auto soonest = Clock::time_point::max();
  for (const auto& c : connections)
    if (!c.busy && !c.dead) soonest = std::min(soonest, c.deadline);
  if (soonest == Clock::time_point::max()) return -1;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(soonest - now).count();
  return int(std::clamp<std::int64_t>(ms, 0, 60'000));
}

void ControlServer::Impl::run() {
  std::vector<pollfd> fds;
  std::vector<Connection*> polled;
  while (!stopping.load()) {
    ++round;
    fds.clear();
    polled.clear();
    fds.push_back({wake_fd, POLLIN, 0});
    fds.push_back({listener.fd, POLLIN, 0});
    for (auto& c : connections) {
      if (c.dead) continue;
      short events = 0;
      if (!c.busy && c.out.empty() && !c.eof && !c.closing) events |= POLLIN;
      if (!c.out.empty()) events |= POLLOUT;
      fds.push_back({c.fd, events, 0});
      polled.push_back(&c);
    }
    const int n = ::poll(fds.data(), fds.size(), poll_timeout_ms(Clock::now()));
    if (n < 0 && errno != EINTR) {
      log("control: poll failed: " + control::errno_text("poll"));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (stopping.load()) break;
    if (n > 0 && (fds[0].revents & POLLIN)) {
      std::uint64_t count;
      [[maybe_unused]] auto r = ::read(wake_fd, &count, sizeof count);
      deliver_jobs();
    }
    for (std::size_t i = 0; n > 0 && i < polled.size(); ++i) {
      Connection& c = *polled[i];
      const short ev = fds[i + 2].revents, asked = fds[i + 2].events;
      if (ev & POLLNVAL) {
        c.dead = true;
        continue;
      }
      if (ev & POLLOUT) {
        flush(c);
        if (c.out.empty()) process_lines(c);
      }
      if (asked & POLLIN) {
        if (ev & (POLLIN | POLLHUP | POLLERR)) read_from(c);
      } else if (ev & (POLLHUP | POLLERR)) {
        // Hung up while we were not reading (waiting for a job, or done): no one to answer.
        // (HUP is reported even when not asked for; leaving it would spin.)
        c.dead = true;
      }
    }
    expire(Clock::now());
    // Connections that are done go before new ones are counted against max_clients.
    for (auto it = connections.begin(); it != connections.end();) {
      if (it->dead) close(*it);  // a job still owed to it keeps the record until delivered
      const bool done = it->dead || (it->closing && it->out.empty());
      if (done && !it->busy) {
        close(*it);
        it = connections.erase(it);
      } else {
        ++it;
      }
    }
    if (n > 0 && (fds[1].revents & POLLIN)) accept_all();
  }
  for (auto& c : connections) close(c);
  connections.clear();
}

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ControlServer>> ControlServer::start(Heap& heap, ControlServerOptions options) {
  if (options.max_request_bytes == 0 || options.max_clients == 0 || options.idle_timeout.count() <= 0)
    return make_error(Errc::invalid_argument, "control server: limits must be positive");
  auto impl = std::make_unique<Impl>(heap, std::move(options));
  const std::string path = control_socket_path(impl->options.socket_path);
  // A socket in the discovery directory needs that directory, private to this user.
  const std::string dir = control_socket_dir();
  if (path.size() > dir.size() && path.compare(0, dir.size() + 1, dir + "/") == 0 &&
      path.find('/', dir.size() + 1) == std::string::npos)
    VALET_TRY(prepare_control_socket_dir(dir));
  auto listener = control::listen_unix(path);
  if (!listener.ok()) return listener.error();
  impl->listener = *listener;
  impl->ctx.socket_path = path;
  impl->wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (impl->wake_fd < 0) {
    auto e = make_error(Errc::system_error, control::errno_text("eventfd"));
    control::close_listener(impl->listener);
    return e;
  }
  Impl* raw = impl.get();
  impl->worker = std::make_unique<control::JobWorker>([raw] { raw->wake(); });
  impl->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

ControlServer::~ControlServer() { stop(); }

void ControlServer::stop() {
  std::lock_guard lock(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->stopping.store(true);
  impl_->wake();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->worker->stop();  // a running compaction finishes; its reply has no one to go to
  control::close_listener(impl_->listener);
  ::close(impl_->wake_fd);
  impl_->wake_fd = -1;
}

const std::string& ControlServer::socket_path() const { return impl_->ctx.socket_path; }

ControlServer::Counters ControlServer::counters() const {
  return {impl_->n_connections.load(), impl_->n_requests.load(), impl_->n_errors.load(), impl_->n_refused.load(),
          impl_->n_timeouts.load(), impl_->n_evicted.load()};
}

}  // namespace valet
