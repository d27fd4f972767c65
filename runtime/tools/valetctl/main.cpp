// valetctl: inspect and steer a running Valet heap through its control socket, in the manner of
// redis-cli: `valetctl [-s SOCKET] COMMAND [--json]`.
//
// Exit status: 0 success; 1 the service refused or failed the request; 2 no service could be
// reached; CLI11's codes (non-zero) for usage errors. Failures print one line on stderr.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "control_client.h"
#include "page_view.h"
#include "render_text.h"
#include "valet/control_server.h"
#include "valet/runtime.h"

namespace valetctl {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr int kExitRefused = 1;
constexpr int kExitUnreachable = 2;

struct Failure {
  int code;
  std::string message;
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
  if (!socket.ok()) throw Failure{kExitUnreachable, socket.error().message};
  auto client = ControlClient::connect(*socket);
  if (!client.ok()) throw Failure{kExitUnreachable, client.error().message};
  auto reply = client->call(std::move(request), timeout);
  if (!reply.ok()) throw Failure{kExitUnreachable, reply.error().message};
  if (!reply->is_object() || !reply->value("ok", false)) {
    const std::string why = reply->is_object() && reply->contains("error") && (*reply)["error"].is_string()
                                ? (*reply)["error"].get<std::string>()
                                : "malformed reply: " + reply->dump();
    throw Failure{kExitRefused, why};
  }
  return *reply;
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
    std::printf("%-8s %-6s %-10s %s\n", "PID", "KIND", "UPTIME", "SOCKET  BACKEND");
    for (const auto& s : services) {
      const json& i = s.info;
      char up[32];
      std::snprintf(up, sizeof up, "%.0fs", i.value("uptime_s", 0.0));
      std::printf("%-8s %-6s %-10s %s  %s\n", i.contains("pid") ? i["pid"].dump().c_str() : "?",
                  i.value("backend_kind", std::string("?")).c_str(), up, s.socket.c_str(),
                  i.value("backend", std::string("?")).c_str());
    }
  }
  if (!stale.empty()) std::cout << stale.size() << " stale socket(s) skipped\n";
}

void cmd_stats(const Args& a) {
  const json r = call(a, {{"cmd", "stats"}});
  if (a.json) print_json(r);
  else std::cout << stats_text(r);
}

void cmd_compact(const Args& a) {
  json req{{"cmd", "compact"}, {"wait", a.wait}};
  if (!a.budget.empty()) {
    auto bytes = valet::parse_size(a.budget);
    if (!bytes.ok()) throw Failure{kExitRefused, "--budget: " + bytes.error().message};
    req["budget"] = *bytes;
  }
  if (a.target >= 0) req["target_fragmentation"] = a.target;
  if (a.max_pages) req["max_pages"] = a.max_pages;
  const json r = call(a, req, a.wait ? std::chrono::milliseconds(300s) : std::chrono::milliseconds(10s));
  if (a.json) print_json(r);
  else if (a.wait) std::cout << compact_text(r);
  else std::cout << "compaction requested (runs on the " << r.value("by", std::string("service")) << ")\n";
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
    if (eq == std::string::npos || eq == 0) throw Failure{kExitRefused, "expected KEY=VALUE, got '" + p + "'"};
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
    if (!f) throw Failure{kExitRefused, "cannot write " + a.svg};
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
    if (!::getcwd(cwd, sizeof cwd)) throw Failure{kExitRefused, "getcwd failed"};
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

int run(int argc, char** argv) {
  Args a;
  CLI::App app{"valetctl: inspect and steer running Valet heaps through their control sockets.\n"
               "Without -s, uses $VALET_CONTROL_SOCKET, else the only service in " +
               valet::control_socket_dir()};
  app.require_subcommand(1);
  // Global options may also follow the command: `valetctl stats --json -s SOCKET`.
  app.fallthrough();
  app.add_option("-s,--socket", a.socket, "the service's control socket");
  app.add_flag("--json", a.json, "print the reply as one JSON object");

  std::function<void(const Args&)> action;
  auto on = [&](CLI::App* sub, void (*f)(const Args&)) { sub->callback([&action, f] { action = f; }); };

  on(app.add_subcommand("list", "running services found, with pid and backend"), cmd_list);
  on(app.add_subcommand("stats", "a summary of the heap: memory, pages, operations, compaction"), cmd_stats);

  auto* compact = app.add_subcommand("compact", "trigger a compaction cycle now");
  compact->add_option("--budget", a.budget, "bytes to move at most (e.g. 64MiB)");
  compact->add_option("--target-fragmentation", a.target, "run cycles until fragmentation is at most F")
      ->check(CLI::Range(0.0, 1.0));
  compact->add_option("--max-pages", a.max_pages, "pages to free at most")->check(CLI::PositiveNumber);
  compact->add_flag("--wait", a.wait, "wait for the cycle and print its record");
  on(compact, cmd_compact);

  auto* policy = app.add_subcommand("policy", "read or change the compactor's policy");
  policy->require_subcommand(1);
  on(policy->add_subcommand("get", "print every policy setting"), cmd_policy_get);
  auto* pset = policy->add_subcommand("set", "change settings (all or none)");
  pset->add_option("pairs", a.pairs, "KEY=VALUE ...")->required();
  on(pset, cmd_policy_set);

  auto* pages = app.add_subcommand("pages", "draw the heap's pages (one cell per 2 MiB page)");
  pages->add_option("--svg", a.svg, "also write the map as an SVG file");
  on(pages, cmd_pages);

  auto* watch = app.add_subcommand("watch", "stats refreshed in place until Ctrl-C");
  watch->add_option("-i,--interval", a.interval, "seconds between refreshes")->check(CLI::PositiveNumber);
  watch->add_option("--count", a.count, "stop after N refreshes");
  on(watch, cmd_watch);

  auto* trace = app.add_subcommand("trace", "record the service's operations as a gpuheap-trace v1");
  trace->require_subcommand(1);
  auto* tstart = trace->add_subcommand("start", "start recording to FILE");
  tstart->add_option("file", a.trace_file, "trace file")->required();
  on(tstart, cmd_trace_start);
  on(trace->add_subcommand("stop", "stop recording and close the file"), cmd_trace_stop);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other failure.
    std::cerr << "valetctl: " << e.what() << " (see valetctl --help)\n";
    return e.get_exit_code();
  }
  try {
    action(a);
  } catch (const Failure& f) {
    std::cerr << "valetctl: " << f.message << "\n";
    return f.code;
  }
  return 0;
}

}  // namespace
}  // namespace valetctl

int main(int argc, char** argv) try {
  return valetctl::run(argc, argv);
} catch (const std::exception& e) {  // no exception escapes a tool: exit 2 with what it says
  std::cerr << "valetctl: unexpected error: " << e.what() << "\n";
  return 2;
}
