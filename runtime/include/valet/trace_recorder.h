// Records a live service's operations as a gpuheap-trace v1 (the format valet-replay replays and
// `valet-replay generate` writes): `a <id> <bytes>`, `f <id>`, `s`, `p <bytes>`.
//
// The recording side never waits for the file: lines go into a bounded in-memory buffer, and a
// writer thread of the recorder's own drains it into the sink. A slow or stuck sink therefore
// costs the service nothing but the lines that do not fit, which are dropped and counted (see
// Summary). stop() waits for the writer only up to Options::stop_timeout, so a stuck sink cannot
// hold up shutdown for long (the control server calls stop() on its worker, never on its thread).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "valet/result.h"

namespace valet {

// Where a recording goes. write() runs on the recorder's writer thread only and may block.
class TraceSink {
 public:
  virtual ~TraceSink() = default;
  // Writes all of `data`, or fails.
  virtual Status write(std::string_view data) = 0;
  // Called once after the last write; reports what a failed write-back would lose.
  virtual Status close() = 0;
};

// Creates a new trace file for `path` and returns a sink writing to it, with `resolved` set to the
// absolute file name written. The rules (the service's user may be steered by any client of its
// control socket, so a typo must never clobber a file):
//   - `path` is absolute, has no NUL byte, no `..` component, and names a file, not a directory;
//   - the file must not exist: it is created with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, so an
//     existing file, a symlink (dangling or not), a FIFO or a device at that name is refused;
//   - symlinks in the parent directories are followed (home and scratch directories are often
//     links), and `resolved` names the real directory, so the reply says where the file went.
// It never blocks on a FIFO or a device (O_NONBLOCK; anything but a regular file is refused).
// invalid_argument for a refused path, system_error when the file cannot be created.
Result<std::unique_ptr<TraceSink>> create_trace_file(const std::string& path, std::string* resolved);

// The service calls on_*() from its own allocation wrapper (the heap has no operation hook); each
// call costs one relaxed atomic load while not recording, and a short critical section with no
// I/O while recording. Thread-safe.
//
// Objects allocated before start() are not in the trace: their frees are dropped, and a resize of
// one is recorded as its first allocation. Trace ids are dense, in order of first appearance; a
// resize is recorded as a reallocation (allocate the new size, free the old object), as the
// trace format models KV-cache growth. stop() frees the objects still live, so every trace is
// self-contained and replays to an empty heap.
//
// When the buffer is full, an allocation, step or probe line is dropped (an object whose
// allocation was dropped is then treated like one from before the recording), and a free is
// deferred until the buffer has room again: a lossy trace still replays, to an empty heap.
class TraceRecorder {
 public:
  struct Options {
    std::size_t buffer_bytes = std::size_t{4} << 20;     // lines waiting for the writer, at most
    std::chrono::milliseconds stop_timeout{2000};         // stop() waits this long for the writer
  };

  // `source` and `capacity_bytes` go into the trace's header line (replayers read capacity=).
  explicit TraceRecorder(std::string source = "valet", std::size_t capacity_bytes = 0);
  TraceRecorder(std::string source, std::size_t capacity_bytes, Options options);
  ~TraceRecorder();  // stop() when recording
  TraceRecorder(const TraceRecorder&) = delete;
  TraceRecorder& operator=(const TraceRecorder&) = delete;

  struct Summary {
    bool recording = false;
    std::string path;  // the absolute file name written (symlinks in its directories resolved)
    std::uint64_t allocations = 0, frees = 0, steps = 0, probes = 0, lines = 0;
    std::uint64_t dropped_lines = 0;   // did not fit in the buffer: the trace is incomplete
    std::uint64_t deferred_frees = 0;  // written later than they happened, for want of room
    std::uint64_t written_bytes = 0;   // taken by the sink so far
    std::uint64_t buffered_bytes = 0;  // waiting for the sink
  };

  // Creates the file with create_trace_file(). invalid_state while recording, or while the last
  // recording's writer has not finished (see stop()); invalid_argument for a refused path;
  // system_error when the file cannot be created.
  Status start(const std::string& path);
  // Records to any sink; `description` is reported as Summary::path.
  Status start(std::unique_ptr<TraceSink> sink, const std::string& description);
  // invalid_state when not recording; system_error when the sink failed, or did not take the
  // trace's last lines within Options::stop_timeout (the writer then finishes, or stays stuck, on
  // its own; start() refuses until it has finished). Never waits longer than that, but may wait
  // that long: a caller that must not wait (the control server's thread) calls it elsewhere.
  Result<Summary> stop();
  Summary summary() const;
  bool recording() const { return recording_.load(std::memory_order_relaxed); }

  void on_allocate(std::uint64_t id, std::size_t bytes);
  void on_free(std::uint64_t id);
  void on_resize(std::uint64_t id, std::size_t new_bytes);
  void on_step();
  void on_probe(std::size_t bytes);

 private:
  struct State;
  std::unique_ptr<State> s_;
  std::atomic<bool> recording_{false};
};

}  // namespace valet
