// valetctl: inspect and steer a running Valet heap through its control socket, in the manner of
// redis-cli: `valetctl [-s SOCKET] COMMAND [--json]`.
//
// Exit status (docs/cli.md): 0 success; 1 the request ran but missed what the caller asked to
// detect (`compact --wait --target-fragmentation F` that did not reach F); 2 anything else that
// failed: bad usage or input, no service reachable, the service refused or failed the request.
// A failure prints one line on stderr, or with --json one error object on stdout.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "cli_usage.h"
#include "control_client.h"
#include "page_view.h"
#include "render_text.h"
#include "valet/control_server.h"
#include "valet/runtime.h"

namespace valetctl {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr int kExitOk = 0;
constexpr int kExitNotReached = 1;
constexpr int kExitError = 2;

// A failed command: the message, and the service's error reply when it refused the request.
struct Failure {
  std::string message;
  json reply = nullptr;
};

struct Args {
  std::string socket;
  bool json = false;
  // compact
  std::string budget;
  double target = -1;
  std::uint64_t max_pages = 0;
  bool wait = false;
  // policy set
  std::vector<std::string> pairs;
  // pages
  std::string svg;
  // watch
  double interval = 1.0;
  int count = 0;
  // trace start
  std::string trace_file;
};

volatile sig_atomic_t g_interrupted = 0;

void print_json(const json& j) { std::cout << j.dump() << std::endl; }

// One request to the chosen service; a refused request becomes a Failure.
json call(const Args& a, json request, std::chrono::milliseconds timeout = 10s) {
  auto socket = choose_socket(a.socket);
  if (!socket.ok()) throw Failure{socket.error().message};
  auto client = ControlClient::connect(*socket);
  if (!client.ok()) throw Failure{client.error().message};
  auto reply = client->call(std::move(request), timeout);
  if (!reply.ok()) throw Failure{reply.error().message};
  if (!reply->is_object() || !reply->value("ok", false)) {
    if (reply->is_object() && reply->contains("error") && (*reply)["error"].is_string())
      throw Failure{(*reply)["error"].get<std::string>(), *reply};
    throw Failure{"malformed reply: " + reply->dump()};
  }
  return *reply;
}

// The failure as the service words an error reply, so that scripts read one format.
json error_json(const Failure& f) {
  if (f.reply.is_object()) return f.reply;
  return {{"v", valet::kControlProtocolVersion}, {"ok", false}, {"error", f.message}};
}

void cmd_list(const Args& a) {
  std::vector<std::string> stale;
  auto services = discover_services(&stale);
  if (a.json) {
    json list = json::array();
    for (const auto& s : services) list.push_back({{"socket", s.socket}, {"info", s.info}});
    print_json({{"v", valet::kControlProtocolVersion}, {"ok", true}, {"dir", valet::control_socket_dir()}, {"services", list}, {"stale", stale}});
    return;
  }
  if (services.empty()) {
    std::cout << "no running valet services in " << valet::control_socket_dir() << "\n";
  } else {
    std::vector<std::vector<std::string>> rows{{"PID", "KIND", "UPTIME", "SOCKET", "BACKEND"}};
    for (const auto& s : services) {
      const json& i = s.info;
      char up[32];
      std::snprintf(up, sizeof up, "%.0fs", i.value("uptime_s", 0.0));
      rows.push_back({i.contains("pid") ? i["pid"].dump() : "?", i.value("backend_kind", std::string("?")), up, s.socket,
                      i.value("backend", std::string("?"))});
    }
    std::cout << table_text(rows);
  }
  if (!stale.empty()) std::cout << stale.size() << " stale socket(s) skipped\n";
}

void cmd_stats(const Args& a) {
  const json r = call(a, {{"cmd", "stats"}});
  if (a.json) print_json(r);
  else std::cout << stats_text(r);
}

int cmd_compact(const Args& a) {
  json req{{"cmd", "compact"}, {"wait", a.wait}};
  if (!a.budget.empty()) {
    auto bytes = valet::parse_size(a.budget);
    if (!bytes.ok()) throw Failure{"--budget: " + bytes.error().message};
    req["budget"] = *bytes;
  }
  if (a.target >= 0) req["target_fragmentation"] = a.target;
  if (a.max_pages) req["max_pages"] = a.max_pages;
  const json r = call(a, req, a.wait ? std::chrono::milliseconds(300s) : std::chrono::milliseconds(10s));
  if (a.json) print_json(r);
  else if (a.wait) std::cout << compact_text(r);
  else std::cout << "compaction requested (runs on the " << r.value("by", std::string("service")) << ")\n";
  // The one outcome a caller asks to detect: the target it set was not reached.
  const bool missed = r.contains("target_reached") && r["target_reached"].is_boolean() && !r["target_reached"].get<bool>();
  return missed ? kExitNotReached : kExitOk;
}

void cmd_policy_get(const Args& a) {
  const json r = call(a, {{"cmd", "policy_get"}});
  if (a.json) print_json(r);
  else std::cout << policy_text(r.value("policy", json::object()));
}

void cmd_policy_set(const Args& a) {
  json set = json::object();
  for (const auto& p : a.pairs) {
    const auto eq = p.find('=');
    if (eq == std::string::npos || eq == 0) throw Failure{"expected KEY=VALUE, got '" + p + "'"};
    set[p.substr(0, eq)] = p.substr(eq + 1);
  }
  const json r = call(a, {{"cmd", "policy_set"}, {"set", set}});
  if (a.json) print_json(r);
  else std::cout << policy_text(r.value("policy", json::object()));
}

void cmd_pages(const Args& a) {
  const json r = call(a, {{"cmd", "pages"}});
  if (!a.svg.empty()) {
    std::ofstream f(a.svg);
    f << page_map_svg(r);
    if (!f) throw Failure{"cannot write " + a.svg};
  }
  if (a.json) print_json(r);
  else std::cout << page_map_text(r, ::isatty(STDOUT_FILENO) && !std::getenv("NO_COLOR"));
  if (!a.svg.empty() && !a.json) std::cout << "SVG written to " << a.svg << "\n";
}

void on_interrupt(int) { g_interrupted = 1; }

void cmd_watch(const Args& a) {
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  const bool tty = ::isatty(STDOUT_FILENO);
  const auto interval = std::chrono::duration<double>(std::max(0.05, a.interval));
  for (int n = 0; !g_interrupted && (a.count <= 0 || n < a.count); ++n) {
    if (n > 0) {
      const auto until = std::chrono::steady_clock::now() + interval;
      while (!g_interrupted && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
      if (g_interrupted) break;
    }
    const json r = call(a, {{"cmd", "stats"}});
    if (a.json) {
      print_json(r);
    } else {
      if (tty) std::cout << "\033[H\033[2J";  // refresh in place
      else if (n > 0) std::cout << "\n";
      std::cout << stats_text(r) << std::flush;
    }
  }
}

void cmd_trace_start(const Args& a) {
  std::string path = a.trace_file;
  // The service resolves nothing against its own working directory: send an absolute path.
  if (!path.empty() && path[0] != '/') {
    char cwd[4096];
    if (!::getcwd(cwd, sizeof cwd)) throw Failure{"getcwd failed"};
    path = std::string(cwd) + "/" + path;
  }
  const json r = call(a, {{"cmd", "trace_start"}, {"path", path}});
  if (a.json) print_json(r);
  else std::cout << "recording a trace to " << r.value("file", path) << "\n";  // as the service resolved it
}

void cmd_trace_stop(const Args& a) {
  const json r = call(a, {{"cmd", "trace_stop"}});
  if (a.json) {
    print_json(r);
    return;
  }
  const json t = r.value("trace", json::object());
  std::cout << "trace written to " << t.value("path", std::string("?")) << ": " << t.value("lines", std::uint64_t{0}) << " lines, "
            << t.value("allocations", std::uint64_t{0}) << " allocations, " << t.value("frees", std::uint64_t{0}) << " frees, " << t.value("steps", std::uint64_t{0})
            << " steps, " << t.value("probes", std::uint64_t{0}) << " probes\n";
}

constexpr const char* kExitCodes =
    "Exit status: 0 success; 1 the request ran but missed what was asked to be detected (compact --wait\n"
    "--target-fragmentation F that did not reach F); 2 bad usage or input, no service reachable, or the\n"
    "service refused or failed the request. With --json a failure is one {\"ok\":false,\"error\":...}\n"
    "object on stdout, otherwise one line on stderr. See docs/cli.md.";

// Reports a failure in the form the caller asked for: a JSON error object with --json, one line
// on stderr otherwise.
int fail(bool as_json, const Failure& f) {
  if (as_json) print_json(error_json(f));
  else std::cerr << "valetctl: " << f.message << "\n";
  return kExitError;
}

int run(int argc, char** argv) {
  Args a;
  CLI::App app{"valetctl: inspect and steer running Valet heaps through their control sockets.\n"
               "Without -s, uses $VALET_CONTROL_SOCKET, else the only service in " +
               valet::control_socket_dir()};
  app.footer(kExitCodes);
  app.require_subcommand(1);
  // Global options may also follow the command: `valetctl stats --json -s SOCKET`.
  app.fallthrough();
  app.add_option("-s,--socket", a.socket, "the service's control socket");
  app.add_flag("--json", a.json, "print the reply as one JSON object");

  std::function<int(const Args&)> action;
  auto on = [&](CLI::App* sub, void (*f)(const Args&)) {
    sub->callback([&action, f] { action = [f](const Args& args) { return f(args), kExitOk; }; });
  };

  on(app.add_subcommand("list", "running services found, with pid and backend"), cmd_list);
  on(app.add_subcommand("stats", "a summary of the heap: memory, pages, operations, compaction"), cmd_stats);

  auto* compact = app.add_subcommand("compact", "trigger a compaction cycle now");
  compact->add_option("--budget", a.budget, "bytes to move at most (e.g. 64MiB)");
  compact->add_option("--target-fragmentation", a.target, "run cycles until fragmentation is at most F (exit 1 if not)")
      ->check(number_in(0, 1, "a fraction"));
  compact->add_option("--max-pages", a.max_pages, "pages to free at most")
      ->check(number_in(1, 1 << 30, "a whole number of pages", true));
  compact->add_flag("--wait", a.wait, "wait for the cycle and print its record");
  compact->callback([&action] { action = cmd_compact; });

  auto* policy = app.add_subcommand("policy", "read or change the compactor's policy");
  policy->require_subcommand(1);
  on(policy->add_subcommand("get", "print every policy setting"), cmd_policy_get);
  auto* pset = policy->add_subcommand("set", "change settings (all or none)");
  pset->add_option("pairs", a.pairs, "KEY=VALUE ...")->required();
  on(pset, cmd_policy_set);

  auto* pages = app.add_subcommand("pages", "draw the heap's page slots in use and its capacity not created");
  pages->add_option("--svg", a.svg, "also write the map as an SVG file");
  on(pages, cmd_pages);

  auto* watch = app.add_subcommand("watch", "stats refreshed in place until Ctrl-C");
  watch->add_option("-i,--interval", a.interval, "seconds between refreshes")
      ->check(number_in(0.05, 3600, "a number of seconds"));
  watch->add_option("--count", a.count, "stop after N refreshes (0: until Ctrl-C)")
      ->check(number_in(0, 1e9, "a whole number", true));
  on(watch, cmd_watch);

  auto* trace = app.add_subcommand("trace", "record the service's operations as a gpuheap-trace v1");
  trace->require_subcommand(1);
  auto* tstart = trace->add_subcommand("start", "start recording to FILE");
  tstart->add_option("file", a.trace_file, "trace file")->required();
  on(tstart, cmd_trace_start);
  on(trace->add_subcommand("stop", "stop recording and close the file"), cmd_trace_stop);

  // Known before parsing, so that a usage error is reported in the form asked for too.
  bool as_json = false;
  for (int i = 1; i < argc; ++i) as_json = as_json || std::string_view(argv[i]) == "--json";
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // CLI11 says "A subcommand is required" for a misspelt command: name it instead.
    const auto unknown = command_error(app, argc, argv);
    return fail(as_json, Failure{unknown ? *unknown : std::string(e.what()) + " (see valetctl --help)"});
  }
  try {
    return action(a);
  } catch (const Failure& f) {
    return fail(a.json, f);
  } catch (const std::exception& e) {
    return fail(a.json, Failure{std::string("internal error: ") + e.what()});
  }
}

}  // namespace
}  // namespace valetctl

int main(int argc, char** argv) try {
  return valetctl::run(argc, argv);
} catch (const std::exception& e) {  // no exception escapes a tool: exit 2 with what it says
  std::cerr << "valetctl: unexpected error: " << e.what() << "\n";
  return 2;
}
