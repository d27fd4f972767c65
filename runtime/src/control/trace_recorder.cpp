// TraceRecorder: writes a live service's operations as a gpuheap-trace v1.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "valet/control_server.h"

namespace valet {

struct TraceRecorder::State {
  std::string source;
  std::size_t capacity = 0;
  mutable std::mutex mu;
  std::FILE* file = nullptr;
  Summary summary;
  std::uint64_t next_trace_id = 0;
  std::unordered_map<std::uint64_t, std::uint64_t> trace_ids;  // service id -> trace id

  void line(const char* fmt, std::uint64_t a = 0, std::uint64_t b = 0) {
    std::fprintf(file, fmt, (unsigned long long)a, (unsigned long long)b);
    ++summary.lines;
  }
  void allocate(std::uint64_t id, std::size_t bytes) {
    const std::uint64_t t = next_trace_id++;
    trace_ids[id] = t;
    line("a %llu %llu\n", t, bytes);
    ++summary.allocations;
  }
  // Frees the object's trace id; false when the object is not in the trace.
  bool free(std::uint64_t id) {
    auto it = trace_ids.find(id);
    if (it == trace_ids.end()) return false;
    line("f %llu\n", it->second);
    trace_ids.erase(it);
    ++summary.frees;
    return true;
  }
};

TraceRecorder::TraceRecorder(std::string source, std::size_t capacity_bytes) : s_(std::make_unique<State>()) {
  s_->source = std::move(source);
  s_->capacity = capacity_bytes;
}

TraceRecorder::~TraceRecorder() {
  if (recording()) (void)stop();
}

Status TraceRecorder::start(const std::string& path) {
  std::lock_guard lock(s_->mu);
  if (s_->file) return make_error(Errc::invalid_state, "already recording a trace to " + s_->summary.path);
  std::FILE* f = std::fopen(path.c_str(), "we");
  if (!f) return make_error(Errc::system_error, std::string("fopen: ") + std::strerror(errno) + " (" + path + ")");
  s_->file = f;
  s_->summary = Summary{.recording = true, .path = path};
  s_->next_trace_id = 0;
  s_->trace_ids.clear();
  std::fprintf(f, "# gpuheap-trace v1 source=%s pid=%d capacity=%zu\n", s_->source.c_str(), int(::getpid()),
               s_->capacity);
  std::fprintf(f, "# recorded from a live service: objects allocated before the recording started are not in it\n");
  recording_.store(true, std::memory_order_relaxed);
  return {};
}

Result<TraceRecorder::Summary> TraceRecorder::stop() {
  std::lock_guard lock(s_->mu);
  if (!s_->file) return make_error(Errc::invalid_state, "not recording a trace");
  recording_.store(false, std::memory_order_relaxed);
  // Free what is still live, in trace-id order, so the trace replays to an empty heap.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> live(s_->trace_ids.begin(), s_->trace_ids.end());
  std::sort(live.begin(), live.end(), [](auto& a, auto& b) { return a.second < b.second; });
  if (!live.empty()) std::fprintf(s_->file, "# recording stopped: objects still live in the service are freed here\n");
  for (const auto& [id, t] : live) s_->free(id);
  std::fprintf(s_->file, "# end\n");
  const bool failed = std::ferror(s_->file) != 0;
  const bool close_failed = std::fclose(s_->file) != 0;
  s_->file = nullptr;
  s_->trace_ids.clear();
  s_->summary.recording = false;
  if (failed || close_failed)
    return make_error(Errc::system_error, "writing the trace " + s_->summary.path + " failed (disk full?)");
  return s_->summary;
}

TraceRecorder::Summary TraceRecorder::summary() const {
  std::lock_guard lock(s_->mu);
  return s_->summary;
}

void TraceRecorder::on_allocate(std::uint64_t id, std::size_t bytes) {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (s_->file) s_->allocate(id, bytes);
}

void TraceRecorder::on_free(std::uint64_t id) {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (s_->file) s_->free(id);
}

void TraceRecorder::on_resize(std::uint64_t id, std::size_t new_bytes) {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (!s_->file) return;
  // The trace format models growth as reallocation: the new buffer exists before the old one
  // goes, as in gen_trace.py. An object from before the recording simply appears here.
  auto it = s_->trace_ids.find(id);
  if (it == s_->trace_ids.end()) {
    s_->allocate(id, new_bytes);
    return;
  }
  const std::uint64_t old = it->second;
  s_->allocate(id, new_bytes);
  s_->line("f %llu\n", old);
  ++s_->summary.frees;
}

void TraceRecorder::on_step() {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (!s_->file) return;
  s_->line("s\n");
  ++s_->summary.steps;
}

void TraceRecorder::on_probe(std::size_t bytes) {
  if (!recording()) return;
  std::lock_guard lock(s_->mu);
  if (!s_->file) return;
  s_->line("p %llu\n", bytes);
  ++s_->summary.probes;
}

}  // namespace valet
