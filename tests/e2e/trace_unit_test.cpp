// Unit tests of the trace recorder's safety: which paths create_trace_file() refuses (symlinks,
// existing files, FIFOs, '..', NUL bytes) and what it creates (a new 0600 file, named by its
// resolved absolute path); and that a stalled sink never blocks the recording side, which drops
// and counts what does not fit and still produces a trace that replays to an empty heap.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "control/commands.h"
#include "test_files.h"
#include "valet/control_server.h"
#include "valet/runtime.h"

namespace {

using valet::test::slurp;
using valet::test::TempDir;

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

valet::Errc start_code(const std::string& path) {
  valet::TraceRecorder t("unit", 1 << 20);
  auto st = t.start(path);
  if (st.ok()) (void)t.stop();
  return st.ok() ? valet::Errc::ok : st.code();
}

std::string start_error(const std::string& path) {
  valet::TraceRecorder t("unit", 1 << 20);
  auto st = t.start(path);
  if (st.ok()) {
    (void)t.stop();
    return "";
  }
  return st.error().message;
}

TEST(TraceFile, CreatesANewPrivateFileAndNamesIt) {
  TempDir tmp;
  ::umask(022);
  const fs::path real = tmp.path / "real";
  fs::create_directory(real);
  const fs::path link = tmp.path / "link";
  fs::create_directory_symlink(real, link);
  // Through a symlinked directory: followed, and the resolved name is reported.
  valet::TraceRecorder t("unit", 1 << 20);
  ASSERT_TRUE(t.start((link / "t.trace").string()).ok());
  const std::string resolved = fs::canonical(real).string() + "/t.trace";
  EXPECT_EQ(t.summary().path, resolved);
  auto s = t.stop();
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(s->path, resolved);
  struct stat st {};
  ASSERT_EQ(::lstat(resolved.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_NE(slurp(resolved).find("# end"), std::string::npos);
  EXPECT_EQ(s->written_bytes, slurp(resolved).size());
  EXPECT_EQ(s->buffered_bytes, 0u);
}

TEST(TraceFile, RefusesWhatIsNotANewRegularFile) {
  TempDir tmp;
  const fs::path victim = tmp.path / "victim";
  std::ofstream(victim) << "keep me";

  // An existing file: refused, not truncated.
  EXPECT_EQ(start_code(victim.string()), valet::Errc::invalid_argument);
  EXPECT_NE(start_error(victim.string()).find("exists (a file)"), std::string::npos);
  // A symlink to it: refused, the target untouched; a dangling one creates nothing.
  const fs::path link = tmp.path / "link";
  fs::create_symlink(victim, link);
  EXPECT_NE(start_error(link.string()).find("a symlink"), std::string::npos);
  EXPECT_EQ(slurp(victim), "keep me");
  const fs::path dangling = tmp.path / "dangling", target = tmp.path / "target";
  fs::create_symlink(target, dangling);
  EXPECT_EQ(start_code(dangling.string()), valet::Errc::invalid_argument);
  EXPECT_FALSE(fs::exists(target));
  // '..' anywhere, a NUL byte (which open() would cut the path at), relative paths, directories.
  EXPECT_NE(start_error((tmp.path / ".." / "x.trace").string()).find("'..'"), std::string::npos);
  EXPECT_NE(start_error(tmp.path.string() + "/..").find("'..'"), std::string::npos);
  EXPECT_EQ(start_code((tmp.path / "..x.trace").string()), valet::Errc::ok);  // a name, not a component
  const std::string nul = (tmp.path / "a").string() + std::string(1, '\0') + "b";
  EXPECT_NE(start_error(nul).find("NUL"), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp.path / "a"));
  EXPECT_EQ(start_code("rel.trace"), valet::Errc::invalid_argument);
  EXPECT_EQ(start_code(tmp.path.string() + "/"), valet::Errc::invalid_argument);
  EXPECT_EQ(start_code(tmp.path.string() + "/."), valet::Errc::invalid_argument);
  EXPECT_EQ(start_code(tmp.path.string()), valet::Errc::invalid_argument);  // exists: a directory
  EXPECT_EQ(start_code((tmp.path / "missing" / "x.trace").string()), valet::Errc::system_error);
  EXPECT_EQ(start_code((victim / "x.trace").string()), valet::Errc::system_error);  // parent not a directory
}

TEST(TraceFile, AFifoIsRefusedAtOnceWithOrWithoutAReader) {
  TempDir tmp;
  const fs::path fifo = tmp.path / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // No reader: opening it for writing would block forever; it must not even be opened.
  auto answer = std::async(std::launch::async, [&] { return start_error(fifo.string()); });
  ASSERT_EQ(answer.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "start() blocked on a FIFO";
  EXPECT_NE(answer.get().find("a FIFO"), std::string::npos);
  // A reader that never reads: refused just the same.
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  EXPECT_NE(start_error(fifo.string()).find("a FIFO"), std::string::npos);
  ::close(reader);
  // The protocol's reply names the problem.
  valet::Config config;
  config.capacity = std::size_t{64} << 20;
  auto heap = valet::open_heap(valet::BackendOptions{.choice = valet::BackendChoice::host}, config).value();
  valet::TraceRecorder trace("unit", 1 << 20);
  valet::control::ServiceContext ctx{.heap = *heap, .compaction = nullptr, .trace = &trace, .socket_path = "/s",
                                     .started = Clock::now(), .log = {}};
  auto out = valet::control::handle_request(R"({"v":1,"cmd":"trace_start","path":")" + fifo.string() + "\"}", ctx);
  EXPECT_FALSE(out.reply["ok"].get<bool>());
  EXPECT_NE(out.reply["error"].get<std::string>().find("a FIFO"), std::string::npos) << out.reply.dump();
  out = valet::control::handle_request(R"({"v":1,"cmd":"trace_start","path":")" + tmp.path.string() + "/n\\u0000x\"}", ctx);
  EXPECT_NE(out.reply["error"].get<std::string>().find("NUL"), std::string::npos) << out.reply.dump();
  out = valet::control::handle_request(R"({"v":1,"cmd":"trace_start","path":")" + tmp.path.string() + "/ok.trace\"}", ctx);
  ASSERT_TRUE(out.reply["ok"].get<bool>()) << out.reply.dump();
  EXPECT_EQ(out.reply["file"], fs::canonical(tmp.path).string() + "/ok.trace");
  out = valet::control::handle_request(R"({"v":1,"cmd":"trace_stop"})", ctx);
  ASSERT_TRUE(out.job);  // trace_stop waits for the writer on the worker
  const nlohmann::json stopped = out.job();
  EXPECT_EQ(stopped["file"], fs::canonical(tmp.path).string() + "/ok.trace");
  EXPECT_EQ(stopped["trace"]["dropped_lines"], 0);
}

