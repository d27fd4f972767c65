#include "page_map.h"

#include <algorithm>

namespace valet::control {

nlohmann::json derived_page_map(const HeapStats& s, const std::vector<ClassOccupancy>& slabs, std::size_t page_bytes) {
  using nlohmann::json;
  json pages = json::array();
  auto add = [&](const char* kind, double occupancy, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) pages.push_back({{"kind", kind}, {"occupancy", occupancy}});
  };
  // Large objects first (their tails' occupancy is not reported: counted full), then slab pages
  // densest first, then the reserve (mapped, unused).
  add("large", 1.0, s.pages.large);
  struct Slab {
    double occupancy;
    std::uint32_t class_size, used, slots;
  };
  std::vector<Slab> slab;
  for (const auto& c : slabs)
    for (std::uint32_t used : c.used)
      slab.push_back({c.slots_per_page ? double(used) / c.slots_per_page : 0.0, c.class_size, used, c.slots_per_page});
  std::stable_sort(slab.begin(), slab.end(), [](const Slab& a, const Slab& b) { return a.occupancy > b.occupancy; });
  for (const auto& p : slab)
    pages.push_back({{"kind", "slab"}, {"occupancy", p.occupancy}, {"size_class", p.class_size}, {"used_slots", p.used},
                     {"slots", p.slots}});
  const std::size_t reserve_mapped = s.pages.reserve >= s.pages.idle ? s.pages.reserve - s.pages.idle : 0;
  add("reserve", 0.0, reserve_mapped);

  const std::size_t capacity_pages = page_bytes ? s.capacity_bytes / page_bytes : 0;
  const std::size_t mapped_pages = page_bytes ? s.mapped_bytes / page_bytes : 0;
  return {
      {"page_bytes", page_bytes},
      {"capacity_pages", capacity_pages},
      {"mapped_pages", mapped_pages},
      {"exact", false},
      {"source",
       "derived from Heap::stats() (page counts by kind) and Heap::occupancy() (slab pages); slot numbers, order, "
       "meshing and the fill of large objects' last pages are unknown"},
      {"needs", kPageMapApiNeeded},
      {"summary",
       {{"slab", s.pages.slab},
        {"large", s.pages.large},
        {"reserve", reserve_mapped},
        {"idle", s.pages.idle},
        {"meshed", s.pages.meshed},
        // Capacity not backed by a created page.
        {"free", capacity_pages > mapped_pages ? capacity_pages - mapped_pages : 0}}},
      {"pages", std::move(pages)},
  };
}

}  // namespace valet::control
