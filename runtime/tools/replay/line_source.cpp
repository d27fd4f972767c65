// Reading a trace's lines in blocks (see line_source.h).
#include "line_source.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace valet::replay {

namespace {

constexpr std::size_t kBlock = std::size_t{1} << 18;

bool ends_with_gz(const std::string& path) { return path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0; }

}  // namespace

std::string LineError::to_string() const { return line ? "line " + std::to_string(line) + ": " + message : message; }

std::string quote_bytes(std::string_view text, std::size_t max) {
  std::string out;
  const std::size_t n = text.size() < max ? text.size() : max;
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  if (n < text.size()) out += "...";
  return out;
}

LineSource::LineSource(const std::string& path) : path_(path), buffer_(kBlock) {
  errno = 0;
  file_ = gzopen(path.c_str(), "rb");
  if (!file_) {
    const int err = errno;
    fail(0, false, "cannot open the trace: " + std::string(err ? std::strerror(err) : "out of memory"));
    return;
  }
  gzbuffer(file_, kBlock);
  compressed_ = gzdirect(file_) == 0;
  if (!compressed_ && ends_with_gz(path)) {
    // An empty file is an empty trace; anything else named .gz must be gzip data. Damage to the
    // gzip header makes zlib read the file through unchanged, as binary "lines".
    if (!fill()) return;
    if (end_ > 0) fail(0, true, "corrupt gzip data: the file is named .gz but holds no gzip stream");
  }
}

LineSource::~LineSource() {
  if (file_) gzclose(file_);
}

bool LineSource::fail(std::size_t line, bool corrupt, std::string message) {
  if (!error_) error_ = LineError{line, corrupt, std::move(message)};
  return false;
}

// zlib's message without the file's name, which it puts first (the caller names the file).
std::string LineSource::zlib_says(const char* message) const {
  std::string_view m = message ? message : "?";
  if (m.size() > path_.size() + 2 && m.substr(0, path_.size()) == path_ && m.substr(path_.size(), 2) == ": ")
    m.remove_prefix(path_.size() + 2);
  return quote_bytes(m, 200);
}

bool LineSource::read_error() {
  int code = Z_OK;
  const char* message = gzerror(file_, &code);
  switch (code) {
    case Z_OK:
      return true;
    case Z_BUF_ERROR:
      return fail(0, true, "corrupt gzip data: the stream ends early (the file is truncated)");
    case Z_DATA_ERROR:
      return fail(0, true, "corrupt gzip data (zlib: " + zlib_says(message) + ")");
    case Z_ERRNO:
      return fail(0, false, "cannot read the trace: " + std::string(std::strerror(errno)));
    default:
      return fail(0, false, "cannot read the trace (zlib: " + zlib_says(message) + ")");
  }
}

bool LineSource::fill() {
  if (error_ || eof_) return false;
  const int n = gzread(file_, buffer_.data(), unsigned(buffer_.size()));
  // A short or empty read may still carry an error (a truncated stream reads as its end).
  if (!read_error()) return false;
  if (n < 0) return fail(0, false, "cannot read the trace");
  begin_ = 0;
  end_ = std::size_t(n);
  if (n == 0) eof_ = true;
  return n > 0;
}

bool LineSource::next(std::string_view& line) {
  if (error_) return false;
  carry_.clear();
  for (;;) {
    const char* from = buffer_.data() + begin_;
    const auto* nl = static_cast<const char*>(std::memchr(from, '\n', end_ - begin_));
    const std::size_t take = nl ? std::size_t(nl - from) : end_ - begin_;
    if (carry_.size() + take > kMaxLine) return fail(line_number_ + 1, false, "line longer than 64 KiB");
    if (nl && carry_.empty()) {
      line = std::string_view(from, take);  // the common case: the whole line is in the buffer
    } else {
      carry_.append(from, take);
      line = carry_;
    }
    begin_ += take + (nl ? 1 : 0);
    if (nl) break;
    if (!fill()) {
      if (error_ || carry_.empty()) return false;
      break;  // a last line without its newline
    }
  }
  ++line_number_;
  if (line.find('\0') != std::string_view::npos)
    return fail(line_number_, false,
                "holds a NUL byte at column " + std::to_string(line.find('\0') + 1) + " (a trace is text): '" +
                    quote_bytes(line) + "'");
  return true;
}

void LineSource::check_rest() {
  if (!compressed_ || (error_ && error_->corrupt)) return;
  std::optional<LineError> before = std::move(error_);
  error_.reset();
  while (fill()) {
  }
  if (!error_ || !error_->corrupt) error_ = std::move(before);
}

}  // namespace valet::replay
