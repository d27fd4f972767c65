// TraceRecorder: writes a live service's operations as a gpuheap-trace v1, through a bounded
// buffer that a writer thread of its own drains, so the service never waits for the file.
#include "valet/trace_recorder.h"

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

namespace valet {

// Named, not anonymous: TraceRecorder::State (external linkage) holds it, and a member of an
// internal-linkage type there is what -Wsubobject-linkage warns of.
namespace trace_recording {

// The buffer between the recording side and the writer thread. The thread holds it by a
// shared_ptr, so that a writer still stuck in its sink after stop() gave up waiting keeps what it
// uses. The recording side appends under `mu` and never does I/O; the writer swaps the pending
// bytes out under `mu` and writes them without it.
struct Channel {
  std::mutex mu;
  std::condition_variable work;  // pending bytes, or the end
  std::condition_variable done_cv;
  std::string pending;
  std::size_t limit = 0;
  bool finishing = false;  // nothing more comes: write what is pending, then close the sink
  bool done = false;       // the sink is closed
  Status result;           // the first failure of the sink
  std::uint64_t written = 0;
  std::unique_ptr<TraceSink> sink;

  // Appends `text` when it fits in the buffer, or always when `force`.
  bool push(std::string_view text, bool force) {
    std::lock_guard lock(mu);
    if (!force && pending.size() + text.size() > limit) return false;
    const bool wake = pending.empty();
    pending.append(text);
    if (wake) work.notify_one();
    return true;
  }
  void finish() {
    std::lock_guard lock(mu);
    finishing = true;
    work.notify_one();
  }
  bool wait_done(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    return done_cv.wait_for(lock, timeout, [this] { return done; });
  }

  void run() {
    std::string chunk;
    std::unique_lock lock(mu);
    for (;;) {
      work.wait(lock, [this] { return !pending.empty() || finishing; });
      if (pending.empty()) break;
      chunk.clear();
      chunk.swap(pending);
      const bool failed = !result.ok();
      lock.unlock();
      // After a failure the bytes are discarded, so the recording side never fills up for it.
      Status st = failed ? Status{} : sink->write(chunk);
      lock.lock();
      if (!st.ok() && result.ok()) result = st;
      if (st.ok() && !failed) written += chunk.size();
    }
    lock.unlock();
    Status closed = sink->close();
    lock.lock();
    if (!closed.ok() && result.ok()) result = closed;
    done = true;
    done_cv.notify_all();
  }
};

}  // namespace trace_recording

using trace_recording::Channel;

struct TraceRecorder::State {
  std::string source;
  std::size_t capacity = 0;
  Options options;
  mutable std::mutex mu;
  std::shared_ptr<Channel> channel;  // while recording
  // The last recording's channel once stop() took it: while its writer has not finished (stop()
  // may have given up waiting for a stuck sink), no new recording starts, so a hung filesystem
  // holds one writer (its thread, file and buffer) at most, never one per start/stop.
  std::weak_ptr<Channel> previous;
  std::string previous_path;
  std::thread writer;
  std::uint64_t generation = 0;  // recordings started, so a late stop() updates only its own
  Summary summary;
  std::uint64_t next_trace_id = 0;
  std::unordered_map<std::uint64_t, std::uint64_t> trace_ids;  // service id -> trace id
  std::vector<std::uint64_t> deferred;                          // trace ids whose free did not fit

