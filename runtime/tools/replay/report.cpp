// Printing a replay's report (see report.h).
#include "report.h"

#include <cstdio>

#include "valet/stats_json.h"

namespace valet::replay {

namespace {

// The background compactor's counters and its policy settings; null for a run without one.
nlohmann::ordered_json compactor_json(const ReplayReport& r) {
  if (!r.compactor) return nullptr;
  nlohmann::ordered_json c;
  c["cycles"] = r.compactor_cycles;
  c["background_cycles"] = r.background_cycles;
  c["safepoint_calls"] = r.safepoint_calls;
  c["safepoint_cycles"] = r.safepoint_cycles;
  c["safepoint_busy"] = r.safepoint_busy;
  c["by_trigger"] = {{"fragmentation", r.cycles_fragmentation},
                     {"reserve_low", r.cycles_reserve_low},
                     {"idle", r.cycles_idle},
                     {"safepoint", r.cycles_safepoint_trigger},
                     {"tails", r.cycles_tails}};
  c["failed_cycles"] = r.failed_cycles;
  c["safepoint_ns_total"] = r.safepoint_ns_total;
  c["safepoint_ns_max"] = r.safepoint_ns_max;
  c["safepoint_cycle_ns_max"] = r.safepoint_cycle_ns_max;
  nlohmann::ordered_json p = nlohmann::ordered_json::object();
  for (const auto& [k, v] : r.policy) p[k] = v;
  c["policy"] = p;
  return c;
}

// One compaction cycle's record.
nlohmann::ordered_json cycle_json(const CompactionRecord& c) {
  return {{"trigger", trigger_name(c.trigger)}, {"objects_moved", c.objects_moved},
          {"bytes_moved", c.bytes_moved},       {"pages_freed", c.pages_freed},
          {"pages_meshed", c.pages_meshed},     {"bytes_meshed", c.bytes_meshed},
          {"objects_skipped", c.objects_skipped}, {"duration_ns", c.duration_ns},
          {"longest_pin_wait_ns", c.longest_pin_wait_ns}};
}

// The alloc path's driver calls: the total, then one count per DriverOp, zeros included.
nlohmann::ordered_json driver_calls_json(const DriverCallCounts& calls) {
  nlohmann::ordered_json j;
  j["total"] = calls.total();
  for (std::size_t i = 0; i < kDriverOpCount; ++i) j[driver_op_name(DriverOp(i))] = calls.by_op[i];
  return j;
}

// Seconds in all, by operation (those that took any) and by role, each role's by operation.
nlohmann::ordered_json driver_time_json(const DriverCallTimes& t) {
  static_assert(kLockHolders.size() == kDriverThreadKinds, "the door's thread kinds are the heap lock's roles");
  const auto by_op = [](auto&& ns_of) {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    for (std::size_t i = 0; i < kDriverOpCount; ++i)
      if (const std::uint64_t ns = ns_of(DriverOp(i)); ns > 0) j[driver_op_name(DriverOp(i))] = double(ns) * 1e-9;
    return j;
  };
  nlohmann::ordered_json j;
  j["total"] = double(t.total_ns()) * 1e-9;
  j["by_op"] = by_op([&](DriverOp op) { return t.op_ns(op); });
  nlohmann::ordered_json roles, role_ops;
  for (std::size_t k = 0; k < kDriverThreadKinds; ++k) {
    roles[kLockHolders[k]] = double(t.thread_kind_ns(k)) * 1e-9;
    role_ops[kLockHolders[k]] = by_op([&](DriverOp op) { return t.ns[k][std::size_t(op)]; });
  }
  j["by_role"] = roles;
  j["by_role_op"] = role_ops;
  return j;
}

double driver_calls_per_op(const ReplayReport& r) {
  return r.ops ? double(r.alloc_path_driver_calls.total()) / double(r.ops) : 0.0;
}

}  // namespace

nlohmann::ordered_json to_json(const ReplayReport& r) {
  nlohmann::ordered_json j;
  j["trace"] = r.trace;
  j["backend"] = r.backend;
  j["capacity_bytes"] = r.capacity_bytes;
  j["compaction"] = r.compaction;
  j["share_tails"] = r.share_tails;
  j["fixed"] = r.fixed;
  j["stream_frees"] = r.stream_frees;
  j["verify"] = r.verify;
  j["pinners"] = r.pinners;
  j["ops"] = r.ops;
  j["ooms"] = r.ooms;
  j["allocated_bytes"] = r.allocated_bytes;
  j["probes"] = r.probes;
  j["probes_failed"] = r.probes_failed;
  j["peak_live_bytes"] = r.peak_live_bytes;
  j["peak_mapped_bytes"] = r.peak_mapped_bytes;
  j["peak_mapped_line"] = r.peak_mapped_line;
  const auto& pp = r.peak_mapped_pages;
  j["peak_mapped_pages"] = {{"live", pp.live},       {"large", pp.large},         {"slab_own", pp.slab_own},
                            {"reserve", pp.reserve}, {"releasing", pp.releasing}, {"moving", pp.moving}};
  j["mean_fragmentation"] = r.mean_fragmentation;
  j["mean_fragmentation_unweighted"] = r.mean_fragmentation_unweighted;
  j["mean_reserve_bytes"] = r.mean_reserve_bytes;
  j["mean_fragmentation_without_reserve"] = r.mean_fragmentation_without_reserve;
  j["think_us"] = r.think_us;
  j["think_s"] = r.think_s;
  j["alloc_ns_median"] = r.alloc_ns_median;
  j["alloc_ns_p90"] = r.alloc_ns_p90;
  j["alloc_ns_p95"] = r.alloc_ns_p95;
  j["alloc_ns_p99"] = r.alloc_ns_p99;
  j["alloc_ns_p999"] = r.alloc_ns_p999;
  j["alloc_ns_max"] = r.alloc_ns_max;
  j["slowest_allocations"] = nlohmann::ordered_json::array();
  for (const auto& a : r.slowest_allocations)
    j["slowest_allocations"].push_back({{"line", a.line},
                                        {"bytes", a.bytes},
                                        {"ns", a.ns},
                                        {"lock_wait_ns", a.lock_wait_ns},
                                        {"pending", a.pending},
                                        {"driver_calls", a.driver_calls},
                                        {"cpu_ns", a.cpu_ns}});
  j["free_ns_median"] = r.free_ns_median;
  j["free_ns_p99"] = r.free_ns_p99;
  j["free_ns_max"] = r.free_ns_max;
  const auto size_class = [](const ReplayReport::SizeClassLatency& c) {
    return nlohmann::ordered_json{{"count", c.count}, {"median", c.median}, {"p99", c.p99}, {"max", c.max}};
  };
  j["alloc_ns_under_page"] = size_class(r.alloc_ns_under_page);
  j["alloc_ns_pages"] = size_class(r.alloc_ns_pages);
  j["alloc_ns_pending"] = size_class(r.alloc_ns_pending);
  j["alloc_ns_pages_not_pending"] = size_class(r.alloc_ns_pages_not_pending);
  const auto holders = [](const auto& by) {
    nlohmann::ordered_json j;
    for (std::size_t i = 0; i < kLockHolders.size(); ++i) j[kLockHolders[i]] = by[i];
    return j;
  };
  const auto lock_wait = [&](const ReplayReport::LockWait& w) {
    return nlohmann::ordered_json{{"waited", w.waited},
                                  {"total_s", w.total_s},
                                  {"p99_ns", w.p99_ns},
                                  {"max_ns", w.max_ns},
                                  {"by_holder_s", holders(w.by_holder_s)}};
  };
  j["alloc_lock_wait"] = lock_wait(r.alloc_lock_wait);
  j["free_lock_wait"] = lock_wait(r.free_lock_wait);
  j["alloc_tail"] = {{"over_ns", r.alloc_tail.over_ns},
                     {"count", r.alloc_tail.count},
                     {"pending", r.alloc_tail.pending},
                     {"waited", r.alloc_tail.waited},
                     {"lock_wait_share", r.alloc_tail.lock_wait_share},
                     {"with_driver_calls", r.alloc_tail.with_driver_calls},
                     {"under_page", r.alloc_tail.under_page},
                     {"waited_on", holders(r.alloc_tail.waited_on)},
                     {"median_ns", r.alloc_tail.median_ns},
                     {"median_ns_without_wait", r.alloc_tail.median_ns_without_wait}};
  j["allocs_with_calls"] = r.allocs_with_calls;
  j["frees_with_calls"] = r.frees_with_calls;
  j["alloc_path_driver_calls"] = driver_calls_json(r.alloc_path_driver_calls);
  j["alloc_path_driver_calls_per_op"] = driver_calls_per_op(r);
  j["probe_driver_calls"] = driver_calls_json(r.probe_driver_calls);
  j["driver_calls_under_heap_lock"] = driver_calls_json(r.under_heap_lock_driver_calls);
  j["driver_calls_total"] = driver_calls_json(r.total_driver_calls);
  j["driver_time_s"] = driver_time_json(r.driver_times);
  j["peak_mapped_over_live"] = r.peak_live_bytes ? double(r.peak_mapped_bytes) / double(r.peak_live_bytes) : 0.0;
  j["compactions"] = r.compactions;
  j["emergency_compactions"] = r.emergency_compactions;
  j["bytes_moved"] = r.bytes_moved;
  j["objects_moved"] = r.objects_moved;
  j["pages_freed"] = r.pages_freed;
  j["chunks_created"] = r.chunks_created;
  const auto& cr = r.copy_region;
  j["copy_region"] = {{"placed", cr.placed},          {"fell_back", cr.fell_back},
                      {"rounds", cr.rounds},          {"moves", cr.moves},
                      {"moves_cancelled", cr.moves_cancelled}, {"bytes_moved", cr.bytes_moved},
                      {"chunks_mapped", cr.chunks_mapped},     {"chunks_unmapped", cr.chunks_unmapped}};
  j["background_misses"] = r.background_misses;
  j["lost_allocations"] = r.lost_allocations;
  j["misses_placed_by_mapper"] = r.misses_placed_by_mapper;
  j["small_misses_placed_by_mapper"] = r.small_misses_placed_by_mapper;
  j["misses_served_by_pins"] = r.misses_served_by_pins;
  j["mapper_wakes"] = r.mapper_wakes;
  j["unlocked_misses"] = r.unlocked_misses;
  j["cached_allocations"] = r.cached_allocations;
  j["cached_run_allocations"] = r.cached_run_allocations;
  j["keeper"] = {{"batches", r.keeper.batches},
                 {"yields", r.keeper.yields},
                 {"lock_wait_s", double(r.keeper.lock_wait_ns) / 1e9},
                 {"longest_lock_wait_ms", double(r.keeper.longest_lock_wait_ns) / 1e6},
                 {"lock_waits_over_1ms", r.keeper.lock_waits_over_1ms}};
  j["lock_holds"] = lock_holds_json(r.lock_holds);
  j["pages_meshed"] = r.pages_meshed;
  j["bytes_meshed"] = r.bytes_meshed;
  j["compactor"] = compactor_json(r);
  j["moved_fraction"] = r.moved_fraction;
  j["copied_fraction"] = r.copied_fraction;
  j["pin_wait_ns_max"] = r.pin_wait_ns_max;
  j["pin_wait_ns_max_cycles"] = r.pin_wait_ns_max_cycles;
  if (r.pin_wait_ns_max_cycles) j["pin_wait_max_cycle"] = cycle_json(r.pin_wait_max_cycle);
  j["pin_wait_max_lines"] = {r.pin_wait_max_lines[0], r.pin_wait_max_lines[1]};
  j["pins"] = r.pins;
  j["pins_stale"] = r.pins_stale;
  j["pin_errors"] = r.pin_errors;
  j["pin_waits_over_100us"] = r.pin_waits_over_100us;
  j["pin_waits_over_1ms"] = r.pin_waits_over_1ms;
  j["pins_preempted"] = r.pins_preempted;
  j["pin_wait_ns_max_unpreempted"] = r.pin_wait_ns_max_unpreempted;
  j["free_retries"] = r.free_retries;
  j["verified_objects"] = r.verified_objects;
  j["verify_errors"] = r.verify_errors;
  j["heap_errors"] = r.heap_errors;
  j["wall_s"] = r.wall_s;
  const auto& w = r.wall_parts_s;
  j["wall_parts_s"] = {{"allocate", w.allocate},
                       {"free", w.free},
                       {"probe", w.probe},
                       {"step", w.step},
                       {"signatures", w.signatures},
                       {"peak_samples", w.peak_samples},
                       {"other", r.wall_s - r.think_s - w.allocate - w.free - w.probe - w.step - w.signatures -
                                     w.peak_samples}};
  return j;
}

std::string summary_line(const ReplayReport& r) {
  const double gib = double(std::uint64_t{1} << 30);
  char buf[768];
  std::snprintf(buf, sizeof buf,
                "valet:%s cap=%.1fGiB compaction=%s ops=%llu ooms=%llu probes_failed=%llu/%llu "
                "mapped/live=%.3f frag=%.3f (unweighted %.3f) compactions=%llu moved=%.2f%% "
                "pin_wait_max=%.1fus alloc_ns median=%.0f p99=%.0f free_ns p99=%.0f driver_calls/op=%.4f "
                "verify_errors=%llu wall=%.2fs",
                r.backend.c_str(), double(r.capacity_bytes) / gib, r.compaction ? "on" : "off",
                (unsigned long long)r.ops, (unsigned long long)r.ooms, (unsigned long long)r.probes_failed,
                (unsigned long long)r.probes,
                r.peak_live_bytes ? double(r.peak_mapped_bytes) / double(r.peak_live_bytes) : 0.0, r.mean_fragmentation,
                r.mean_fragmentation_unweighted, (unsigned long long)r.compactions, 100.0 * r.moved_fraction,
                double(r.pin_wait_ns_max) / 1e3, r.alloc_ns_median, r.alloc_ns_p99, r.free_ns_p99,
                driver_calls_per_op(r), (unsigned long long)r.verify_errors,
                r.wall_s);
  return buf;
}

}  // namespace valet::replay
