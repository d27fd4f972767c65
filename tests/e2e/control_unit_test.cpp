// Unit tests of the control server's parts: the peer-uid rule, socket paths and the discovery
// directory, the protocol's request checking (commands.cpp), the trace recorder, and one
// in-process server (socket mode, stale sockets, timeouts, oversized lines, other users).
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <sstream>
#include <thread>

#include "control/commands.h"
#include "control/job_worker.h"
#include "control/page_map.h"
#include "test_files.h"
#include "valet/control_server.h"
#include "valet/runtime.h"

namespace {

using valet::test::slurp;
using valet::test::TempDir;

using nlohmann::json;
namespace fs = std::filesystem;

std::unique_ptr<valet::Heap> small_heap() {
  valet::Config config;
  config.capacity = std::size_t{64} << 20;
  return valet::open_heap(valet::BackendOptions{.choice = valet::BackendChoice::host}, config).value();
}

// A compaction engine for the policy commands, standing in for the Compactor.
class FakeCompaction : public valet::CompactionControl {
 public:
  std::map<std::string, std::string> values{{"fragmentation_threshold", "0.1"}, {"background", "true"}};
  int requests = 0;
  valet::Result<valet::CompactionRecord> request(const valet::CompactRequest& r, bool) override {
    ++requests;
    valet::CompactionRecord rec;
    rec.trigger = r.trigger;
    rec.objects_moved = 3;
    return rec;
  }
  std::map<std::string, std::string> policy() const override { return values; }
  std::vector<std::string> policy_keys() const override { return {"background", "fragmentation_threshold"}; }
  valet::Status set_policy(const std::vector<std::pair<std::string, std::string>>& pairs) override {
    auto next = values;
    for (const auto& [k, v] : pairs) {
      if (!values.count(k)) return valet::make_error(valet::Errc::invalid_argument, "unknown key " + k);
      if (k == "fragmentation_threshold" && (v.empty() || v[0] == '-'))
        return valet::make_error(valet::Errc::invalid_argument, "fragmentation_threshold must be in [0, 1]");
      next[k] = v;
    }
    values = next;
    return {};
  }
  valet::Compactor::Counters counters() const override { return {}; }
};

// --- the peer rule -----------------------------------------------------------------------------

TEST(PeerAllowed, OnlyTheSameUser) {
  EXPECT_TRUE(valet::peer_allowed(1000, 1000));
  EXPECT_TRUE(valet::peer_allowed(0, 0));
  EXPECT_FALSE(valet::peer_allowed(1001, 1000));
  EXPECT_FALSE(valet::peer_allowed(0, 1000));   // not even root steers another user's heap
  EXPECT_FALSE(valet::peer_allowed(1000, 0));
  EXPECT_FALSE(valet::peer_allowed(65534, 1000));
}

// --- paths -------------------------------------------------------------------------------------

TEST(SocketPath, OptionThenEnvironmentThenDiscoveryDirectory) {
  TempDir tmp;
  ::setenv("XDG_RUNTIME_DIR", tmp.path.c_str(), 1);
  ::unsetenv("VALET_CONTROL_SOCKET");
  EXPECT_EQ(valet::control_socket_dir(), tmp.path.string() + "/valet");
  EXPECT_EQ(valet::control_socket_path(), tmp.path.string() + "/valet/" + std::to_string(::getpid()) + ".sock");
  ::setenv("VALET_CONTROL_SOCKET", "relative/used-as-given.sock", 1);
  EXPECT_EQ(valet::control_socket_path(), "relative/used-as-given.sock");
  EXPECT_EQ(valet::control_socket_path("/x/option.sock"), "/x/option.sock");
  ::unsetenv("VALET_CONTROL_SOCKET");
  ::unsetenv("XDG_RUNTIME_DIR");
  EXPECT_EQ(valet::control_socket_dir(), "/tmp/valet-" + std::to_string(::getuid()));
}

TEST(SocketDir, CreatedPrivateAndRefusedWhenOpenOrForeign) {
  TempDir tmp;
  const std::string dir = (tmp.path / "valet").string();
  ASSERT_TRUE(valet::prepare_control_socket_dir(dir).ok());
  struct stat st {};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_TRUE(valet::prepare_control_socket_dir(dir).ok());  // again: fine

  const std::string open_dir = (tmp.path / "open").string();
  ::mkdir(open_dir.c_str(), 0755);
  ::chmod(open_dir.c_str(), 0755);
  EXPECT_EQ(valet::prepare_control_socket_dir(open_dir).code(), valet::Errc::invalid_state);

  const std::string file = (tmp.path / "file").string();
  std::ofstream(file) << "x";
  EXPECT_EQ(valet::prepare_control_socket_dir(file).code(), valet::Errc::invalid_state);

  const std::string link = (tmp.path / "link").string();
  ASSERT_EQ(::symlink(dir.c_str(), link.c_str()), 0);
  EXPECT_EQ(valet::prepare_control_socket_dir(link).code(), valet::Errc::invalid_state);
}

// --- the protocol ------------------------------------------------------------------------------

class Protocol : public ::testing::Test {
 protected:
  std::unique_ptr<valet::Heap> heap = small_heap();
  FakeCompaction fake;
  valet::TraceRecorder trace{"test", 64 << 20};
  valet::control::ServiceContext ctx{.heap = *heap, .compaction = nullptr, .trace = &trace, .socket_path = "/s",
                                     .started = std::chrono::steady_clock::now(), .log = {}};

