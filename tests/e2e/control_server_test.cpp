// The control server in-process: serving, cleaning up, client slots, stale sockets, discovery.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "control_test_util.h"
#include "test_files.h"
#include "valet/control_server.h"
#include "valet/runtime.h"

namespace {

using valet::test::connect_to;
using valet::test::read_line;
using valet::test::send_all;
using valet::test::small_heap;
using valet::test::slurp;
using valet::test::TempDir;

using nlohmann::json;
namespace fs = std::filesystem;

TEST(ControlServer, ServesAndCleansUp) {
  TempDir tmp;
  auto heap = small_heap();
  const std::string path = (tmp.path / "s.sock").string();
  valet::ControlServerOptions o;
  o.socket_path = path;
  o.idle_timeout = std::chrono::milliseconds(300);
  o.max_request_bytes = 1024;
  auto server = valet::ControlServer::start(*heap, o);
  ASSERT_TRUE(server.ok()) << server.error().to_string();
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // A second server on the same path is refused while the first listens.
  EXPECT_EQ(valet::ControlServer::start(*heap, o).code(), valet::Errc::invalid_state);

  const int silent = connect_to(path);
  const int c = connect_to(path);
  ASSERT_GE(c, 0);
  send_all(c, "{\"v\":1,\"cmd\":\"info\"}\n");
  json info = json::parse(read_line(c));
  EXPECT_TRUE(info["ok"].get<bool>());
  // An oversized line is answered once its newline arrives; the connection lives on.
  send_all(c, std::string(5000, 'x') + "\n{\"v\":1,\"cmd\":\"stats\"}\n");
  EXPECT_NE(read_line(c).find("request too long"), std::string::npos);
  EXPECT_TRUE(json::parse(read_line(c))["ok"].get<bool>());
  // The silent client times out; the other was served meanwhile.
  EXPECT_NE(read_line(silent, 3000).find("timed out"), std::string::npos);
  EXPECT_EQ(read_line(silent, 3000), "");  // then EOF
  ::close(silent);
  ::close(c);

  // Another user is refused (needs root to become one): first by the socket's mode, and where the
  // mode was opened up (a careless chmod), by the peer-uid check.
  if (::geteuid() == 0) {
    auto as_nobody = [&] {
      const pid_t child = ::fork();
      if (child == 0) {
        if (::setuid(65534) != 0) ::_exit(3);
        const int fd = connect_to(path);
        if (fd < 0) ::_exit(4);  // refused by the file's mode
        send_all(fd, "{\"v\":1,\"cmd\":\"stats\"}\n");
        ::_exit(read_line(fd).find("permission denied") != std::string::npos ? 5 : 6);
      }
      int status = 0;
      ::waitpid(child, &status, 0);
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    };
    EXPECT_EQ(as_nobody(), 4);
    ::chmod(tmp.path.c_str(), 0755);
    ::chmod(path.c_str(), 0666);
    EXPECT_EQ(as_nobody(), 5);
    EXPECT_EQ((*server)->counters().refused_peers, 1u);
  }
  (*server)->stop();
  EXPECT_NE(::lstat(path.c_str(), &st), 0);  // the socket file is gone
}

TEST(ControlServer, ANewClientTakesTheSlotOfTheLongestIdle) {
  TempDir tmp;
  auto heap = small_heap();
  valet::ControlServerOptions o;
  o.socket_path = (tmp.path / "s.sock").string();
  o.max_clients = 4;
  o.idle_timeout = std::chrono::milliseconds(20'000);  // no timeout frees a slot during the test
  auto server = valet::ControlServer::start(*heap, o);
  ASSERT_TRUE(server.ok()) << server.error().to_string();
  const std::string stats = "{\"v\":1,\"cmd\":\"stats\"}\n";

  // Four idle clients fill every slot; a fifth is served, and the oldest idle one is closed.
  std::vector<int> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(connect_to(o.socket_path));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // accepted one by one, in order
  }
  for (int round = 0; round < 3; ++round) {
    const int c = connect_to(o.socket_path);
    send_all(c, stats);
    const std::string r = read_line(c, 5000);
    ASSERT_FALSE(r.empty()) << "no reply with every slot taken by idle clients";
    EXPECT_TRUE(json::parse(r)["ok"].get<bool>()) << r;
    ::close(c);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(read_line(idle[0], 2000).find("idle while the service was at its limit"), std::string::npos);
  EXPECT_EQ(read_line(idle[0], 2000), "");  // then EOF
  // The later clients found the slots of the ones before them (or, on a loaded machine where the
  // server had not yet noticed a close, took another idle one's).
  EXPECT_GE((*server)->counters().evicted_idle, 1u);
  EXPECT_LE((*server)->counters().evicted_idle, 3u);
  for (int fd : idle) ::close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));

  // Clients in the middle of a request are not idle: with all four such, a fifth is refused. The
  // server must have read the four partial requests first (until then they look idle and one is
  // closed for the fifth), which a loaded machine may delay: tried again with longer waits, so
  // only a server that takes such clients for idle fails every time.
  std::vector<int> busy;
  std::string late_reply;
  for (int wait_ms : {200, 1000, 3000, 8000}) {
    for (int fd : busy) ::close(fd);
    busy.clear();
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));  // the server sees them go
    for (int i = 0; i < 4; ++i) {
      busy.push_back(connect_to(o.socket_path));
      send_all(busy.back(), "{\"v\":1,");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
    const int late = connect_to(o.socket_path);
    send_all(late, stats);
    late_reply = read_line(late, 5000);
    ::close(late);
    if (late_reply.find("too many clients") != std::string::npos) break;
  }
  EXPECT_NE(late_reply.find("too many clients"), std::string::npos) << late_reply;
  for (int fd : busy) {
    send_all(fd, "\"cmd\":\"info\"}\n");
    EXPECT_TRUE(json::parse(read_line(fd))["ok"].get<bool>());
    ::close(fd);
  }
}

TEST(ControlServer, ReplacesAStaleSocketButNotAFile) {
  TempDir tmp;
  auto heap = small_heap();
  const std::string stale = (tmp.path / "stale.sock").string();
  {
    // A socket file whose listener is gone: what a killed service leaves.
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, stale.c_str(), sizeof addr.sun_path - 1);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);
  }
  valet::ControlServerOptions o;
  o.socket_path = stale;
  auto server = valet::ControlServer::start(*heap, o);
  ASSERT_TRUE(server.ok()) << server.error().to_string();
  (*server)->stop();

  const std::string file = (tmp.path / "notasocket").string();
  std::ofstream(file) << "keep me";
  o.socket_path = file;
  EXPECT_EQ(valet::ControlServer::start(*heap, o).code(), valet::Errc::invalid_state);
  EXPECT_EQ(slurp(file), "keep me");
}

TEST(ControlServer, DiscoveryDirectoryByDefault) {
  TempDir tmp;
  ::setenv("XDG_RUNTIME_DIR", tmp.path.c_str(), 1);
  ::unsetenv("VALET_CONTROL_SOCKET");
  auto heap = small_heap();
  auto server = valet::ControlServer::start(*heap);
  ASSERT_TRUE(server.ok()) << server.error().to_string();
  EXPECT_EQ((*server)->socket_path(), tmp.path.string() + "/valet/" + std::to_string(::getpid()) + ".sock");
  struct stat st {};
  ASSERT_EQ(::stat((tmp.path / "valet").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  server->reset();
  EXPECT_FALSE(fs::exists((tmp.path / "valet" / (std::to_string(::getpid()) + ".sock"))));
  ::unsetenv("XDG_RUNTIME_DIR");
}

}  // namespace
