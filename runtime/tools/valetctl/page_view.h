// The heap's page map (the `pages` reply) drawn as a grid of 2 MiB pages: in the terminal (ANSI
// colours, or letters when the output is not a terminal) and as an SVG file.
//
// Cells: large-object pages, slab pages shaded by occupancy, reserve pages (mapped, unused), and
// the capacity no created page backs yet ("free").
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace valetctl {

// `colour`: ANSI 256-colour cells; otherwise one letter per page:
//   L large, 0-9 slab page (occupancy decile), r reserve, . free capacity.
std::string page_map_text(const nlohmann::json& pages, bool colour, int columns = 64);
std::string page_map_svg(const nlohmann::json& pages, int columns = 64);

}  // namespace valetctl
