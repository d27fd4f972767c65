#include "valet/evacuation_plan.h"

#include <algorithm>
#include <numeric>
#include <optional>

namespace valet::planner {

SparseChoice choose_sparse_pages(const ClassOccupancy& c, double max_occupancy, Budget& budget) {
  SparseChoice out;
  const auto& used = c.used;
  std::vector<std::uint32_t> candidates;
  std::uint64_t dest_free = c.tail_free_slots;
  for (std::uint32_t k = 0; k < used.size(); ++k) {
    dest_free += c.slots_per_page - used[k];
    if (double(used[k]) <= max_occupancy * c.slots_per_page) candidates.push_back(k);
  }
  if (candidates.size() < 2) return out;
  // std::sort, not a stable sort: the heap has always ordered its equally full pages this way,
  // and which of them go decides where objects land (an unstable sort's result depends only on
  // the comparisons, so sorting indices reproduces the order of sorting the pages themselves).
  std::sort(candidates.begin(), candidates.end(), [&](std::uint32_t a, std::uint32_t b) { return used[a] < used[b]; });
  // Sparsest first, while the pages left behind have room for everything moved so far.
  for (std::uint32_t k : candidates) {
    const std::uint64_t u = used[k];
    const std::uint64_t bytes = u * c.class_size;
    if (budget.pages == 0 || bytes > budget.bytes) break;
    const std::uint64_t own_free = c.slots_per_page - u;
    if (out.slots_moved + u > dest_free - own_free) break;
    out.slots_moved += u;
    dest_free -= own_free;
    budget.bytes -= bytes;
    --budget.pages;
    out.pages.push_back(k);
  }
  out.bytes_moved = out.slots_moved * c.class_size;
  return out;
}

ClassPrediction predict_class(const ClassOccupancy& c, double max_occupancy) {
  ClassPrediction p;
  if (c.slots_per_page == 0) return p;
  // A cycle gives back every empty slab page first, without a move (the one a class keeps
  // against allocate/free ping-pong included), then plans over the pages that hold objects.
  ClassOccupancy rest{c.class_size, c.slots_per_page, {}, c.tail_free_slots};
  rest.used.reserve(c.used.size());
  for (auto u : c.used)
    if (u == 0) ++p.pages_freed;
    else rest.used.push_back(u);
  Budget unbounded;
  const SparseChoice s = choose_sparse_pages(rest, max_occupancy, unbounded);
  p.pages_freed += s.pages.size();
  p.bytes_moved = s.bytes_moved;
  return p;
}

namespace {

// One class's candidates for tails: its non-empty pages, cheapest first (ties: the earlier
// page). Within a class the cheapest page is always the one taken, so the pages a class gives
// are a prefix of this order and a cursor is all the state a class needs.
struct ClassQueue {
  std::vector<std::uint32_t> order;
  std::size_t next = 0;
};

ClassQueue queue_of(const ClassOccupancy& c) {
  ClassQueue q;
  for (std::uint32_t k = 0; k < c.used.size(); ++k)
    if (c.used[k] > 0) q.order.push_back(k);
  std::stable_sort(q.order.begin(), q.order.end(),
                   [&](std::uint32_t a, std::uint32_t b) { return c.used[a] < c.used[b]; });
  return q;
}

}  // namespace

TailChoice choose_tail_pages(const std::vector<ClassOccupancy>& classes, const std::vector<std::uint32_t>& tail_bytes,
                             Budget& budget, const std::function<bool(const TailMatch&)>& accept) {
  TailChoice out;
  if (tail_bytes.empty() || budget.pages == 0) return out;
  std::vector<ClassQueue> queues;
  queues.reserve(classes.size());
  for (const auto& c : classes) queues.push_back(queue_of(c));
  // The fullest tails first: they fit fewest pages.
  std::vector<std::uint32_t> tails(tail_bytes.size());
  std::iota(tails.begin(), tails.end(), 0u);
  std::sort(tails.begin(), tails.end(), [&](std::uint32_t a, std::uint32_t b) {
    return tail_bytes[a] != tail_bytes[b] ? tail_bytes[a] > tail_bytes[b] : a > b;
  });
  for (std::uint32_t t : tails) {
    if (budget.pages == 0) break;
    const std::uint64_t tail_used = tail_bytes[t];
    std::optional<TailMatch> best;
    for (std::uint32_t cls = 0; cls < classes.size(); ++cls) {
      const auto& c = classes[cls];
      const auto& q = queues[cls];
      if (q.next == q.order.size() || c.class_size == 0) continue;
      const std::uint64_t blocked = (tail_used + c.class_size - 1) / c.class_size;
      if (blocked >= c.slots_per_page) continue;
      const std::uint32_t page = q.order[q.next];
      const std::uint64_t bytes = std::uint64_t(c.used[page]) * c.class_size;
      if (c.used[page] > c.slots_per_page - blocked || bytes > budget.bytes) continue;
      if (!best || bytes < best->bytes) best = TailMatch{t, cls, page, bytes};
    }
    if (!best || (accept && !accept(*best))) continue;
    ++queues[best->cls].next;
    out.matches.push_back(*best);
    out.bytes_moved += best->bytes;
    budget.bytes -= best->bytes;
    --budget.pages;
  }
  return out;
}

}  // namespace valet::planner
