// The control protocol's commands. Every request is checked completely (version, command, the
// type and range of each field, no unknown fields) before anything runs, and every problem is
// answered with an error reply that names it.
//
//   info                      pid, backend, socket, uptime, what this service offers
//   stats                     to_json(heap.stats()) + pid, backend_kind, uptime_s, compactor, trace
//   compact                   budget (bytes, or a size string "64MiB"), max_pages, max_occupancy,
//                             target_fragmentation, wait (bool)
//   policy_get                the compactor's settings
//   policy_set                set: {key: value, ...}, applied all or none
//   pages                     the page map (page_map.h)
//   trace_start               path (absolute, a new file: see create_trace_file()); replies with
//                             `file`, the absolute name written, and the recording's figures
//   trace_stop                `file` and the figures, dropped and deferred lines included
#include "commands.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <set>

#include "page_map.h"
#include "valet/runtime.h"
#include "valet/stats_json.h"

namespace valet::control {

using nlohmann::json;

namespace {

// A request the server refuses; caught in handle_request and turned into an error reply.
struct BadRequest {
  std::string message;
  json extra = json::object();
};

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// "0", "0.25", "1": numbers as people write them in messages.
std::string shortest(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

// The fields of one command's request, checked on access.
class Fields {
 public:
  Fields(const json& request, std::string cmd, std::initializer_list<const char*> allowed) : r_(request), cmd_(std::move(cmd)) {
    std::set<std::string> ok{"v", "cmd", "id"};
    for (const char* a : allowed) ok.insert(a);
    for (const auto& [key, value] : r_.items())
      if (!ok.count(key)) {
        std::vector<std::string> names(ok.begin(), ok.end());
        throw BadRequest{cmd_ + ": unknown field '" + key + "' (fields: " + joined(names) + ")"};
      }
  }
  bool has(const char* key) const { return r_.contains(key) && !r_.at(key).is_null(); }

  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = r_.at(key);
    if (!v.is_boolean()) throw BadRequest{cmd_ + ": '" + key + "' must be true or false, not " + v.dump()};
    return v.get<bool>();
  }
  // A byte or page count: a non-negative integer, or for sizes a string such as "64MiB".
  std::uint64_t count(const char* key, std::uint64_t fallback, bool size_strings) const {
    if (!has(key)) return fallback;
    const json& v = r_.at(key);
    if (v.is_number_unsigned()) return v.get<std::uint64_t>();
    if (v.is_number_float() && v.get<double>() >= 0 && v.get<double>() < 1.8e19 &&
        v.get<double>() == double(std::uint64_t(v.get<double>())))
      return std::uint64_t(v.get<double>());
    if (size_strings && v.is_string()) {
      auto n = parse_size(v.get<std::string>());
      if (!n.ok()) throw BadRequest{cmd_ + ": '" + key + "': " + n.error().message};
      return *n;
    }
    throw BadRequest{cmd_ + ": '" + key + "' must be a non-negative integer" +
                     (size_strings ? std::string(" or a size such as \"64MiB\"") : std::string()) + ", not " + v.dump()};
  }
  // A number in [lo, hi].
  double number(const char* key, double lo, double hi) const {
    const json& v = r_.at(key);
    if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi))
      throw BadRequest{cmd_ + ": '" + key + "' must be a number in [" + shortest(lo) + ", " + shortest(hi) +
                       "], not " + v.dump()};
    return v.get<double>();
  }
  std::string string(const char* key) const {
    if (!has(key)) throw BadRequest{cmd_ + ": '" + key + "' is required"};
    const json& v = r_.at(key);
    if (!v.is_string()) throw BadRequest{cmd_ + ": '" + key + "' must be a string, not " + v.dump()};
    return v.get<std::string>();
  }
  const json& object(const char* key) const {
    if (!has(key)) throw BadRequest{cmd_ + ": '" + key + "' is required"};
    const json& v = r_.at(key);
    if (!v.is_object()) throw BadRequest{cmd_ + ": '" + key + "' must be an object, not " + v.dump()};
    return v;
  }

 private:
  const json& r_;
  std::string cmd_;
};

json ok_reply() { return {{"v", kControlProtocolVersion}, {"ok", true}}; }
// Marks a reply built from another object (the stats, the page map) as a successful one.
void mark_ok(json& r) {
  r["v"] = kControlProtocolVersion;
  r["ok"] = true;
}

const char* kind_name(BackendKind k) { return k == BackendKind::cuda ? "cuda" : "host"; }

double uptime_s(const ServiceContext& ctx) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - ctx.started).count();
}

json counters_json(const Compactor::Counters& c) {
  return {{"cycles", c.cycles},       {"fragmentation", c.fragmentation},
          {"reserve_low", c.reserve_low}, {"idle", c.idle},
          {"explicit_requests", c.explicit_requests}, {"safepoints", c.safepoints}, {"tails", c.tails}};
}