  // The reply a request line gets, running its job if it has one.
  json ask(std::string_view line) {
    auto out = valet::control::handle_request(line, ctx);
    if (out.reply.is_null() && out.job) return out.job();
    if (out.job) (void)out.job();
    return out.reply;
  }
  std::string error_of(std::string_view line) {
    const json r = ask(line);
    EXPECT_EQ(r.value("ok", true), false) << line << " -> " << r.dump();
    EXPECT_EQ(r.value("v", 0), 1);
    return r.value("error", std::string());
  }
};

TEST_F(Protocol, MalformedRequestsAreNamed) {
  EXPECT_NE(error_of("hello").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"sta)").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of("[1,2]").find("expected a JSON object"), std::string::npos);
  EXPECT_NE(error_of("null").find("expected a JSON object"), std::string::npos);
  EXPECT_NE(error_of(R"({"cmd":"stats"})").find("missing protocol version"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":2,"cmd":"stats"})").find("unsupported protocol version"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":"1","cmd":"stats"})").find("unsupported protocol version"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":5})").find("'cmd' must be a string"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1})").find("'cmd' must be a string"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"launch"})").find("unknown command 'launch'"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"stats","verbose":true})").find("unknown field 'verbose'"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"stats","id":[1]})").find("'id'"), std::string::npos);
  EXPECT_NE(error_of("{\"v\":1,\"cmd\":\"\xff\"}").find("not valid JSON"), std::string::npos);
  // Deep nesting within the size limit neither crashes nor is accepted.
  const std::string deep = std::string(30000, '[') + std::string(30000, ']');
  EXPECT_NE(error_of(deep).find("expected a JSON object"), std::string::npos);
}

TEST_F(Protocol, FieldTypesAndRangesAreChecked) {
  EXPECT_NE(error_of(R"({"v":1,"cmd":"compact","wait":"yes"})").find("'wait' must be true or false"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"compact","budget":-5})").find("'budget'"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"compact","budget":"lots"})").find("'budget'"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"compact","budget":0})").find("at least 1"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"compact","target_fragmentation":2})").find("must be a number in [0, 1]"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"compact","max_occupancy":"x"})").find("'max_occupancy'"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"trace_start"})").find("'path' is required"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"trace_start","path":"rel.trace"})").find("absolute"), std::string::npos);
  EXPECT_NE(error_of(R"({"v":1,"cmd":"trace_stop"})").find("not recording"), std::string::npos);
}