// A sink that takes nothing until released: a disk that stopped answering.
struct StalledSink final : valet::TraceSink {
  struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    std::string data;
    void release() {
      std::lock_guard lock(mu);
      open = true;
      cv.notify_all();
    }
  };
  std::shared_ptr<Gate> gate;
  explicit StalledSink(std::shared_ptr<Gate> g) : gate(std::move(g)) {}
  valet::Status write(std::string_view d) override {
    std::unique_lock lock(gate->mu);
    gate->cv.wait(lock, [&] { return gate->open; });
    gate->data.append(d);
    return {};
  }
  valet::Status close() override { return {}; }
};

// Replays the trace's operations: ids dense and fresh, every free of a live id, nothing live at
// the end. Returns the number of operations, or -1 with a message.
long replay_check(const std::string& text, std::string* why) {
  std::istringstream in(text);
  std::string line;
  std::set<unsigned long long> live;
  unsigned long long next = 0;
  long ops = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    ++ops;
    unsigned long long id = 0, bytes = 0;
    if (std::sscanf(line.c_str(), "a %llu %llu", &id, &bytes) == 2) {
      if (id != next++ || !live.insert(id).second) return *why = "not a dense fresh id: " + line, -1;
    } else if (std::sscanf(line.c_str(), "f %llu", &id) == 1) {
      if (!live.erase(id)) return *why = "free of an id not live: " + line, -1;
    } else if (line != "s" && line.rfind("p ", 0) != 0) {
      return *why = "not an operation: " + line, -1;
    }
  }
  if (!live.empty()) return *why = std::to_string(live.size()) + " objects live at the end", -1;
  return ops;
}

