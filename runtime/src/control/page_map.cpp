#include "page_map.h"

#include <algorithm>

namespace valet::control {

namespace {

nlohmann::json entry_json(const PageInfo& p, std::size_t page_bytes) {
  nlohmann::json j = {{"slot", p.slot}, {"kind", page_kind_name(p.kind)}};
  switch (p.kind) {
    case PageKind::slab:
    case PageKind::meshed:
      j["occupancy"] = p.total_slots ? double(p.used_slots) / p.total_slots : 0.0;
      j["size_class"] = p.class_size;
      j["used_slots"] = p.used_slots;
      j["slots"] = p.total_slots;
      j["objects_here"] = p.through_this;
      j["sharers"] = p.sharers;
      if (p.kind == PageKind::meshed || p.maps_page_of != p.slot) j["maps_page_of"] = p.maps_page_of;
      if (p.blocked_slots) j["blocked_slots"] = p.blocked_slots;
      break;
    case PageKind::large:
      j["occupancy"] = page_bytes ? double(p.used_bytes) / double(page_bytes) : 0.0;
      j["used_bytes"] = p.used_bytes;
      j["sharers"] = p.sharers;
      break;
    case PageKind::reserve: j["occupancy"] = 0.0; break;
  }
  return j;
}

}  // namespace

nlohmann::json page_map_json(const HeapStats& s, const std::vector<PageInfo>& map, std::size_t page_bytes) {
  using nlohmann::json;
  json pages = json::array();
  std::size_t counts[4] = {0, 0, 0, 0};
  // Slab slots on a large object's last page map that page (maps_page_of names it): no memory
  // of their own, like meshed slots.
  std::size_t shared_tails = 0;
  for (const auto& p : map) {
    ++counts[std::size_t(p.kind)];
    if (p.kind == PageKind::slab && p.maps_page_of != p.slot) ++shared_tails;
    pages.push_back(entry_json(p, page_bytes));
  }
  const std::size_t slab = counts[std::size_t(PageKind::slab)], meshed = counts[std::size_t(PageKind::meshed)],
                    large = counts[std::size_t(PageKind::large)], reserve = counts[std::size_t(PageKind::reserve)];
  const std::size_t capacity_pages = page_bytes ? s.capacity_bytes / page_bytes : 0;
  const std::size_t physical_slab = slab - shared_tails;
  const std::size_t physical = physical_slab + large + reserve + s.pages.idle;
  const std::size_t not_created = capacity_pages - std::min(capacity_pages, physical);
  return {
      {"page_bytes", page_bytes},
      {"capacity_pages", capacity_pages},
      {"virtual_slots", map.size()},
      {"physical_pages", physical},
      {"mapped_pages", physical},  // the same figure, under its older name
      {"not_created", not_created},
      {"exact", true},
      // Virtual slots by kind (sum: virtual_slots), and idle and not-created pages, which no slot maps.
      {"summary",
       {{"slab", slab},
        {"shared_tails", shared_tails},
        {"meshed", meshed},
        {"large", large},
        {"reserve", reserve},
        {"idle", s.pages.idle},
        {"free", not_created}}},
      // Physical pages by use (sum: physical_pages); physical_pages + not_created = capacity_pages.
      {"physical", {{"slab", physical_slab}, {"large", large}, {"reserve", reserve + s.pages.idle}}},
      {"pages", std::move(pages)},
  };
}

}  // namespace valet::control