TEST_F(Protocol, StatsPagesAndIdEcho) {
  auto h = heap->allocate(4096).value();
  const json s = ask(R"({"v":1,"cmd":"stats","id":"abc"})");
  EXPECT_TRUE(s.value("ok", false));
  EXPECT_EQ(s["id"], "abc");
  EXPECT_EQ(s["cmd"], "stats");
  EXPECT_EQ(s["pid"], int(::getpid()));
  EXPECT_EQ(s["backend_kind"], "host");
  EXPECT_EQ(s["live_objects"], 1);
  for (const char* key : {"live_bytes", "mapped_bytes", "reserved_bytes", "fragmentation", "pages",
                          "occupancy_histogram", "largest_allocatable_bytes", "ops", "compaction", "recent_cycles"})
    EXPECT_TRUE(s.contains(key)) << key;
  const json p = ask(R"({"v":1,"cmd":"pages"})");
  EXPECT_TRUE(p.value("ok", false));
  EXPECT_TRUE(p["exact"].get<bool>());
  const auto& sum = p["summary"];
  EXPECT_EQ(p["pages"].size(), sum["slab"].get<std::size_t>() + sum["meshed"].get<std::size_t>() +
                                   sum["large"].get<std::size_t>() + sum["reserve"].get<std::size_t>());
  EXPECT_EQ(sum["slab"], 1);
  std::size_t slab_entries = 0;
  for (const auto& e : p["pages"])
    if (e["kind"] == "slab") {
      ++slab_entries;
      EXPECT_EQ(e["used_slots"], 1);
      EXPECT_EQ(e["size_class"], 4096);
    }
  EXPECT_EQ(slab_entries, 1u);
  ASSERT_TRUE(heap->free(h).ok());
}

TEST_F(Protocol, CompactOnTheHeapWithoutACompactor) {
  const json r = ask(R"({"v":1,"cmd":"compact","wait":true,"budget":"1MiB"})");
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(r["by"], "heap");
  EXPECT_TRUE(r["record"].contains("objects_moved"));
  EXPECT_EQ(heap->stats().compaction.cycles, 1u);
  const json q = ask(R"({"v":1,"cmd":"compact"})");
  EXPECT_TRUE(q.value("queued", false));
  EXPECT_EQ(heap->stats().compaction.cycles, 2u);  // ask() ran its job
  // A target already met runs nothing.
  const json t = ask(R"({"v":1,"cmd":"compact","wait":true,"target_fragmentation":1})");
  EXPECT_FALSE(t.value("ran", true));
}

TEST_F(Protocol, PolicyNeedsACompactorAndIsSetAllOrNone) {
  EXPECT_NE(error_of(R"({"v":1,"cmd":"policy_get"})").find("no compactor"), std::string::npos);
  ctx.compaction = &fake;
  const json g = ask(R"({"v":1,"cmd":"policy_get"})");
  // Numbers and booleans as JSON numbers and booleans, not their text.
  ASSERT_TRUE(g["policy"]["fragmentation_threshold"].is_number_float()) << g.dump();
  EXPECT_EQ(g["policy"]["fragmentation_threshold"].get<double>(), 0.1);
  EXPECT_EQ(g["policy"]["background"], true);
  EXPECT_EQ(g["keys"].size(), 2u);
  const json s = ask(R"({"v":1,"cmd":"policy_set","set":{"fragmentation_threshold":0.25,"background":false}})");
  EXPECT_TRUE(s.value("ok", false)) << s.dump();
  EXPECT_EQ(fake.values["fragmentation_threshold"], "0.25");
  EXPECT_EQ(fake.values["background"], "false");
  EXPECT_EQ(s["policy"]["fragmentation_threshold"], 0.25);
  EXPECT_EQ(s["policy"]["background"], false);
  const json bad = ask(R"({"v":1,"cmd":"policy_set","set":{"background":true,"nonsense":1}})");
  EXPECT_FALSE(bad.value("ok", true));
  EXPECT_NE(bad["error"].get<std::string>().find("valid keys: background, fragmentation_threshold"), std::string::npos);
  EXPECT_EQ(bad["valid_keys"].size(), 2u);
  EXPECT_EQ(fake.values["background"], "false");  // nothing changed
  const json range = ask(R"({"v":1,"cmd":"policy_set","set":{"background":true,"fragmentation_threshold":"-1"}})");
  EXPECT_FALSE(range.value("ok", true));
  EXPECT_EQ(fake.values["background"], "false");
  EXPECT_FALSE(ask(R"({"v":1,"cmd":"policy_set","set":{}})").value("ok", true));
  EXPECT_FALSE(ask(R"({"v":1,"cmd":"policy_set","set":{"background":[1]}})").value("ok", true));
  EXPECT_FALSE(ask(R"({"v":1,"cmd":"policy_set","set":"background=true"})").value("ok", true));
  const json c = ask(R"({"v":1,"cmd":"compact","wait":true})");
  EXPECT_EQ(c["by"], "compactor");
  EXPECT_EQ(c["record"]["objects_moved"], 3);
}

