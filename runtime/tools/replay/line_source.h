// Lines of a trace file, plain or gzip alike, read in blocks: memory stays bounded by the block
// and the longest line, however long the file. Errors are values: next() returns false and
// error() says what went wrong (the caller adds the file's name).
#pragma once

#include <zlib.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace valet::replay {

struct LineError {
  std::size_t line = 0;  // 1-based line the error is in; 0 for the file as a whole
  bool corrupt = false;  // the gzip data is damaged (or a .gz file holds no gzip data)
  std::string message;
  std::string to_string() const;  // "line N: message", or the message alone for line 0
};

class LineSource {
 public:
  static constexpr std::size_t kMaxLine = std::size_t{1} << 16;

  explicit LineSource(const std::string& path);
  ~LineSource();
  LineSource(const LineSource&) = delete;
  LineSource& operator=(const LineSource&) = delete;

  // The next line without its newline (valid until the next call), or false at the end of the
  // file or on an error (error() is then set). A line holding a NUL byte is an error: the trace
  // is text, and a NUL would otherwise hide the rest of its line.
  bool next(std::string_view& line);
  std::size_t line_number() const { return line_number_; }
  const std::optional<LineError>& error() const { return error_; }

  // Whether the file holds gzip data (zlib reads anything else through unchanged).
  bool compressed() const { return compressed_; }
  // Reads on to the end of the file, only to learn whether the gzip data is damaged further on
  // (damaged deflate data may decode to garbage lines before zlib notices). Sets error() if so.
  void check_rest();

 private:
  bool fill();  // more bytes into the buffer; false at the end or on an error
  bool fail(std::size_t line, bool corrupt, std::string message);
  bool read_error();
  std::string zlib_says(const char* message) const;

  std::string path_;
  gzFile file_ = nullptr;
  bool compressed_ = false;
  bool eof_ = false;
  std::vector<char> buffer_;
  std::size_t begin_ = 0, end_ = 0;  // unread bytes of buffer_
  std::string carry_;                // a line split across two blocks
  std::size_t line_number_ = 0;
  std::optional<LineError> error_;
};

// `text` with bytes other than printable ASCII written as \xHH, cut to `max` bytes of input
// (then "..." is appended), so that a message can quote a trace's bytes safely.
std::string quote_bytes(std::string_view text, std::size_t max = 48);

}  // namespace valet::replay