json trace_json(const TraceRecorder::Summary& t) {
  return {{"recording", t.recording},         {"path", t.path},
          {"allocations", t.allocations},     {"frees", t.frees},
          {"steps", t.steps},                 {"probes", t.probes},
          {"lines", t.lines},                 {"dropped_lines", t.dropped_lines},
          {"deferred_frees", t.deferred_frees}, {"written_bytes", t.written_bytes},
          {"buffered_bytes", t.buffered_bytes}};
}

json info(const json& request, const ServiceContext& ctx) {
  Fields f(request, "info", {});
  json r = ok_reply();
  r["pid"] = int(::getpid());
  r["backend"] = ctx.heap.backend().name();
  r["backend_kind"] = kind_name(ctx.heap.backend().kind());
  r["socket"] = ctx.socket_path;
  r["uptime_s"] = uptime_s(ctx);
  r["protocol"] = kControlProtocolVersion;
  r["compactor"] = ctx.compaction != nullptr;
  r["trace"] = ctx.trace != nullptr;
  r["commands"] = command_names();
  return r;
}

json stats(const json& request, const ServiceContext& ctx) {
  Fields f(request, "stats", {});
  // The compactor's counters first: it counts a cycle after the heap recorded it, so read in this
  // order every cycle the compactor counts is also in the heap's compaction.cycles.
  const json compactor = ctx.compaction ? json{{"running", true}, {"counters", counters_json(ctx.compaction->counters())}}
                                        : json{{"running", false}};
  json r = to_json(ctx.heap.stats());
  mark_ok(r);
  r["pid"] = int(::getpid());
  r["backend_kind"] = kind_name(ctx.heap.backend().kind());
  r["page_bytes"] = ctx.heap.backend().granularity();
  r["uptime_s"] = uptime_s(ctx);
  r["compactor"] = compactor;
  if (ctx.trace) r["trace"] = trace_json(ctx.trace->summary());
  return r;
}

// Runs compaction cycles on the worker thread: one, or with a target fragmentation, until the
// target is met, a cycle achieves nothing, or kMaxCycles ran.
json compact_now(const ServiceContext& ctx, const CompactRequest& req, std::optional<double> target) {
  constexpr int kMaxCycles = 8;
  const HeapStats before = ctx.heap.stats();
  json r = ok_reply();
  r["fragmentation_before"] = before.fragmentation;
  r["mapped_bytes_before"] = before.mapped_bytes;
  if (target && before.fragmentation <= *target) {
    r["ran"] = false;
    r["reason"] = "fragmentation " + shortest(before.fragmentation) + " is already at or below the target " +
                  shortest(*target);
    return r;
  }
  CompactionRecord total;
  total.trigger = req.trigger;
  json cycles = json::array();
  for (int i = 0; i < (target ? kMaxCycles : 1); ++i) {
    auto rec = ctx.compaction ? ctx.compaction->request(req, true) : ctx.heap.compact(req);
    if (!rec.ok()) return error_reply("compact: " + rec.error().to_string());
    total += *rec;
    cycles.push_back(to_json(*rec));
    if (!target || ctx.heap.stats().fragmentation <= *target) break;
    if (rec->objects_moved == 0 && rec->pages_freed == 0 && rec->pages_meshed == 0) break;
  }
  const HeapStats after = ctx.heap.stats();
  r["ran"] = true;
  r["by"] = ctx.compaction ? "compactor" : "heap";
  r["record"] = to_json(total);
  r["cycles"] = cycles;
  r["fragmentation_after"] = after.fragmentation;
  r["mapped_bytes_after"] = after.mapped_bytes;
  r["live_bytes"] = after.live_bytes;
  if (target) r["target_reached"] = after.fragmentation <= *target;
  return r;
}

Outcome compact(const json& request, const ServiceContext& ctx) {
  Fields f(request, "compact", {"budget", "max_pages", "max_occupancy", "target_fragmentation", "wait"});
  CompactRequest req;
  req.trigger = CompactionTrigger::explicit_request;
  req.max_bytes = f.count("budget", req.max_bytes, true);
  req.max_pages = f.count("max_pages", req.max_pages, false);
  if (req.max_bytes == 0) throw BadRequest{"compact: 'budget' must be at least 1 byte"};
  if (req.max_pages == 0) throw BadRequest{"compact: 'max_pages' must be at least 1"};
  if (f.has("max_occupancy")) req.max_occupancy = f.number("max_occupancy", 0.0, 1.0);
  std::optional<double> target;
  if (f.has("target_fragmentation")) target = f.number("target_fragmentation", 0.0, 1.0);
  const bool wait = f.boolean("wait", false);

  Outcome out;
  if (wait) {
    out.job = [&ctx, req, target] { return compact_now(ctx, req, target); };
    return out;
  }
  // Not waiting: the reply goes now; the cycle runs on the worker (or is queued with the
  // compactor, which returns at once), and a failure is only logged.
  out.reply = ok_reply();
  out.reply["queued"] = true;
  out.reply["by"] = ctx.compaction ? "compactor" : "heap";
  out.job = [&ctx, req, target]() -> json {
    if (target && ctx.heap.stats().fragmentation <= *target) return nullptr;
    auto rec = ctx.compaction ? ctx.compaction->request(req, false) : ctx.heap.compact(req);
    if (!rec.ok() && ctx.log) ctx.log("background compaction failed: " + rec.error().to_string());
    return nullptr;
  };
  return out;
}