TEST_F(Protocol, PolicyOfTheRealCompactorHasTypedValues) {
  auto compactor = valet::Compactor::start(*heap).value();
  valet::CompactorControl control(*compactor);
  ctx.compaction = &control;
  const json g = ask(R"({"v":1,"cmd":"policy_get"})");
  ASSERT_TRUE(g.value("ok", false)) << g.dump();
  for (const auto& key : g["keys"]) {
    const json& v = g["policy"][key.get<std::string>()];
    EXPECT_TRUE(v.is_number() || v.is_boolean()) << key << " = " << v.dump();
  }
  EXPECT_TRUE(g["policy"]["mesh"].is_boolean());
  EXPECT_TRUE(g["policy"]["interval_ms"].is_number_unsigned());
  EXPECT_TRUE(g["policy"]["max_occupancy"].is_number_float());
  compactor->stop();
}

TEST(PolicyValues, ShortestTextThatReadsBackExactly) {
  valet::PolicySettings s;
  s.fragmentation_threshold = 0.1;
  s.idle_allocs_per_second = 1e-7;
  auto values = valet::policy_values(s);
  EXPECT_EQ(values.at("fragmentation_threshold"), "0.1");  // not "0.100000"
  EXPECT_EQ(values.at("idle_allocs_per_second"), "1e-07");  // not "0.000000", which reads back as 0
  valet::PolicySettings back;
  for (const auto& [k, v] : values) ASSERT_TRUE(valet::set_policy_value(back, k, v).ok()) << k << "=" << v;
  EXPECT_EQ(back.fragmentation_threshold, 0.1);
  EXPECT_EQ(back.idle_allocs_per_second, 1e-7);
}

// The page map's figures add up: virtual slots by kind to the slots listed, physical pages by use
// to the pages created, and those with the pages not created to the capacity. A slab page on a
// large object's last page and a meshed alias have no physical page of their own; an idle page
// is created but mapped at no slot.
TEST(PageMap, VirtualSlotsAndPhysicalPagesAddUp) {
  using valet::PageKind;
  std::vector<valet::PageInfo> map(6);
  map[0] = {.slot = 0, .kind = PageKind::slab, .maps_page_of = 0};
  map[1] = {.slot = 1, .kind = PageKind::meshed, .maps_page_of = 0};
  map[2] = {.slot = 2, .kind = PageKind::large};
  map[3] = {.slot = 3, .kind = PageKind::large};
  map[4] = {.slot = 4, .kind = PageKind::slab, .maps_page_of = 3, .blocked_slots = 2};  // on 3's page
  map[5] = {.slot = 5, .kind = PageKind::reserve};
  valet::HeapStats stats;
  constexpr std::size_t kPage = std::size_t{2} << 20;
  stats.capacity_bytes = 16 * kPage;
  stats.pages.idle = 1;
  const json j = valet::control::page_map_json(stats, map, kPage);
  EXPECT_EQ(j["capacity_pages"], 16);
  EXPECT_EQ(j["virtual_slots"], 6);
  EXPECT_EQ(j["pages"].size(), 6u);
  const json& s = j["summary"];
  EXPECT_EQ(s["slab"], 2);
  EXPECT_EQ(s["shared_tails"], 1);
  EXPECT_EQ(s["meshed"], 1);
  EXPECT_EQ(s["large"], 2);
  EXPECT_EQ(s["reserve"], 1);
  EXPECT_EQ(s["idle"], 1);
  // Physical: slab 1 (slot 0) + large 2 + reserve 1 + idle 1.
  EXPECT_EQ(j["physical"]["slab"], 1);
  EXPECT_EQ(j["physical"]["large"], 2);
  EXPECT_EQ(j["physical"]["reserve"], 2);
  EXPECT_EQ(j["physical_pages"], 5);
  EXPECT_EQ(j["not_created"], 11);
  EXPECT_EQ(j["pages"][4]["maps_page_of"], 3);
}

