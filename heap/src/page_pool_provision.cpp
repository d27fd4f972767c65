// Provisioning ahead of demand (page_pool.h): the keeper maps pages into one long reserve run
// without the heap lock, so that a large allocation finds its run mapped and makes no driver call.
#include <algorithm>

#include "page_pool.h"

namespace valet::detail {

namespace {

// Pages a provision batch grants access to in one call.
constexpr std::uint32_t kKeeperAccessPages = 4;

// Where the run grows: after the longest reserve run when enough free slots follow it (only the
// missing pages are mapped), else a fresh virtual run of `want` slots.
struct Target {
  std::uint32_t dest = 0, need = 0;
  bool extend = false;
  std::optional<RangeSet::Range> longest;
};

}  // namespace

PagePool::ProvisionBatch PagePool::begin_provision(std::uint32_t want, std::size_t may_create,
                                                   std::uint32_t max_pages) {
  ProvisionBatch b;
  Target t;
  t.longest = reserve_.largest_range();
  const std::uint32_t have = t.longest ? t.longest->length : 0;
  if (have >= want || max_pages == 0) return b;
  if (t.longest) {
    const std::uint32_t end = t.longest->start + t.longest->length;
    const auto after = end < slots_.size() ? unmapped_.find(end) : std::nullopt;
    if (after && after->start == end) {
      t.extend = true;
      t.need = std::min(want - have, after->length);
      t.dest = end;
    }
  }
  if (!t.extend) t.need = want;
  t.need = std::min(t.need, max_pages);
  // The pages: idle ones, new ones, then the shortest other reserve runs' pages.
  const std::uint32_t idle = std::uint32_t(std::min<std::size_t>(idle_.size(), t.need));
  const std::uint32_t fresh = std::uint32_t(
      std::min<std::size_t>({t.need - idle, may_create, creatable_pages()}));
  std::uint32_t moved = 0;
  while (idle + fresh + moved < t.need && !reserve_.empty()) {
    auto r = *reserve_.take_smallest();
    if (t.longest && r.start == t.longest->start) {  // the run being extended, or the only one left
      reserve_.insert(r.start, r.length);
      break;
    }
    const std::uint32_t k = std::min(r.length, t.need - idle - fresh - moved);
    if (k < r.length) reserve_.insert(r.start, r.length - k);
    const std::uint32_t start = r.start + (r.length - k);
    releasing_.insert(start, k);
    b.sources.push_back({start, k, false});
    for (std::uint32_t s = start; s < start + k; ++s) b.source_pages.push_back({slots_[s].phys, phys_[slots_[s].phys].page});
    moved += k;
  }
  const std::uint32_t total = idle + fresh + moved;
  // A fresh run no longer than the longest one changes nothing: give everything back.
  const bool worth = total > 0 && (t.extend || total > have);
  std::optional<std::uint32_t> dest;
  if (worth) dest = t.extend ? (unmapped_.take_exact(t.dest, total) ? std::optional(t.dest) : std::nullopt)
                             : unmapped_.take_best_fit(total);
  if (!dest) {
    for (const auto& r : b.sources) {
      releasing_.take_exact(r.start, r.length);
      reserve_.insert(r.start, r.length);
    }
    return ProvisionBatch{};
  }
  b.dest = *dest;
  b.length = total;
  provisioning_.insert(b.dest, b.length);
  b.idle.assign(idle_.end() - idle, idle_.end());
  idle_.resize(idle_.size() - idle);
  in_flight_idle_ += idle;
  b.fresh = fresh;
  created_ += fresh;
  fresh_in_flight_ += fresh;
  note_created_peak();  // counted as mapped (created_pages) from here, so in the peak too
  return b;
}

void PagePool::provision_calls(ProvisionBatch& b) const {
  b.placed.clear();
  for (std::uint32_t p : b.idle) b.placed.push_back({p, phys_[p].page});
  std::size_t i = 0;
  for (auto& run : b.sources) {
    // Reserve slots are never held (validate()), but a broken rule must not unmap queued work.
    defer_to_callers();
    run.unmapped = refuse_held(run.start, run.length).ok() &&
                   backend_.unmap(address(run.start), std::size_t(run.length) * kPage).ok();
    for (std::uint32_t k = 0; k < run.length; ++k, ++i)
      if (run.unmapped) b.placed.push_back(b.source_pages[i]);
  }
  for (std::uint32_t k = 0; k < b.fresh; ++k) {
    defer_to_callers();
    auto page = backend_.create_page();
    if (!page.ok()) break;
    b.placed.push_back({kNoPhys, *page});
  }
  // Map what there is, in order; a failure ends the run there.
  b.mapped = 0;
  for (const std::size_t n = std::min<std::size_t>(b.placed.size(), b.length); b.mapped < n; ++b.mapped) {
    defer_to_callers();
    if (!backend_.map(address(b.dest + b.mapped), b.placed[b.mapped].page).ok()) break;
  }
  // A deferring keeper grants access in pieces (the driver's cost is per page): a caller's calls
  // wait for one piece at most (defer_to_callers).
  const std::uint32_t piece = defers_to_callers() ? kKeeperAccessPages : std::max<std::uint32_t>(b.mapped, 1);
  bool granted = true;
  for (std::uint32_t k = 0; granted && k < b.mapped; k += piece) {
    defer_to_callers();
    granted = backend_.set_access(address(b.dest + k), std::size_t(std::min(piece, b.mapped - k)) * kPage).ok();
  }
  if (b.mapped > 0 && !granted) {
    // Inaccessible memory must not reach the reserve: unmap it (its pages become idle).
    if (backend_.unmap(address(b.dest), std::size_t(b.mapped) * kPage).ok()) b.mapped = 0;
  }
}

void PagePool::book_moved_sources(const std::vector<ReleaseRun>& sources) {
  for (const auto& run : sources) {
    releasing_.take_exact(run.start, run.length);
    if (!run.unmapped) {
      reserve_.insert(run.start, run.length);
      continue;
    }
    for (std::uint32_t s = run.start; s < run.start + run.length; ++s) {
      --phys_[slots_[s].phys].mappings;
      slots_[s].phys = kNoPhys;
    }
    set_kind(run.start, run.length, SlotKind::unmapped, 0);
    unmapped_.insert(run.start, run.length);
  }
}

void PagePool::finish_provision(ProvisionBatch& b) {
  provisioning_.take_exact(b.dest, b.length);
  in_flight_idle_ -= b.idle.size();
  fresh_in_flight_ -= b.fresh;
  // Pages not created are not counted; new pages get their records.
  std::uint32_t created_now = 0;
  for (auto& ref : b.placed) {
    if (ref.phys != kNoPhys) continue;
    ++created_now;
    ref.phys = add_record(ref.page);
  }
  created_ -= b.fresh - created_now;
  book_moved_sources(b.sources);
  for (std::uint32_t k = 0; k < b.placed.size(); ++k) {
    const std::uint32_t p = b.placed[k].phys;
    if (k < b.mapped) {
      slots_[b.dest + k].phys = p;
      ++phys_[p].mappings;
    } else if (phys_[p].mappings == 0) {
      idle_.push_back(p);
    }
  }
  if (b.mapped < b.length) unmapped_.insert(b.dest + b.mapped, b.length - b.mapped);
  if (b.mapped > 0) give_back(b.dest, b.mapped);
  b = ProvisionBatch{};
}

}  // namespace valet::detail
