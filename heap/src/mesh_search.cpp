#include "mesh_search.h"

#include <algorithm>

namespace valet::detail {

namespace {

// Probes per class of the split matching: each ascending page is tried against this many
// descending pages.
constexpr std::size_t kProbes = 64;

}  // namespace

bool bitmaps_disjoint(std::span<const std::uint64_t> a, std::span<const std::uint64_t> b, std::uint32_t capacity) {
  const std::size_t words = a.size();
  for (std::size_t w = 0; w + 1 < words; ++w)
    if (a[w] & b[w]) return false;
  std::uint64_t last = a[words - 1] & b[words - 1];
  // Padding bits past the capacity are taken in every page: they are not a collision.
  if (capacity % 64) last &= ~(~0ull << (capacity % 64));
  return last == 0;
}

std::vector<MeshMatch> find_mesh_pairs(std::span<const MeshCandidate> pages, std::uint32_t capacity,
                                       std::uint64_t class_size, std::size_t max_sharers, std::mt19937& rng,
                                       planner::Budget& budget) {
  std::vector<MeshMatch> out;
  std::vector<std::uint32_t> asc, desc;
  for (std::uint32_t k = 0; k < pages.size(); ++k) (pages[k].descending ? desc : asc).push_back(k);
  if (asc.size() + desc.size() < 2) return out;
  // Pages filled the same way mesh rarely; if one side is empty, split the other in halves.
  if (asc.empty() || desc.empty()) {
    auto& all = asc.empty() ? desc : asc;
    std::shuffle(all.begin(), all.end(), rng);
    auto& other = asc.empty() ? asc : desc;
    other.assign(all.begin() + std::ptrdiff_t(all.size() / 2), all.end());
    all.resize(all.size() / 2);
  }
  std::shuffle(asc.begin(), asc.end(), rng);
  std::shuffle(desc.begin(), desc.end(), rng);
  std::vector<bool> asc_taken(asc.size()), desc_taken(desc.size());
  const std::size_t probes = std::min(kProbes, desc.size());
  for (std::size_t t = 0; t < probes && budget.pages > 0; ++t) {
    for (std::size_t i = 0; i < asc.size() && budget.pages > 0; ++i) {
      const std::size_t j = (i + t) % desc.size();
      if (asc_taken[i] || desc_taken[j]) continue;
      const std::uint32_t a = asc[i], d = desc[j];
      if (pages[a].used + pages[d].used > capacity) continue;
      // The source is the page that copies less, unless it cannot move; its sharers join the
      // destination's.
      std::uint32_t src = pages[a].used <= pages[d].used ? a : d;
      std::uint32_t dst = src == a ? d : a;
      if (!pages[src].movable) std::swap(src, dst);
      if (!pages[src].movable || pages[dst].sharers + 1 > max_sharers) continue;
      if (!bitmaps_disjoint(pages[a].bitmap, pages[d].bitmap, capacity)) continue;
      const std::uint64_t bytes = std::uint64_t(pages[src].used) * class_size;
      if (bytes > budget.bytes) continue;
      asc_taken[i] = desc_taken[j] = true;
      budget.bytes -= bytes;
      --budget.pages;
      out.push_back({dst, src, bytes});
    }
  }
  return out;
}

}  // namespace valet::detail