CompactionControl& compactor_of(const ServiceContext& ctx, const char* cmd) {
  if (!ctx.compaction)
    throw BadRequest{std::string(cmd) + ": this service runs no compactor, so it has no policy (compact still works)"};
  return *ctx.compaction;
}

// The policy as JSON values of their own types: settings are held as text (the form they are set
// in), but a reader of the reply wants 0.1 and true, not "0.1" and "true". Integers stay exact.
json typed_policy(const std::map<std::string, std::string>& values) {
  json out = json::object();
  for (const auto& [key, text] : values) {
    const char* end = text.data() + text.size();
    std::uint64_t u = 0;
    double d = 0;
    if (text == "true" || text == "false") out[key] = text == "true";
    else if (auto r = std::from_chars(text.data(), end, u); r.ec == std::errc() && r.ptr == end) out[key] = u;
    else if (auto r = std::from_chars(text.data(), end, d); r.ec == std::errc() && r.ptr == end) out[key] = d;
    else out[key] = text;
  }
  return out;
}

json policy_get(const json& request, const ServiceContext& ctx) {
  Fields f(request, "policy_get", {});
  auto& c = compactor_of(ctx, "policy_get");
  json r = ok_reply();
  r["policy"] = typed_policy(c.policy());
  r["keys"] = c.policy_keys();
  return r;
}

json policy_set(const json& request, const ServiceContext& ctx) {
  Fields f(request, "policy_set", {"set"});
  auto& c = compactor_of(ctx, "policy_set");
  const json& set = f.object("set");
  const auto keys = c.policy_keys();
  if (set.empty()) throw BadRequest{"policy_set: 'set' is empty; valid keys: " + joined(keys), {{"valid_keys", keys}}};
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const auto& [key, value] : set.items()) {
    if (std::find(keys.begin(), keys.end(), key) == keys.end())
      throw BadRequest{"policy_set: unknown key '" + key + "'; valid keys: " + joined(keys), {{"valid_keys", keys}}};
    if (value.is_string()) pairs.emplace_back(key, value.get<std::string>());
    else if (value.is_boolean() || value.is_number()) pairs.emplace_back(key, value.dump());
    else throw BadRequest{"policy_set: value of '" + key + "' must be a string, number or boolean, not " + value.dump(),
                          {{"valid_keys", keys}}};
  }
  if (auto st = c.set_policy(pairs); !st.ok())
    throw BadRequest{"policy_set: " + st.error().message + " (nothing was changed)", {{"valid_keys", keys}}};
  json r = ok_reply();
  r["policy"] = typed_policy(c.policy());
  return r;
}

json pages(const json& request, const ServiceContext& ctx) {
  Fields f(request, "pages", {});
  json r = page_map_json(ctx.heap.stats(), ctx.heap.page_map(), ctx.heap.backend().granularity());
  mark_ok(r);
  return r;
}

TraceRecorder& recorder_of(const ServiceContext& ctx, const char* cmd) {
  if (!ctx.trace) throw BadRequest{std::string(cmd) + ": this service does not record traces"};
  return *ctx.trace;
}

json trace_start(const json& request, const ServiceContext& ctx) {
  Fields f(request, "trace_start", {"path"});
  auto& t = recorder_of(ctx, "trace_start");
  const std::string path = f.string("path");
  // The service's working directory is not the client's: a relative path would surprise.
  // (The recorder checks the rest: no NUL, no '..', a new regular file only.)
  if (path.empty() || path[0] != '/')
    throw BadRequest{"trace_start: 'path' must be absolute, not '" + path.substr(0, path.find('\0')) + "'"};
  if (auto st = t.start(path); !st.ok()) throw BadRequest{"trace_start: " + st.error().message};
  json r = ok_reply();
  r["trace"] = trace_json(t.summary());
  r["file"] = r["trace"]["path"];  // the absolute file name written, directories resolved
  return r;
}