  bool emit(std::string_view text, bool force = false) {
    if (!channel->push(text, force)) return false;
    ++summary.lines;
    return true;
  }
  bool emit_free(std::uint64_t t, bool force = false) {
    char buf[32];
    const int n = std::snprintf(buf, sizeof buf, "f %llu\n", (unsigned long long)t);
    if (!emit(std::string_view(buf, std::size_t(n)), force)) return false;
    ++summary.frees;
    return true;
  }
  // Frees that did not fit before go first, as many as fit now: late, but never lost.
  void retry_deferred(bool force = false) {
    while (!deferred.empty() && emit_free(deferred.back(), force)) deferred.pop_back();
  }
  void free_trace_id(std::uint64_t t) {
    if (emit_free(t)) return;
    deferred.push_back(t);
    ++summary.deferred_frees;
  }
  // Records the object's (re)allocation under a new trace id; when the line does not fit, the
  // object leaves the trace (as one from before the recording).
  void allocate(std::uint64_t id, std::size_t bytes) {
    retry_deferred();
    char buf[48];
    const int n = std::snprintf(buf, sizeof buf, "a %llu %llu\n", (unsigned long long)next_trace_id,
                                (unsigned long long)bytes);
    if (!emit(std::string_view(buf, std::size_t(n)))) {
      trace_ids.erase(id);
      ++summary.dropped_lines;
      return;
    }
    trace_ids[id] = next_trace_id++;
    ++summary.allocations;
  }
  // A step or a probe: dropped when it does not fit.
  bool simple(std::string_view text) {
    retry_deferred();
    if (emit(text)) return true;
    ++summary.dropped_lines;
    return false;
  }
  // invalid_state while a recording may not start. Called under `mu`.
  Status startable() const {
    if (channel) return make_error(Errc::invalid_state, "already recording a trace to " + summary.path);
    if (auto prev = previous.lock()) {
      std::lock_guard lock(prev->mu);
      if (!prev->done)
        return make_error(Errc::invalid_state,
                          "the previous trace " + previous_path + " is still being written (" +
                              std::to_string(prev->pending.size()) +
                              " bytes not yet written; its file system may be stuck): a new trace can start once "
                              "it finishes");
    }
    return {};
  }
  // The summary with the writer's figures.
  Summary current() const {
    Summary s = summary;
    if (channel) {
      std::lock_guard lock(channel->mu);
      s.written_bytes = channel->written;
      s.buffered_bytes = channel->pending.size();
    }
    return s;
  }
};

TraceRecorder::TraceRecorder(std::string source, std::size_t capacity_bytes)
    : TraceRecorder(std::move(source), capacity_bytes, Options{}) {}

TraceRecorder::TraceRecorder(std::string source, std::size_t capacity_bytes, Options options)
    : s_(std::make_unique<State>()) {
  s_->source = std::move(source);
  s_->capacity = capacity_bytes;
  s_->options = options;
}

TraceRecorder::~TraceRecorder() {
  if (recording()) (void)stop();
}

Status TraceRecorder::start(const std::string& path) {
  // Checked before the file is made, so that a refused start leaves nothing behind.
  {
    std::lock_guard lock(s_->mu);
    if (Status st = s_->startable(); !st.ok()) return st;
  }
  std::string resolved;
  auto sink = create_trace_file(path, &resolved);
  if (!sink.ok()) return sink.error();
  Status st = start(std::move(sink).value(), resolved);
  if (!st.ok()) ::unlink(resolved.c_str());  // made by us just now, O_EXCL: no one else's file
  return st;
}

Status TraceRecorder::start(std::unique_ptr<TraceSink> sink, const std::string& description) {
  if (!sink) return make_error(Errc::invalid_argument, "no trace sink given");
  std::lock_guard lock(s_->mu);
  if (Status st = s_->startable(); !st.ok()) return st;
  auto channel = std::make_shared<Channel>();
  channel->limit = std::max<std::size_t>(s_->options.buffer_bytes, 1);
  channel->sink = std::move(sink);
  try {
    s_->writer = std::thread([channel] { channel->run(); });
  } catch (const std::system_error& e) {
    return make_error(Errc::system_error, std::string("starting the trace writer thread: ") + e.what());
  }
  s_->channel = channel;
  ++s_->generation;
  s_->summary = Summary{.recording = true, .path = description};
  s_->next_trace_id = 0;
  s_->trace_ids.clear();
  s_->deferred.clear();
  char header[256];
  const int n = std::snprintf(header, sizeof header, "# gpuheap-trace v1 source=%s pid=%d capacity=%zu\n",
                              s_->source.c_str(), int(::getpid()), s_->capacity);
  channel->push(std::string_view(header, std::min(std::size_t(n), sizeof header - 1)), true);
  channel->push("# recorded from a live service: objects allocated before the recording started are not in it\n", true);
  recording_.store(true, std::memory_order_relaxed);
  return {};
}

Result<TraceRecorder::Summary> TraceRecorder::stop() {
  std::shared_ptr<Channel> channel;
  std::thread writer;
  Summary summary;
  std::uint64_t generation = 0;
  {
    // The last lines go in regardless of the limit (they are bounded by the live objects); the
    // wait for the writer happens after the lock is released, so recording calls never wait.
    std::lock_guard lock(s_->mu);
    if (!s_->channel) return make_error(Errc::invalid_state, "not recording a trace");
    recording_.store(false, std::memory_order_relaxed);
    State& s = *s_;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> live(s.trace_ids.begin(), s.trace_ids.end());
    std::sort(live.begin(), live.end(), [](auto& a, auto& b) { return a.second < b.second; });
    // Comments are not counted as lines; operations are.
    if (!live.empty() || !s.deferred.empty())
      s.channel->push("# recording stopped: objects still live in the service are freed here\n", true);
    s.retry_deferred(true);
    for (const auto& [id, t] : live) s.emit_free(t, true);
    if (s.summary.dropped_lines > 0)
      s.channel->push("# " + std::to_string(s.summary.dropped_lines) +
                          " lines were dropped: the trace was written more slowly than the service ran\n",
                      true);
    s.channel->push("# end\n", true);
    s.channel->finish();
    s.summary.recording = false;
    s.trace_ids.clear();
    channel = std::move(s.channel);
    s.previous = channel;
    s.previous_path = s.summary.path;
    writer = std::move(s.writer);
    summary = s.summary;
    generation = s.generation;
  }
  const bool finished = channel->wait_done(s_->options.stop_timeout);
  Status result;
  {
    std::lock_guard lock(channel->mu);
    summary.written_bytes = channel->written;
    summary.buffered_bytes = channel->pending.size();
    result = channel->result;
  }
  if (finished) {
    writer.join();
  } else {
    // It owns the channel and the sink and ends when (if ever) the sink does; until then start()
    // refuses (State::previous), so stuck writers never pile up.
    writer.detach();
    result = make_error(Errc::system_error,
                        "the trace " + summary.path + " is incomplete: its writer did not finish within " +
                            std::to_string(s_->options.stop_timeout.count()) + " ms (" +
                            std::to_string(summary.buffered_bytes) + " bytes not yet written)");
  }
  {
    std::lock_guard lock(s_->mu);
    if (s_->generation == generation) s_->summary = summary;
  }
  if (!result.ok())
    return make_error(Errc::system_error, "writing the trace " + summary.path + " failed: " + result.error().message);
  return summary;
}

TraceRecorder::Summary TraceRecorder::summary() const {
  std::lock_guard lock(s_->mu);
  return s_->current();
}

void TraceRecorder::on_allocate(std::uint64_t id, std::size_t bytes) {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (s_->channel) s_->allocate(id, bytes);
}

void TraceRecorder::on_free(std::uint64_t id) {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (!s_->channel) return;
  auto it = s_->trace_ids.find(id);
  if (it == s_->trace_ids.end()) return;  // from before the recording, or its allocation was dropped
  const std::uint64_t t = it->second;
  s_->trace_ids.erase(it);
  s_->retry_deferred();
  s_->free_trace_id(t);
}

void TraceRecorder::on_resize(std::uint64_t id, std::size_t new_bytes) {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (!s_->channel) return;
  // The trace format models growth as reallocation: the new buffer exists before the old one
  // goes, as in the traces `valet-replay generate` writes. An object from before the recording simply appears here.
  auto it = s_->trace_ids.find(id);
  if (it == s_->trace_ids.end()) return s_->allocate(id, new_bytes);
  const std::uint64_t old = it->second;
  s_->allocate(id, new_bytes);
  s_->free_trace_id(old);
}

void TraceRecorder::on_step() {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (s_->channel && s_->simple("s\n")) ++s_->summary.steps;
}

void TraceRecorder::on_probe(std::size_t bytes) {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (!s_->channel) return;
  char buf[32];
  const int n = std::snprintf(buf, sizeof buf, "p %llu\n", (unsigned long long)bytes);
  if (s_->simple(std::string_view(buf, std::size_t(n)))) ++s_->summary.probes;
}

}  // namespace valet
