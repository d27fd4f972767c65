#include "policy_engine.h"

#include <algorithm>
#include <cmath>

#include "parallel.h"
#include "valet/evacuation_plan.h"
#include "valet/types.h"

namespace valet::policy {
namespace {

// Copy speed assumed before any cycle has measured one: 1 GB/s, below what either backend copies
// (the host backend's worker thread: several GB/s; an H100: ~2.8 TB/s).
constexpr double kAssumedBytesPerNs = 1.0;

}  // namespace

std::vector<Plan> plan_levels(const std::vector<ClassOccupancy>& classes, const std::vector<double>& levels) {
  std::vector<std::vector<Plan>> per_class(classes.size(), std::vector<Plan>(levels.size()));
  in_bounded_arena(2, [&] {
    parallel_chunks(classes.size(), 4, [&](std::size_t b, std::size_t e) {
      for (std::size_t k = b; k < e; ++k)
        for (std::size_t l = 0; l < levels.size(); ++l) {
          const auto c = planner::predict_class(classes[k], levels[l]);
          per_class[k][l] = Plan{levels[l], c.pages_freed, c.bytes_moved};
        }
    });
  });
  std::vector<Plan> total(levels.size());
  for (std::size_t l = 0; l < levels.size(); ++l) {
    total[l].max_occupancy = levels[l];
    for (const auto& pc : per_class) {
      total[l].pages_freed += pc[l].pages_freed;
      total[l].bytes_moved += pc[l].bytes_moved;
    }
  }
  return total;
}

Plan plan_tails(const std::vector<ClassOccupancy>& classes, const std::vector<std::uint32_t>& open_tails) {
  planner::Budget unbounded;
  const auto choice = planner::choose_tail_pages(classes, open_tails, unbounded);
  return Plan{0, choice.matches.size(), choice.bytes_moved};
}

double slab_fragmentation(const std::vector<ClassOccupancy>& classes) {
  double slot_bytes = 0, page_bytes = 0;
  for (const auto& c : classes)
    for (auto u : c.used) {
      slot_bytes += double(u) * c.class_size;
      page_bytes += double(kPageBytes);
    }
  return page_bytes > 0 ? 1.0 - slot_bytes / page_bytes : 0.0;
}

double heap_fragmentation(const Observation& obs) {
  const double held = double(obs.mapped_bytes) - double(std::min(obs.reserve_bytes, obs.mapped_bytes));
  return held > 0 ? std::max(0.0, 1.0 - double(obs.live_bytes) / held) : 0.0;
}

namespace {

// Ages the state by the time since the last observation: the allocation rate (smoothed) and the
// byte tokens (refilled at max_bytes_per_second, at most one second's worth). True where an
// allocation failed since the last observation.
bool observe(const PolicySettings& s, const Observation& obs, EngineState& st) {
  const double rate_cap = double(s.max_bytes_per_second);
  if (st.last_ns == 0) {
    st.byte_tokens = rate_cap;  // start with one second of budget
  } else if (obs.now_ns > st.last_ns) {
    const double dt = double(obs.now_ns - st.last_ns) * 1e-9;
    const double rate = double(obs.allocations - st.last_allocations) / dt;
    st.alloc_rate = st.alloc_rate == 0 ? rate : 0.5 * st.alloc_rate + 0.5 * rate;
    st.byte_tokens = std::min(rate_cap, st.byte_tokens + rate_cap * dt);
  }
  const bool failed_since = obs.failed_allocations > st.last_failed;
  st.last_ns = obs.now_ns;
  st.last_allocations = obs.allocations;
  st.last_failed = obs.failed_allocations;
  return failed_since;
}

// Why a cycle is wanted (none: not wanted), and the pages it should give back.
struct Want {
  std::optional<CompactionTrigger> trigger;
  std::uint64_t goal = 0;
  // Over the threshold for the whole heap only: much of that may be what no cycle reclaims
  // (size-class rounding, large objects' last pages), so only the cheapest level is planned.
  bool cheapest_only = false;
};

// The triggers in order of urgency: a low reserve (or a failed allocation), fragmentation, idleness.
Want want_cycle(const PolicySettings& s, const Observation& obs, const EngineState& st, bool failed_since) {
  const double page = double(kPageBytes);
  std::size_t slab_pages = 0;
  double slot_bytes = 0;
  for (const auto& c : obs.classes) {
    slab_pages += c.used.size();
    for (auto u : c.used) slot_bytes += double(u) * c.class_size;
  }
  const double frag = slab_fragmentation(obs.classes);
  const double whole = heap_fragmentation(obs);
  Want w;
  w.goal = s.min_reclaim_pages;
  if (obs.free_pages < s.min_free_pages || failed_since) {
    w.trigger = CompactionTrigger::reserve_low;
    w.goal = std::max<std::uint64_t>(w.goal, s.min_free_pages > obs.free_pages ? s.min_free_pages - obs.free_pages : 1);
  } else if (frag > s.fragmentation_threshold || whole > s.fragmentation_threshold) {
    w.trigger = CompactionTrigger::fragmentation;
    // Pages to give back for the slab pages, and for the heap, to reach the threshold.
    const double keep = 1.0 - s.fragmentation_threshold;
    if (frag > s.fragmentation_threshold)
      w.goal = std::max<std::uint64_t>(w.goal, std::uint64_t(std::ceil(double(slab_pages) - slot_bytes / keep / page)));
    w.cheapest_only = frag <= s.fragmentation_threshold;
    if (whole > s.fragmentation_threshold) {
      const double held_pages = double(obs.mapped_bytes - std::min(obs.reserve_bytes, obs.mapped_bytes)) / page;
      w.goal = std::max<std::uint64_t>(w.goal, std::uint64_t(std::ceil(held_pages - double(obs.live_bytes) / keep / page)));
    }
  } else if (st.alloc_rate < s.idle_allocs_per_second) {
    w.trigger = CompactionTrigger::idle;
  }
  return w;
}

// Bytes the next cycle may move: the byte tokens, bounded by the pause budget.
double cycle_budget(const PolicySettings& s, const EngineState& st) {
  // The pause budget bounds a cycle's copy time, but never below one page's worth of objects:
  // a cycle that cannot empty a single page would run forever without effect. Until a cycle has
  // measured the copy speed, assume a slow one (kAssumedBytesPerNs): the first cycle then keeps
  // to the pause budget too (it used to be bounded only by the byte budget, a second's worth of
  // max_bytes_per_second), and measures the speed for the next ones.
  const double speed = st.copy_bytes_per_ns > 0 ? st.copy_bytes_per_ns : kAssumedBytesPerNs;
  return std::min(st.byte_tokens, std::max(double(kPageBytes), double(s.max_pause_us) * 1e3 * speed));
}

// Whether the tails warrant a cycle of their own now (see decide() in the header). Draining ends
// when the tails free fewer than min_reclaim_pages; a start waits for the interval.
bool tails_due(const PolicySettings& s, const Observation& obs, const Plan& tails, EngineState& st) {
  if (tails.pages_freed < s.min_reclaim_pages) {
    st.tails_draining = false;
    return false;
  }
  if (st.tails_draining) return true;
  if (tails.pages_freed < tails_start_pages(s, obs)) return false;
  const std::uint64_t interval_ns = s.tails_interval_ms * 1'000'000;
  return st.last_tails_ns == 0 || obs.now_ns >= st.last_tails_ns + interval_ns;
}

// A tails cycle. On the background thread it may move the whole plan on top of the pause
// budget (within the byte tokens): the pause budget bounds how long a safepoint holds its caller,
// and a pin waits for one move batch at most whatever the cycle's size. At the pause budget alone
// a cycle emptied about one page, so the tails took a cycle, with its remaps, per page.
Decision tails_decision(const PolicySettings& s, const Observation& obs, EngineState& st, const Plan& tails,
                        double budget, bool safepoint) {
  st.tails_draining = true;
  st.last_tails_ns = std::max<std::uint64_t>(obs.now_ns, 1);
  if (!safepoint) budget = std::max(budget, std::min(st.byte_tokens, budget + double(tails.bytes_moved)));
  Decision d;
  d.trigger = CompactionTrigger::tails;
  d.plan = tails;
  d.request.max_bytes = std::uint64_t(budget);
  d.request.max_pages = s.max_pages_per_cycle;
  d.request.trigger = d.trigger;
  d.request.mesh = s.mesh;
  d.request.evacuate = true;
  // Only the tails' sources: no sparse-page evacuation (nothing is that sparse).
  d.request.max_occupancy = 1e-6;
  return d;
}

// Whether the copying region's holes call for a cycle of their own (evacuation on).
bool region_due(const PolicySettings& s, const Observation& obs) {
  return s.evacuate && obs.region_mapped_bytes > 0 &&
         double(obs.region_hole_bytes) > obs.region_hole_high * double(obs.region_mapped_bytes);
}

// A cycle for the copying region alone: its copies (the heap's evacuation step) within the
// budget, at least a chunk's worth within the byte tokens (as a slab cycle gets a page's worth:
// where copies are slow, a pause budget below the objects' sizes would move none of them), no
// slab page evacuated or meshed.
Decision region_decision(const PolicySettings& s, const Observation& obs, const EngineState& st, double budget,
                         bool safepoint) {
  budget = std::max(budget, std::min(st.byte_tokens, double(obs.region_chunk_bytes)));
  Decision d;
  d.trigger = safepoint ? CompactionTrigger::safepoint : CompactionTrigger::fragmentation;
  d.request.max_bytes = std::uint64_t(budget);
  d.request.max_pages = s.max_pages_per_cycle;
  d.request.trigger = d.trigger;
  d.request.mesh = false;
  d.request.evacuate = true;
  d.request.max_occupancy = 1e-6;
  return d;
}

// The occupancy levels planned: 0.25, 0.5 and max_occupancy, those not above max_occupancy.
std::vector<double> occupancy_levels(const PolicySettings& s, bool cheapest_only) {
  std::vector<double> levels;
  for (double l : {0.25, 0.5, s.max_occupancy})
    if (l <= s.max_occupancy && (levels.empty() || l > levels.back())) levels.push_back(l);
  if (cheapest_only) levels.resize(1);
  return levels;
}

// The cheapest plan that meets the goal within the budget; else the one that frees most.
const Plan* choose_plan(const std::vector<Plan>& plans, std::uint64_t goal, double budget) {
  for (const auto& p : plans)
    if (p.pages_freed >= goal && double(p.bytes_moved) <= budget) return &p;
  const Plan* chosen = nullptr;
  for (const auto& p : plans)
    if (!chosen || p.pages_freed > chosen->pages_freed) chosen = &p;
  return chosen;
}

}  // namespace

std::uint64_t tails_start_pages(const PolicySettings& s, const Observation& obs) {
  const double held_pages = double(obs.mapped_bytes - std::min(obs.reserve_bytes, obs.mapped_bytes)) / double(kPageBytes);
  const auto by_fraction = std::uint64_t(std::ceil(s.tails_min_fraction * held_pages));
  return std::max({s.min_reclaim_pages, s.tails_min_pages, by_fraction});
}

std::optional<Decision> decide(const PolicySettings& s, const Observation& obs, EngineState& st, bool safepoint) {
  const bool failed_since = observe(s, obs, st);
  if (!s.background && !safepoint) return std::nullopt;

  const Want want = want_cycle(s, obs, st, failed_since);
  std::optional<CompactionTrigger> trigger = want.trigger;
  // Slab pages that can be emptied into large objects' unused last-page bytes free a page each,
  // however full they are: worth a cycle of their own once enough of them wait (tails_due: a
  // cycle per page or two, each with its remaps, was most of the compactor's work).
  // They are no pressure: with the background thread on, a safepoint leaves them to it rather
  // than make its caller pay.
  const Plan tails = s.evacuate ? plan_tails(obs.classes, obs.open_tails) : Plan{};
  const bool tails_here = !(safepoint && s.background);
  const bool tails_wanted = tails_here && tails_due(s, obs, tails, st);
  if (!trigger && tails_wanted) trigger = CompactionTrigger::tails;
  const bool region = region_due(s, obs);
  if (!trigger && !region) return std::nullopt;

  const double budget = cycle_budget(s, st);
  if (budget < 65536) return std::nullopt;
  if (!trigger) return region_decision(s, obs, st, budget, safepoint);
  if (*trigger == CompactionTrigger::tails) return tails_decision(s, obs, st, tails, budget, safepoint);

  const auto plans = plan_levels(obs.classes, occupancy_levels(s, want.cheapest_only));
  const Plan* chosen = choose_plan(plans, want.goal, budget);
  if (!chosen || chosen->pages_freed < s.min_reclaim_pages) {
    // Another trigger held but its plan frees too little: the tails may still be worth a cycle.
    // A low reserve or an idle heap takes them at min_reclaim_pages; fragmentation (which can
    // stay over the threshold for long where no plan helps) keeps to the hysteresis.
    const bool pressed = *trigger == CompactionTrigger::reserve_low || *trigger == CompactionTrigger::idle;
    if (pressed ? tails.pages_freed >= s.min_reclaim_pages : tails_wanted)
      return tails_decision(s, obs, st, tails, budget, safepoint);
    if (region) return region_decision(s, obs, st, budget, safepoint);
    return std::nullopt;
  }

  Decision d;
  d.trigger = (safepoint && *trigger != CompactionTrigger::reserve_low) ? CompactionTrigger::safepoint : *trigger;
  d.plan = *chosen;
  d.request.max_occupancy = std::min(0.999, chosen->max_occupancy);
  d.request.max_bytes = std::uint64_t(budget);
  d.request.max_pages = s.max_pages_per_cycle;
  d.request.trigger = d.trigger;
  d.request.mesh = s.mesh;
  d.request.evacuate = s.evacuate;
  return d;
}

void account(EngineState& st, const CompactionRecord& r) {
  st.byte_tokens -= double(r.bytes_moved);
  // A tails cycle that gave no page back (the plan's matches were taken by meshing, or could not
  // be made) ends the draining: the same plan would only repeat it.
  if (r.trigger == CompactionTrigger::tails && r.pages_freed + r.pages_meshed == 0) st.tails_draining = false;
  if (r.bytes_moved >= (std::uint64_t{1} << 20) && r.duration_ns > 0) {
    const double speed = double(r.bytes_moved) / double(r.duration_ns);
    st.copy_bytes_per_ns = st.copy_bytes_per_ns == 0 ? speed : 0.7 * st.copy_bytes_per_ns + 0.3 * speed;
  }
}

}  // namespace valet::policy
