// A gpuheap-trace v1, streamed: TraceReader hands out one checked op at a time, so memory grows
// with the objects live at once, never with the trace's length. valet-replay reads a trace twice:
// check_trace() first (a malformed or corrupt trace is refused with its line number before the
// heap is touched), then a second TraceReader feeds the replay.
//
// Format (written by `valet-replay generate`, workload.h, and by valet::TraceRecorder from a live
// service): one op a line, '#' starts a comment.
//   a <id> <bytes>   allocate object <id> of <bytes> bytes
//   f <id>           free object <id>
//   s                step boundary (a serving tick has ended)
//   p <bytes>        probe: allocate one object of <bytes> bytes and free it at once
// The header comment `# gpuheap-trace v1 ... capacity=<bytes>` names the memory the trace was
// written for. Files ending in .gz, or gzip data under any name, are decompressed on the fly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "line_source.h"
#include "valet/result.h"

namespace valet::replay {

enum class OpKind : std::uint8_t { allocate, free, step, probe };

struct TraceOp {
  OpKind kind = OpKind::step;
  std::uint32_t line = 0;   // 1-based line of the file, for messages
  std::uint64_t id = 0;     // allocate/free: the object's id as the trace writes it
  std::uint64_t bytes = 0;  // allocate/probe: the size asked; free: the size of the freed object
  // allocate/free: the object's slot, so the replayer keeps its objects in a plain vector rather
  // than a hash map keyed by trace ids. A slot is reused once its object is freed, so slots
  // number the most objects live at once, not every allocation.
  std::uint32_t object = 0;
};

// What a whole pass over a trace found.
struct TraceSummary {
  std::optional<std::size_t> header_capacity;  // `capacity=` of the header comment
  std::uint64_t ops = 0;
  std::uint32_t objects = 0;  // object slots: [0, objects)
  std::uint64_t steps = 0;
  std::uint64_t probes = 0;
};

class TraceReader {
 public:
  explicit TraceReader(const std::string& path);

  // The next op, checked: syntax, numbers, ids (no allocation of a live id, no free of an id that
  // is not live), sizes (> 0). False at the end of the trace or on an error (error() says which).
  bool next(TraceOp& op);
  const std::optional<LineError>& error() const { return error_; }
  // The summary of the ops read so far (header_capacity: once the first op has been read).
  const TraceSummary& summary() const { return summary_; }
  // After an error: reads on to the end of a gzip stream, and if it is damaged further on, makes
  // error() say so instead (the damage explains a line that looked wrong).
  void blame_damage();

 private:
  bool fail(std::size_t line, std::string message);
  bool parse(std::string_view body, std::size_t line, TraceOp& op);
  bool read_header_comment(std::string_view comment, std::size_t line);

  struct LiveObject {
    std::uint32_t object;
    std::uint64_t bytes;
  };

  std::unique_ptr<LineSource> source_;
  std::unordered_map<std::uint64_t, LiveObject> live_;  // trace id -> slot
  std::vector<std::uint32_t> free_slots_;
  TraceSummary summary_;
  bool seen_op_ = false;
  std::optional<LineError> error_;
};

// Reads the whole trace once and checks it. A trace that holds no operations is an error, and so
// is a gzip stream damaged anywhere, even after a line that looked wrong (damaged deflate data
// can decode to garbage before zlib notices: the damage is what to report).
Result<TraceSummary> check_trace(const std::string& path);

}  // namespace valet::replay