// Ends the recording and waits (up to the recorder's stop_timeout) for its writer to take the
// last lines: on the worker, so that a stuck trace file never holds up the server's thread.
Outcome trace_stop(const json& request, const ServiceContext& ctx) {
  Fields f(request, "trace_stop", {});
  auto& t = recorder_of(ctx, "trace_stop");
  Outcome out;
  out.job = [&t] {
    auto summary = t.stop();
    // A failed stop still ends the recording: its figures (what was written, dropped) go along.
    if (!summary.ok())
      throw BadRequest{"trace_stop: " + summary.error().message,
                       t.summary().path.empty() ? json::object() : json{{"trace", trace_json(t.summary())}}};
    json r = ok_reply();
    r["trace"] = trace_json(*summary);
    r["file"] = summary->path;
    return r;
  };
  return out;
}

Outcome dispatch(const json& request, const std::string& cmd, const ServiceContext& ctx) {
  auto now = [](json r) { return Outcome{std::move(r), {}}; };
  if (cmd == "info") return now(info(request, ctx));
  if (cmd == "stats") return now(stats(request, ctx));
  if (cmd == "compact") return compact(request, ctx);
  if (cmd == "policy_get") return now(policy_get(request, ctx));
  if (cmd == "policy_set") return now(policy_set(request, ctx));
  if (cmd == "pages") return now(pages(request, ctx));
  if (cmd == "trace_start") return now(trace_start(request, ctx));
  if (cmd == "trace_stop") return trace_stop(request, ctx);
  throw BadRequest{"unknown command '" + cmd + "' (commands: " + joined(command_names()) + ")"};
}

// Adds what every reply to this request carries: the command and the client's id.
void stamp(json& reply, const json& request) {
  if (!reply.is_object()) return;
  if (request.contains("cmd") && request["cmd"].is_string()) reply["cmd"] = request["cmd"];
  if (request.contains("id")) reply["id"] = request["id"];
}

}  // namespace

const std::vector<std::string>& command_names() {
  static const std::vector<std::string> names{"info",       "stats", "compact",     "policy_get",
                                              "policy_set", "pages", "trace_start", "trace_stop"};
  return names;
}

json error_reply(const std::string& message) {
  return {{"v", kControlProtocolVersion}, {"ok", false}, {"error", message}};
}

std::string encode_line(const json& reply) {
  return reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

Outcome handle_request(std::string_view line, const ServiceContext& ctx) {
  json request;
  try {
    request = json::parse(line);
  } catch (const json::parse_error& e) {
    // e.what() names the position and the problem ("unexpected end of input" for a truncation).
    return {error_reply(std::string("malformed request: not valid JSON: ") + e.what()), {}};
  }
  try {
    if (!request.is_object())
      throw BadRequest{std::string("malformed request: expected a JSON object, got ") + request.type_name()};
    if (request.contains("id") && !request["id"].is_primitive())
      throw BadRequest{"malformed request: 'id' must be a string, number, boolean or null"};
    if (!request.contains("v"))
      throw BadRequest{"missing protocol version: add \"v\":" + std::to_string(kControlProtocolVersion)};
    if (!request["v"].is_number_integer() || request["v"].get<std::int64_t>() != kControlProtocolVersion)
      throw BadRequest{"unsupported protocol version " + request["v"].dump() + " (this server speaks " +
                       std::to_string(kControlProtocolVersion) + ")"};
    if (!request.contains("cmd") || !request["cmd"].is_string())
      throw BadRequest{"malformed request: 'cmd' must be a string naming a command (" + joined(command_names()) + ")"};
    Outcome out = dispatch(request, request["cmd"].get<std::string>(), ctx);
    stamp(out.reply, request);
    if (out.job && out.reply.is_null()) {
      // The job's result is the reply: stamp it and never let an exception escape the worker.
      out.job = [job = std::move(out.job), request] {
        json r;
        try {
          r = job();
        } catch (const BadRequest& e) {
          r = error_reply(e.message);
          for (auto& [k, v] : e.extra.items()) r[k] = v;
        } catch (const std::exception& e) {
          r = error_reply(std::string("internal error: ") + e.what());
        }
        stamp(r, request);
        return r;
      };
    } else if (out.job) {
      out.job = [job = std::move(out.job)]() -> json {
        try {
          return job();
        } catch (...) {
          return nullptr;
        }
      };
    }
    return out;
  } catch (const BadRequest& e) {
    json r = error_reply(e.message);
    for (auto& [k, v] : e.extra.items()) r[k] = v;
    stamp(r, request);
    return {r, {}};
  } catch (const std::exception& e) {
    json r = error_reply(std::string("internal error: ") + e.what());
    stamp(r, request);
    return {r, {}};
  }
}

}  // namespace valet::control
