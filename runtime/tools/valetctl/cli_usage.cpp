#include "cli_usage.h"


namespace valetctl {

namespace {

std::string names_of(CLI::App& app) {
  std::string out;
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    out += (out.empty() ? "" : ", ") + sub->get_name();
  return out;
}

// The option `token` names in `app` or, through fallthrough, in its parents.
const CLI::Option* option_of(CLI::App* app, const std::string& token) {
  const std::string name = token.rfind("--", 0) == 0 ? token.substr(0, token.find('=')) : token.substr(0, 2);
  for (; app != nullptr; app = app->get_parent())
    if (const CLI::Option* o = app->get_option_no_throw(name)) return o;
  return nullptr;
}

CLI::App* sub_named(CLI::App& app, const std::string& name) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    if (sub->get_name() == name) return sub;
  return nullptr;
}

// Whether the word after `token` is its value: an option taking one, not written "--opt=v" or "-sV".
bool takes_next(CLI::App* at, const std::string& token) {
  const CLI::Option* o = option_of(at, token);
  if (o == nullptr || o->get_type_size_max() == 0) return false;
  const bool joined = token.rfind("--", 0) == 0 ? token.find('=') != std::string::npos : token.size() > 2;
  return !joined;
}

}  // namespace

std::optional<std::string> command_error(CLI::App& app, int argc, const char* const* argv) {
  CLI::App* at = &app;
  std::string path;  // the command words so far, for nested groups ("policy")
  for (int i = 1; i < argc; ++i) {
    const std::string token = argv[i];
    if (token == "--") break;
    if (token.size() > 1 && token[0] == '-') {
      if (takes_next(at, token)) ++i;  // an option's value is not a command
      continue;
    }
    if (at->get_subcommands([](CLI::App*) { return true; }).empty()) return std::nullopt;  // an argument
    CLI::App* sub = sub_named(*at, token);
    if (sub == nullptr)
      return "unknown command '" + path + token + "' (" + (path.empty() ? "" : path) + "commands: " + names_of(*at) + ")";
    at = sub;
    path += token + " ";
  }
  if (at->get_require_subcommand_min() > 0)
    return "missing command" + (path.empty() ? std::string() : " after '" + path.substr(0, path.size() - 1) + "'") +
           " (" + path + "commands: " + names_of(*at) + ")";
  return std::nullopt;
}

}  // namespace valetctl
