// Writing a gpuheap-trace v1 (the format trace.h reads): to a file, gzip-compressed when its name
// ends in .gz, or to standard output for "-". Errors are values: a failed open or write is kept
// and returned by finish(), and the writer stops writing after the first one.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "valet/result.h"

namespace valet::replay {

class TraceWriter {
 public:
  // Opens `path` ("-": standard output, never compressed). Check status() before writing.
  explicit TraceWriter(const std::string& path);
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  Status status() const;

  void comment(std::string_view text);  // "# text"
  void allocate(std::uint64_t id, std::uint64_t bytes);
  void free(std::uint64_t id);
  void step();
  void probe(std::uint64_t bytes);

  // Flushes and closes; the first error of the whole write, if any.
  Status finish();

 private:
  void put(std::string_view text);
  void flush();
  void fail(std::string message);

  std::string path_;
  std::FILE* file_ = nullptr;  // plain text (or standard output)
  gzFile gz_ = nullptr;        // gzip
  bool owns_file_ = false;
  std::string buffer_;         // lines not yet handed to the file
  std::string error_;          // the first error, empty while all is well
};

}  // namespace valet::replay
