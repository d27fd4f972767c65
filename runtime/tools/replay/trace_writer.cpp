// Writing a gpuheap-trace v1 (see trace_writer.h).
#include "trace_writer.h"

#include <cerrno>
#include <charconv>
#include <cstring>

namespace valet::replay {

namespace {

constexpr std::size_t kFlushBytes = std::size_t{1} << 16;

bool ends_with_gz(const std::string& path) { return path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0; }

// Appends the decimal digits of `value` (to_chars: no locale, no allocation).
void append_number(std::string& out, std::uint64_t value) {
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, value);
  out.append(digits, end);
}

}  // namespace

TraceWriter::TraceWriter(const std::string& path) : path_(path) {
  buffer_.reserve(kFlushBytes * 2);
  errno = 0;
  if (path == "-") {
    file_ = stdout;
  } else if (ends_with_gz(path)) {
    // "wb9" would be smaller but several times slower; 6 is zlib's own default. gzopen writes a
    // header without a timestamp, so the same lines give the same bytes.
    gz_ = gzopen(path.c_str(), "wb6");
    if (!gz_) fail("cannot open for writing: " + std::string(errno ? std::strerror(errno) : "out of memory"));
  } else {
    file_ = std::fopen(path.c_str(), "wb");
    owns_file_ = true;
    if (!file_) fail("cannot open for writing: " + std::string(std::strerror(errno)));
  }
}

TraceWriter::~TraceWriter() { (void)finish(); }

Status TraceWriter::status() const {
  if (error_.empty()) return {};
  return make_error(Errc::system_error, path_ + ": " + error_);
}

void TraceWriter::fail(std::string message) {
  if (error_.empty()) error_ = std::move(message);
}

void TraceWriter::put(std::string_view text) {
  buffer_.append(text);
  if (buffer_.size() >= kFlushBytes) flush();
}

void TraceWriter::flush() {
  if (buffer_.empty() || !error_.empty()) {
    buffer_.clear();
    return;
  }
  if (gz_) {
    if (gzwrite(gz_, buffer_.data(), unsigned(buffer_.size())) != int(buffer_.size())) {
      int code = Z_OK;
      const char* why = gzerror(gz_, &code);
      fail(std::string("write failed: ") + (code == Z_ERRNO ? std::strerror(errno) : why ? why : "zlib error"));
    }
  } else if (file_ && std::fwrite(buffer_.data(), 1, buffer_.size(), file_) != buffer_.size()) {
    fail("write failed: " + std::string(std::strerror(errno)));
  }
  buffer_.clear();
}

void TraceWriter::comment(std::string_view text) {
  put("# ");
  put(text);
  put("\n");
}

void TraceWriter::allocate(std::uint64_t id, std::uint64_t bytes) {
  buffer_ += "a ";
  append_number(buffer_, id);
  buffer_ += ' ';
  append_number(buffer_, bytes);
  put("\n");
}

void TraceWriter::free(std::uint64_t id) {
  buffer_ += "f ";
  append_number(buffer_, id);
  put("\n");
}

void TraceWriter::step() { put("s\n"); }

void TraceWriter::probe(std::uint64_t bytes) {
  buffer_ += "p ";
  append_number(buffer_, bytes);
  put("\n");
}

Status TraceWriter::finish() {
  flush();
  if (gz_) {
    const int rc = gzclose(gz_);
    gz_ = nullptr;
    if (rc != Z_OK) fail("closing the gzip stream failed (zlib error " + std::to_string(rc) + ")");
  } else if (file_) {
    if (std::fflush(file_) != 0) fail("write failed: " + std::string(std::strerror(errno)));
    if (owns_file_ && std::fclose(file_) != 0) fail("closing failed: " + std::string(std::strerror(errno)));
    file_ = nullptr;
  }
  return status();
}

}  // namespace valet::replay
