// Reading and checking a gpuheap-trace v1 (see trace.h).
#include "trace.h"

#include <zlib.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>
#include <unordered_map>

namespace valet::replay {

TraceError::TraceError(std::size_t line, const std::string& what)
    : std::runtime_error(line ? "line " + std::to_string(line) + ": " + what : what), line_(line) {}

namespace {

// Whitespace-separated fields of one line (at most `kMaxFields`; more is an error the caller
// reports with the op's expected arity).
struct Fields {
  static constexpr std::size_t kMaxFields = 4;
  std::string_view field[kMaxFields];
  std::size_t count = 0;
  bool overflow = false;
};

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

Fields split(std::string_view text) {
  Fields f;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_blank(text[i])) ++i;
    if (i == text.size()) break;
    std::size_t j = i;
    while (j < text.size() && !is_blank(text[j])) ++j;
    if (f.count == Fields::kMaxFields) {
      f.overflow = true;
      break;
    }
    f.field[f.count++] = text.substr(i, j - i);
    i = j;
  }
  return f;
}

std::uint64_t parse_number(std::string_view text, std::size_t line, const char* what) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range)
    throw TraceError(line, std::string(what) + " '" + std::string(text) + "' is out of range");
  if (ec != std::errc() || end != text.data() + text.size())
    throw TraceError(line, std::string(what) + " '" + std::string(text) + "' is not a non-negative integer");
  return value;
}

// Opens plain or gzip files alike: zlib reads data that is not gzip through unchanged.
class LineSource {
 public:
  explicit LineSource(const std::string& path) : file_(gzopen(path.c_str(), "rb")) {
    if (!file_) {
      const int err = errno;
      throw TraceError(0, "cannot open trace '" + path + "': " + (err ? std::strerror(err) : "out of memory"));
    }
    gzbuffer(file_, 1 << 17);
  }
  ~LineSource() { gzclose(file_); }
  LineSource(const LineSource&) = delete;
  LineSource& operator=(const LineSource&) = delete;

  // The next line without its newline, or false at the end of the file.
  bool next(std::string& line) {
    line.clear();
    char buf[4096];
    for (;;) {
      if (!gzgets(file_, buf, sizeof buf)) {
        int code = Z_OK;
        const char* message = gzerror(file_, &code);
        if (code == Z_BUF_ERROR)
          throw TraceError(
              0, "cannot read trace: the gzip stream ends early (after line " + std::to_string(line_number_) + ")");
        if (code != Z_OK) throw TraceError(0, std::string("cannot read trace: ") + message);
        if (line.empty()) return false;
        ++line_number_;  // a last line without its newline
        return true;
      }
      const std::size_t n = std::strlen(buf);
      line.append(buf, n);
      if (n > 0 && buf[n - 1] == '\n') {
        line.pop_back();
        ++line_number_;
        return true;
      }
      if (line.size() > (std::size_t{1} << 16)) throw TraceError(line_number_ + 1, "line longer than 64 KiB");
    }
  }
  std::size_t line_number() const { return line_number_; }

 private:
  gzFile file_;
  std::size_t line_number_ = 0;
};

// The header comment: checks the format's version and picks up `capacity=`.
void read_header_comment(std::string_view comment, std::size_t line, Trace& trace) {
  const std::size_t tag = comment.find("gpuheap-trace");
  if (tag == std::string_view::npos) return;
  const Fields f = split(comment.substr(tag));
  if (f.count < 2 || f.field[1] != "v1")
    throw TraceError(line, "unsupported trace format '" + std::string(comment.substr(tag)) +
                               "' (this replayer reads gpuheap-trace v1)");
  const std::size_t at = comment.find("capacity=");
  if (at == std::string_view::npos) return;
  std::string_view rest = comment.substr(at + 9);
  std::size_t end = 0;
  while (end < rest.size() && !is_blank(rest[end])) ++end;
  trace.header_capacity = parse_number(rest.substr(0, end), line, "header capacity");
}

struct LiveObject {
  std::uint32_t object;
  std::uint64_t bytes;
};

}  // namespace

Trace read_trace(const std::string& path) {
  Trace trace;
  LineSource source(path);
  std::unordered_map<std::uint64_t, LiveObject> live;  // trace id -> object
  std::string text;
  bool seen_op = false;
  while (source.next(text)) {
    const std::size_t line = source.line_number();
    if (line > std::numeric_limits<std::uint32_t>::max()) throw TraceError(line, "trace longer than 2^32 lines");
    std::size_t start = 0;
    while (start < text.size() && is_blank(text[start])) ++start;
    std::string_view body = std::string_view(text).substr(start);
    if (body.empty()) continue;
    if (body[0] == '#') {
      // Only comments before the first op form the header.
      if (!seen_op) read_header_comment(body, line, trace);
      continue;
    }
    const Fields f = split(body);
    const std::string_view op = f.field[0];
    auto arity = [&](std::size_t want, const char* usage) {
      if (f.count != want || f.overflow)
        throw TraceError(line, "'" + std::string(op) + "' takes the form '" + usage + "'");
    };
    TraceOp t;
    t.line = std::uint32_t(line);
    if (op == "a") {
      arity(3, "a <id> <bytes>");
      t.kind = OpKind::allocate;
      t.id = parse_number(f.field[1], line, "object id");
      t.bytes = parse_number(f.field[2], line, "size");
      if (t.bytes == 0) throw TraceError(line, "allocation of 0 bytes");
      if (trace.objects == std::numeric_limits<std::uint32_t>::max())
        throw TraceError(line, "more than 2^32 allocations");
      t.object = trace.objects++;
      const auto [it, fresh] = live.try_emplace(t.id, LiveObject{t.object, t.bytes});
      if (!fresh) throw TraceError(line, "object " + std::to_string(t.id) + " is allocated while it is live");
    } else if (op == "f") {
      arity(2, "f <id>");
      t.kind = OpKind::free;
      t.id = parse_number(f.field[1], line, "object id");
      const auto it = live.find(t.id);
      if (it == live.end()) throw TraceError(line, "free of object " + std::to_string(t.id) + ", which is not live");
      t.object = it->second.object;
      t.bytes = it->second.bytes;
      live.erase(it);
    } else if (op == "s") {
      arity(1, "s");
      t.kind = OpKind::step;
      ++trace.steps;
    } else if (op == "p") {
      arity(2, "p <bytes>");
      t.kind = OpKind::probe;
      t.bytes = parse_number(f.field[1], line, "probe size");
      if (t.bytes == 0) throw TraceError(line, "probe of 0 bytes");
      ++trace.probes;
    } else {
      throw TraceError(line, "unknown op '" + std::string(op) + "' (expected a, f, s, p or a # comment)");
    }
    seen_op = true;
    trace.ops.push_back(t);
  }
  return trace;
}

}  // namespace valet::replay