// --- the worker -------------------------------------------------------------------------------

TEST(JobWorker, RunsInOrderAndMergesQueuedBackgroundJobs) {
  std::atomic<int> wakes{0};
  valet::control::JobWorker worker([&] { ++wakes; });
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::atomic<int> ran{0};
  EXPECT_TRUE(worker.submit(1, true, [gate, &ran] {  // holds the worker until released
    gate.wait();
    ++ran;
    return json{{"n", 1}};
  }));
  EXPECT_TRUE(worker.submit(2, false, [&ran] { ++ran; return json(nullptr); }));
  EXPECT_FALSE(worker.submit(3, false, [&ran] { ++ran; return json(nullptr); }));  // merged
  EXPECT_TRUE(worker.submit(4, true, [&ran] { ++ran; return json{{"n", 4}}; }));
  release.set_value();
  for (int i = 0; i < 500 && ran < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  worker.stop();
  EXPECT_EQ(ran, 3);
  auto done = worker.take_done();
  ASSERT_EQ(done.size(), 2u);  // only the jobs that owe a reply
  EXPECT_EQ(done[0].first, 1u);
  EXPECT_EQ(done[1].second["n"], 4);
  EXPECT_GE(wakes, 3);
  EXPECT_FALSE(worker.submit(5, true, [] { return json(nullptr); }));  // stopped
}

// --- the trace recorder ------------------------------------------------------------------------

// The trace's operation lines (comments dropped).
std::string ops_of(const std::string& text) {
  std::string out, line;
  std::istringstream in(text);
  while (std::getline(in, line))
    if (!line.empty() && line[0] != '#') out += line + "\n";
  return out;
}

TEST(TraceRecorder, RecordsAReplayableTrace) {
  TempDir tmp;
  const auto path = tmp.path / "t.trace";
  valet::TraceRecorder t("unit", 1 << 30);
  t.on_allocate(7, 100);  // not recording: ignored, and its object is unknown to the trace
  ASSERT_TRUE(t.start(path.string()).ok());
  EXPECT_EQ(t.start(path.string()).code(), valet::Errc::invalid_state);
  t.on_allocate(8, 4096);
  t.on_free(7);           // allocated before the start: dropped
  t.on_resize(7, 300);    // first seen: an allocation
  t.on_resize(8, 8192);   // reallocation: new id, then the old one freed
  t.on_step();
  t.on_probe(1 << 20);
  t.on_allocate(9, 16);
  t.on_free(9);
  auto summary = t.stop();
  ASSERT_TRUE(summary.ok());
  EXPECT_EQ(summary->allocations, 4u);
  EXPECT_EQ(summary->frees, 4u);  // 8's old id, 9, and the two still live at stop
  EXPECT_EQ(summary->steps, 1u);
  EXPECT_EQ(summary->probes, 1u);
  const std::string text = slurp(path);
  EXPECT_EQ(text.rfind("# gpuheap-trace v1 source=unit pid=", 0), 0u) << text;
  EXPECT_NE(text.find("capacity=1073741824"), std::string::npos);
  EXPECT_EQ(ops_of(text), "a 0 4096\na 1 300\na 2 8192\nf 0\ns\np 1048576\na 3 16\nf 3\nf 1\nf 2\n");
  EXPECT_EQ(t.stop().code(), valet::Errc::invalid_state);
  EXPECT_EQ(t.start("/nonexistent-dir/x.trace").code(), valet::Errc::system_error);
}

// --- the server in-process ---------------------------------------------------------------------

int connect_to(const std::string& path) {
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

void send_all(int fd, const std::string& data) {
  for (std::size_t sent = 0; sent < data.size();) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += std::size_t(n);
  }
}

// One reply line (empty on timeout or EOF).
std::string read_line(int fd, int timeout_ms = 5000) {
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
