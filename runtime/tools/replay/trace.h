// A gpuheap-trace v1, read whole into memory before the replay starts, so that a malformed trace
// is refused (with its line number) before the heap is touched and parsing costs nothing during
// the timed replay.
//
// Format (written by gen_trace.py): one op a line, '#' starts a comment.
//   a <id> <bytes>   allocate object <id> of <bytes> bytes
//   f <id>           free object <id>
//   s                step boundary (a serving tick has ended)
//   p <bytes>        probe: allocate one object of <bytes> bytes and free it at once
// The header comment `# gpuheap-trace v1 ... capacity=<bytes>` names the memory the trace was
// written for. Files ending in .gz, or gzip data under any name, are decompressed on the fly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace valet::replay {

enum class OpKind : std::uint8_t { allocate, free, step, probe };

struct TraceOp {
  OpKind kind = OpKind::step;
  std::uint32_t line = 0;   // 1-based line of the file, for messages
  std::uint64_t id = 0;     // allocate/free: the object's id as the trace writes it
  std::uint64_t bytes = 0;  // allocate/probe: the size asked; free: the size of the freed object
  // allocate/free: the object's dense number (the ordinal of its allocation), so the replayer
  // keeps its objects in a plain vector rather than a hash map keyed by trace ids (ids may be
  // reused after a free; object numbers never are).
  std::uint32_t object = 0;
};

struct Trace {
  std::vector<TraceOp> ops;
  std::optional<std::size_t> header_capacity;  // `capacity=` of the header comment
  std::uint32_t objects = 0;                   // allocations: object numbers are [0, objects)
  std::size_t steps = 0;
  std::size_t probes = 0;
};

// Thrown for a trace that cannot be read or is malformed. line() is 0 for file-level errors
// (missing file, corrupt gzip stream).
class TraceError : public std::runtime_error {
 public:
  TraceError(std::size_t line, const std::string& what);
  std::size_t line() const { return line_; }

 private:
  std::size_t line_;
};

// Reads and checks a whole trace: syntax, numbers, ids (no allocation of a live id, no free of an
// id that is not live), sizes (> 0). Objects still live at the end are allowed.
Trace read_trace(const std::string& path);

}  // namespace valet::replay
