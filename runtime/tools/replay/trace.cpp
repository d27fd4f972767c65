// Reading and checking a gpuheap-trace v1 (see trace.h).
#include "trace.h"

#include <sys/stat.h>

#include <charconv>
#include <limits>
#include <string_view>

namespace valet::replay {

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

// The number, or nullopt with `why` set.
std::optional<std::uint64_t> parse_number(std::string_view text, const char* what, std::string& why) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range) {
    why = std::string(what) + " '" + quote_bytes(text) + "' is out of range";
    return std::nullopt;
  }
  if (ec != std::errc() || end != text.data() + text.size()) {
    why = std::string(what) + " '" + quote_bytes(text) + "' is not a non-negative integer";
    return std::nullopt;
  }
  return value;
}

}  // namespace

TraceReader::TraceReader(const std::string& path) : source_(std::make_unique<LineSource>(path)) {
  if (source_->error()) error_ = source_->error();
}

bool TraceReader::fail(std::size_t line, std::string message) {
  if (!error_) error_ = LineError{line, false, std::move(message)};
  return false;
}

// The header comment: checks the format's version and picks up `capacity=`.
bool TraceReader::read_header_comment(std::string_view comment, std::size_t line) {
  const std::size_t tag = comment.find("gpuheap-trace");
  if (tag == std::string_view::npos) return true;
  const Fields f = split(comment.substr(tag));
  if (f.count < 2 || f.field[1] != "v1")
    return fail(line, "unsupported trace format '" + quote_bytes(comment.substr(tag)) +
                          "' (this replayer reads gpuheap-trace v1)");
  const std::size_t at = comment.find("capacity=");
  if (at == std::string_view::npos) return true;
  std::string_view rest = comment.substr(at + 9);
  std::size_t end = 0;
  while (end < rest.size() && !is_blank(rest[end])) ++end;
  std::string why;
  const auto capacity = parse_number(rest.substr(0, end), "header capacity", why);
  if (!capacity) return fail(line, why);
  summary_.header_capacity = *capacity;
  return true;
}

bool TraceReader::next(TraceOp& op) {
  std::string_view text;
  while (!error_ && source_->next(text)) {
    const std::size_t line = source_->line_number();
    if (line > std::numeric_limits<std::uint32_t>::max()) return fail(line, "trace longer than 2^32 lines");
    std::size_t start = 0;
    while (start < text.size() && is_blank(text[start])) ++start;
    const std::string_view body = text.substr(start);
    if (body.empty()) continue;
    if (body[0] == '#') {
      // Only comments before the first op form the header.
      if (!seen_op_ && !read_header_comment(body, line)) return false;
      continue;
    }
    if (!parse(body, line, op)) return false;
    seen_op_ = true;
    ++summary_.ops;
    return true;
  }
  if (source_->error()) error_ = source_->error();
  return false;
}

bool TraceReader::parse(std::string_view body, std::size_t line, TraceOp& t) {
  const Fields f = split(body);
  const std::string_view op = f.field[0];
  std::string why;
  auto arity = [&](std::size_t want, const char* usage) {
    if (f.count == want && !f.overflow) return true;
    std::string message = quote_bytes(op);  // appended piecewise: GCC 12 warns (falsely) on a + chain here
    message.insert(0, 1, '\'');
    message.append("' takes the form '").append(usage).append("'");
    return fail(line, std::move(message));
  };
  auto number = [&](std::size_t i, const char* what, std::uint64_t& out) {
    const auto v = parse_number(f.field[i], what, why);
    if (!v) return fail(line, why);
    out = *v;
    return true;
  };
  t = TraceOp{};
  t.line = std::uint32_t(line);
  if (op == "a") {
    if (!arity(3, "a <id> <bytes>") || !number(1, "object id", t.id) || !number(2, "size", t.bytes)) return false;
    t.kind = OpKind::allocate;
    if (t.bytes == 0) return fail(line, "allocation of 0 bytes");
    if (live_.size() == std::numeric_limits<std::uint32_t>::max()) return fail(line, "more than 2^32 objects live");
    std::uint32_t slot = summary_.objects;
    if (!free_slots_.empty()) slot = free_slots_.back();
    const auto [it, fresh] = live_.try_emplace(t.id, LiveObject{slot, t.bytes});
    if (!fresh) return fail(line, "object " + std::to_string(t.id) + " is allocated while it is live");
    if (free_slots_.empty())
      ++summary_.objects;
    else
      free_slots_.pop_back();
    t.object = slot;
  } else if (op == "f") {
    if (!arity(2, "f <id>") || !number(1, "object id", t.id)) return false;
    t.kind = OpKind::free;
    const auto it = live_.find(t.id);
    if (it == live_.end()) return fail(line, "free of object " + std::to_string(t.id) + ", which is not live");
    t.object = it->second.object;
    t.bytes = it->second.bytes;
    free_slots_.push_back(t.object);
    live_.erase(it);
  } else if (op == "s") {
    if (!arity(1, "s")) return false;
    t.kind = OpKind::step;
    ++summary_.steps;
  } else if (op == "p") {
    if (!arity(2, "p <bytes>") || !number(1, "probe size", t.bytes)) return false;
    t.kind = OpKind::probe;
    if (t.bytes == 0) return fail(line, "probe of 0 bytes");
    ++summary_.probes;
  } else {
    return fail(line, "unknown op '" + quote_bytes(op) + "' (expected a, f, s, p or a # comment)");
  }
  return true;
}

void TraceReader::blame_damage() {
  if (!error_ || error_->corrupt) return;
  source_->check_rest();
  if (source_->error() && source_->error()->corrupt) error_ = source_->error();
}

Result<TraceSummary> check_trace(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    return make_error(Errc::invalid_argument,
                      "not a regular file: the trace is read twice (checked, then replayed); write it to a file first");
  TraceReader reader(path);
  TraceOp op;
  while (reader.next(op)) {
  }
  if (reader.error()) {
    reader.blame_damage();
    return make_error(Errc::invalid_argument, reader.error()->to_string());
  }
  if (reader.summary().ops == 0) return make_error(Errc::invalid_argument, "the trace holds no operations");
  return reader.summary();
}

}  // namespace valet::replay
