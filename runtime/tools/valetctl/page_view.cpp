#include "page_view.h"

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <vector>

#include "render_text.h"

namespace valetctl {

using nlohmann::json;

namespace {

struct Cell {
  char kind;         // 'L' large, 'S' slab, 'M' meshed (alias of a slab page), 'r' reserve, '.' free
  double occupancy;  // slab pages
};

struct Rgb {
  int r, g, b;
};

std::vector<Cell> cells_of(const json& reply) {
  std::vector<Cell> cells;
  if (reply.contains("pages") && reply["pages"].is_array())
    for (const auto& p : reply["pages"]) {
      const std::string kind = p.value("kind", std::string("?"));
      const double occ = p.contains("occupancy") && p["occupancy"].is_number() ? p["occupancy"].get<double>() : 0.0;
      cells.push_back(
          {kind == "large" ? 'L' : kind == "slab" ? 'S' : kind == "meshed" ? 'M' : kind == "reserve" ? 'r' : '?', occ});
    }
  std::size_t free = 0;
  if (reply.contains("summary") && reply["summary"].contains("free") && reply["summary"]["free"].is_number_unsigned())
    free = reply["summary"]["free"].get<std::size_t>();
  if (reply.contains("not_created") && reply["not_created"].is_number_unsigned())
    free = reply["not_created"].get<std::size_t>();
  cells.insert(cells.end(), std::min<std::size_t>(free, 1u << 22), Cell{'.', 0.0});
  return cells;
}

// Sparse slab pages are the compactor's candidates: red; dense ones green.
Rgb colour_of(const Cell& c) {
  switch (c.kind) {
    case 'L': return {70, 110, 200};
    case 'M': return {150, 90, 200};  // shares a slab page's physical page: no memory of its own
    case 'r': return {140, 140, 140};
    case '.': return {45, 45, 45};
    case 'S': {
      const double t = std::clamp(c.occupancy, 0.0, 1.0);
      if (t < 0.5) return {210, int(60 + 260 * t), 60};  // red -> yellow
      return {int(210 - 300 * (t - 0.5)), 190, int(60 + 40 * (t - 0.5))};  // yellow -> green
    }
    default: return {200, 0, 200};
  }
}

char letter_of(const Cell& c) {
  if (c.kind == 'S') return char('0' + std::clamp(int(c.occupancy * 10), 0, 9));
  if (c.kind == 'M') return 'm';
  return c.kind;
}

int ansi256(Rgb c) {
  auto q = [](int v) { return std::clamp((v * 6) / 256, 0, 5); };
  return 16 + 36 * q(c.r) + 6 * q(c.g) + q(c.b);
}

std::size_t field(const json& j, const char* key, std::size_t fallback = 0) {
  return j.contains(key) && j[key].is_number_unsigned() ? j[key].get<std::size_t>() : fallback;
}

// The figures of the map, each saying what it counts: virtual slots in use (one cell each),
// physical pages behind them, and capacity not yet created (one '.' cell each).
std::vector<std::string> header_of(const json& reply, std::size_t cells) {
  static const json none = json::object();
  const json& s = reply.contains("summary") && reply["summary"].is_object() ? reply["summary"] : none;
  const json& ph = reply.contains("physical") && reply["physical"].is_object() ? reply["physical"] : none;
  const std::size_t slots = field(reply, "virtual_slots", reply.contains("pages") ? reply["pages"].size() : 0);
  const std::size_t page = field(reply, "page_bytes", std::size_t{2} << 20);
  auto n = [](std::size_t v) { return std::to_string(v); };
  std::vector<std::string> h;
  h.push_back(n(field(reply, "capacity_pages")) + " pages of " + bytes_text(double(page)) + " capacity: " +
              n(field(reply, "physical_pages", field(reply, "mapped_pages"))) + " physical pages created (slab " +
              n(field(ph, "slab")) + ", large " + n(field(ph, "large")) + ", reserve " + n(field(ph, "reserve")) +
              " of which idle " + n(field(s, "idle")) + "), " + n(field(reply, "not_created", field(s, "free"))) +
              " not created");
  h.push_back(n(slots) + " virtual slots in use: slab " + n(field(s, "slab")) + " (" + n(field(s, "shared_tails")) +
              " on large objects' last pages), meshed " + n(field(s, "meshed")) + ", large " + n(field(s, "large")) +
              ", reserve " + n(field(s, "reserve")));
  h.push_back("map: one cell per slot in use, then one per page not created (" + n(cells) + " cells)");
  return h;
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

}  // namespace

std::string page_map_text(const json& reply, bool colour, int columns) {
  const auto cells = cells_of(reply);
  std::string o;
  for (const auto& line : header_of(reply, cells.size())) o += line + "\n";
  if (!reply.value("exact", true))
    o += "(approximate: " + reply.value("source", std::string("derived")) + "; exact map needs " +
         reply.value("needs", std::string("a page map API")) + ")\n";
  for (std::size_t i = 0; i < cells.size(); i += std::size_t(columns)) {
    char prefix[32];
    std::snprintf(prefix, sizeof prefix, "%6zu ", i);
    o += prefix;
    for (std::size_t j = i; j < std::min(cells.size(), i + std::size_t(columns)); ++j) {
      if (colour) o += "\033[38;5;" + std::to_string(ansi256(colour_of(cells[j]))) + "m\u2588";
      else o += letter_of(cells[j]);
    }
    o += colour ? "\033[0m\n" : "\n";
  }
  if (colour) {
    auto swatch = [&](Cell c, const char* name) {
      return "\033[38;5;" + std::to_string(ansi256(colour_of(c))) + "m\u2588\033[0m " + name + "  ";
    };
    o += swatch({'L', 0}, "large") + swatch({'S', 0.05}, "slab sparse") + swatch({'S', 0.5}, "slab half") +
         swatch({'S', 0.95}, "slab dense") + swatch({'M', 0}, "meshed") + swatch({'r', 0}, "reserve") + swatch({'.', 0}, "free") + "\n";
  } else {
    o += "L large  0-9 slab page occupancy (tenths)  m meshed (shares a slab page's memory)  r reserve  . free capacity\n";
  }
  return o;
}

std::string page_map_svg(const json& reply, int columns) {
  const auto cells = cells_of(reply);
  constexpr int kCell = 10, kGap = 1, kMargin = 10, kHeader = 55, kLegend = 30;
  const auto header = header_of(reply, cells.size());
  const int rows = int((cells.size() + std::size_t(columns) - 1) / std::size_t(columns));
  const int width = 2 * kMargin + columns * (kCell + kGap);
  const int height = kHeader + rows * (kCell + kGap) + kLegend + kMargin;
  auto fill = [](Rgb c) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", c.r, c.g, c.b);
    return std::string(buf);
  };
  std::ostringstream o;
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" font-family=\"monospace\" font-size=\"11\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
    << "<text x=\"" << kMargin << "\" y=\"16\">" << xml_escape("valet heap: " + header[0]) << "</text>\n"
    << "<text x=\"" << kMargin << "\" y=\"31\">" << xml_escape(header[1]) << "</text>\n";
  if (!reply.value("exact", true))
    o << "<text x=\"" << kMargin << "\" y=\"46\" fill=\"#777\">"
      << xml_escape("approximate (derived from stats); exact map needs " + reply.value("needs", std::string("?")))
      << "</text>\n";
  for (std::size_t i = 0; i < cells.size(); ++i) {
    const int x = kMargin + int(i % std::size_t(columns)) * (kCell + kGap);
    const int y = kHeader + int(i / std::size_t(columns)) * (kCell + kGap);
    const Cell& c = cells[i];
    o << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << kCell << "\" height=\"" << kCell << "\" fill=\""
      << fill(colour_of(c)) << "\"><title>page " << i << ": "
      << (c.kind == 'L' ? "large" : c.kind == 'S' ? "slab" : c.kind == 'M' ? "meshed" : c.kind == 'r' ? "reserve" : "free");
    if (c.kind == 'S' || c.kind == 'M') o << " " << int(c.occupancy * 100 + 0.5) << "%";
    o << "</title></rect>\n";
  }
  const int ly = kHeader + rows * (kCell + kGap) + 14;
  int lx = kMargin;
  for (auto [c, name] : {std::pair{Cell{'L', 0}, "large"}, {Cell{'S', 0.05}, "slab sparse"}, {Cell{'S', 0.5}, "slab half"},
                         {Cell{'S', 0.95}, "slab dense"}, {Cell{'M', 0}, "meshed"}, {Cell{'r', 0}, "reserve"}, {Cell{'.', 0}, "free"}}) {
    o << "<rect x=\"" << lx << "\" y=\"" << ly - 9 << "\" width=\"10\" height=\"10\" fill=\"" << fill(colour_of(c))
      << "\"/><text x=\"" << lx + 14 << "\" y=\"" << ly << "\">" << name << "</text>\n";
    lx += 14 + 8 * int(std::string(name).size()) + 12;
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace valetctl
