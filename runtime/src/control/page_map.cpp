#include "page_map.h"

namespace valet::control {

nlohmann::json page_map_json(const HeapStats& s, const std::vector<PageInfo>& map, std::size_t page_bytes) {
  using nlohmann::json;
  json pages = json::array();
  std::size_t counts[4] = {0, 0, 0, 0};
  for (const auto& p : map) {
    ++counts[std::size_t(p.kind)];
    json j = {{"slot", p.slot}, {"kind", page_kind_name(p.kind)}};
    switch (p.kind) {
      case PageKind::slab:
      case PageKind::meshed:
        j["occupancy"] = p.total_slots ? double(p.used_slots) / p.total_slots : 0.0;
        j["size_class"] = p.class_size;
        j["used_slots"] = p.used_slots;
        j["slots"] = p.total_slots;
        j["objects_here"] = p.through_this;
        j["sharers"] = p.sharers;
        if (p.kind == PageKind::meshed || p.blocked_slots) j["maps_page_of"] = p.maps_page_of;
        if (p.blocked_slots) j["blocked_slots"] = p.blocked_slots;
        break;
      case PageKind::large:
        j["occupancy"] = page_bytes ? double(p.used_bytes) / double(page_bytes) : 0.0;
        j["used_bytes"] = p.used_bytes;
        j["sharers"] = p.sharers;
        break;
      case PageKind::reserve: j["occupancy"] = 0.0; break;
    }
    pages.push_back(std::move(j));
  }
  const std::size_t capacity_pages = page_bytes ? s.capacity_bytes / page_bytes : 0;
  const std::size_t mapped_pages = page_bytes ? s.mapped_bytes / page_bytes : 0;
  return {
      {"page_bytes", page_bytes},
      {"capacity_pages", capacity_pages},
      {"mapped_pages", mapped_pages},
      {"exact", true},
      {"summary",
       {{"slab", counts[std::size_t(PageKind::slab)]},
        {"meshed", counts[std::size_t(PageKind::meshed)]},
        {"large", counts[std::size_t(PageKind::large)]},
        {"reserve", counts[std::size_t(PageKind::reserve)]},
        {"idle", s.pages.idle},
        // Capacity not backed by a created page.
        {"free", capacity_pages > mapped_pages ? capacity_pages - mapped_pages : 0}}},
      {"pages", std::move(pages)},
  };
}

}  // namespace valet::control