TEST(TraceRecorder, AStalledSinkNeverBlocksRecording) {
  auto gate = std::make_shared<StalledSink::Gate>();
  valet::TraceRecorder t("unit", 1 << 20, {.buffer_bytes = 4096, .stop_timeout = std::chrono::milliseconds(200)});
  ASSERT_TRUE(t.start(std::make_unique<StalledSink>(gate), "stalled").ok());
  // 100 objects fit; then the buffer fills with steps; then their frees no longer fit.
  for (std::uint64_t id = 1; id <= 100; ++id) t.on_allocate(id, 4096);
  // On another thread, so that a recording call that blocked fails the test instead of hanging it.
  auto work = std::async(std::launch::async, [&] {
    const auto t0 = Clock::now();
    for (int i = 0; i < 200'000; ++i) {
      t.on_step();
      t.on_allocate(1000 + i, 64);
      t.on_free(1000 + i);
    }
    for (std::uint64_t id = 1; id <= 100; ++id) t.on_free(id);
    return Clock::now() - t0;
  });
  // A blocked call would wait for the sink forever; the bound on the time is loose (a loaded
  // machine, a sanitizer build) and only catches calls that each wait a while for the writer.
  const bool finished = work.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  if (!finished) gate->release();  // let the stuck call go before failing
  ASSERT_TRUE(finished) << "recording calls blocked behind a stalled sink";
  EXPECT_LT(work.get(), std::chrono::seconds(15));
  auto s = t.summary();
  EXPECT_GT(s.dropped_lines, 200'000u);
  EXPECT_GE(s.deferred_frees, 100u);  // objects 1..100, and any whose free came just as it filled
  EXPECT_LT(s.frees, s.allocations);
  EXPECT_LE(s.buffered_bytes, 4096u);
  EXPECT_EQ(s.written_bytes, 0u);

  // The sink drains; the frees that waited for room go out with the next operations.
  gate->release();
  for (int i = 0; i < 1000 && t.summary().buffered_bytes > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  t.on_step();
  EXPECT_EQ(t.summary().frees, t.summary().allocations);  // nothing is live in the "service"
  auto done = t.stop();
  ASSERT_TRUE(done.ok()) << done.error().to_string();
  EXPECT_EQ(done->dropped_lines, s.dropped_lines);
  std::string why;
  std::string text;
  {
    std::lock_guard lock(gate->mu);
    text = gate->data;
  }
  EXPECT_GT(replay_check(text, &why), 100) << why;
  EXPECT_NE(text.find("lines were dropped"), std::string::npos);
  EXPECT_EQ(done->written_bytes, text.size());
}

// Waits (boundedly) until the stalled sink has taken the trace's last line.
bool wait_for_end(StalledSink::Gate& gate) {
  for (int i = 0; i < 2000; ++i) {
    {
      std::lock_guard lock(gate.mu);
      if (gate.data.find("# end") != std::string::npos) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

TEST(TraceRecorder, StopDoesNotWaitForAStuckSink) {
  auto gate = std::make_shared<StalledSink::Gate>();
  valet::TraceRecorder t("unit", 1 << 20, {.buffer_bytes = 1 << 16, .stop_timeout = std::chrono::milliseconds(300)});
  ASSERT_TRUE(t.start(std::make_unique<StalledSink>(gate), "stuck").ok());
  for (std::uint64_t id = 1; id <= 50; ++id) t.on_allocate(id, 128);
  const auto t0 = Clock::now();
  auto stopped = t.stop();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(15));  // 300 ms, unless it waited for the sink
  ASSERT_FALSE(stopped.ok());
  EXPECT_NE(stopped.error().message.find("incomplete"), std::string::npos) << stopped.error().message;
  EXPECT_FALSE(t.recording());
  EXPECT_FALSE(t.summary().recording);

  // While the stuck writer has not finished, no new recording starts (each would leave one more
  // writer thread, file and buffer behind), and a refused start creates no file.
  auto gate2 = std::make_shared<StalledSink::Gate>();
  gate2->release();
  auto again = t.start(std::make_unique<StalledSink>(gate2), "next");
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.code(), valet::Errc::invalid_state);
  EXPECT_NE(again.error().message.find("the previous trace stuck is still being written"), std::string::npos)
      << again.error().message;
  TempDir dir;
  const auto file = dir.path / "refused.trace";
  EXPECT_EQ(t.start(file.string()).code(), valet::Errc::invalid_state);
  EXPECT_FALSE(fs::exists(file));

  // Once the sink takes the bytes, the stuck writer finishes on its own and the recorder is free.
  gate->release();
  ASSERT_TRUE(wait_for_end(*gate));
  valet::Status restarted = valet::make_error(valet::Errc::invalid_state, "not tried");
  for (int i = 0; i < 2000 && !restarted.ok(); ++i) {
    restarted = t.start(std::make_unique<StalledSink>(gate2), "next");
    if (!restarted.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(restarted.ok()) << restarted.error().message;
  t.on_step();
  ASSERT_TRUE(t.stop().ok());
  std::lock_guard lock(gate->mu);
  std::string why;
  EXPECT_EQ(replay_check(gate->data, &why), 100) << why;
}

// trace_stop waits for the writer on the control server's worker, never on its own thread: the
// request is answered by a job, and handling it returns at once however stuck the file is.
TEST(TraceRecorder, TraceStopNeverWaitsOnTheServerThread) {
  valet::Config config;
  config.capacity = std::size_t{64} << 20;
  auto heap = valet::open_heap(valet::BackendOptions{.choice = valet::BackendChoice::host}, config).value();
  auto gate = std::make_shared<StalledSink::Gate>();
  // A long timeout: a server thread that waited for the writer would take all of it.
  valet::TraceRecorder t("unit", 1 << 20, {.buffer_bytes = 1 << 16, .stop_timeout = std::chrono::seconds(30)});
  valet::control::ServiceContext ctx{.heap = *heap, .compaction = nullptr, .trace = &t, .socket_path = "/s",
                                     .started = Clock::now(), .log = {}};
  ASSERT_TRUE(t.start(std::make_unique<StalledSink>(gate), "stuck").ok());
  t.on_allocate(1, 4096);
  auto handled = std::async(std::launch::async,
                            [&] { return valet::control::handle_request(R"({"v":1,"cmd":"trace_stop","id":7})", ctx); });
  const bool returned = handled.wait_for(std::chrono::seconds(15)) == std::future_status::ready;
  if (!returned) gate->release();  // let it go before failing
  ASSERT_TRUE(returned) << "trace_stop waited for a stuck trace file on the server's thread";
  auto out = handled.get();
  EXPECT_TRUE(out.reply.is_null()) << out.reply.dump();
  ASSERT_TRUE(out.job);
  // The job (the worker's part) waits for the writer, here until the sink takes the bytes.
  auto job = std::async(std::launch::async, [&] { return out.job(); });
  gate->release();
  ASSERT_EQ(job.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  const nlohmann::json r = job.get();
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  EXPECT_EQ(r.value("cmd", ""), "trace_stop");
  EXPECT_EQ(r.value("id", 0), 7);
  EXPECT_EQ(r.value("file", ""), "stuck");
  EXPECT_FALSE(t.recording());

  // A failure in the job is an error reply with the recording's figures, as before.
  auto failed = valet::control::handle_request(R"({"v":1,"cmd":"trace_stop"})", ctx);
  ASSERT_TRUE(failed.job);
  const nlohmann::json e = failed.job();
  EXPECT_EQ(e.value("ok", true), false);
  EXPECT_NE(e.value("error", "").find("not recording"), std::string::npos) << e.dump();
}

}  // namespace
