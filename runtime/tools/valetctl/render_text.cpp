#include "render_text.h"

#include <algorithm>
#include <cstdio>

namespace valetctl {

using nlohmann::json;

namespace {

// Reads a number from the reply, 0 when absent (older or newer servers may lack a field).
double num(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0;
}
std::string str(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string("?");
}
std::string count(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}
std::string fixed(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
std::string duration_text(double ns) {
  if (ns < 1e6) return fixed(ns / 1e3, 1) + " us";
  if (ns < 1e9) return fixed(ns / 1e6, 2) + " ms";
  return fixed(ns / 1e9, 2) + " s";
}
const json& section(const json& j, const char* key) {
  static const json empty = json::object();
  return j.contains(key) && j[key].is_object() ? j[key] : empty;
}

// Pages twice, each list adding up to the total it follows: the physical pages held (what
// mapped_bytes counts) and the virtual slots in use. Meshed slots and slab pages built on a large
// object's last page (shared tails) map another slot's physical page; idle pages are reserve
// pages mapped at no slot; releasing ones are reserve pages being given back to the driver;
// moving ones were taken by a move in flight.
template <class Line>
void pages_text(const json& s, Line line) {
  const json& p = section(s, "pages");
  const double page = num(s, "page_bytes") ? num(s, "page_bytes") : double(2 << 20);
  const double slab = num(p, "slab"), tails = num(p, "shared_tails"), large = num(p, "large");
  const double reserve = num(p, "reserve"), idle = num(p, "idle"), meshed = num(p, "meshed");
  const double releasing = num(p, "releasing"), moving = num(p, "moving");
  line("pages (" + bytes_text(page) + " each)");
  line("  physical  " + count(num(s, "mapped_bytes") / page) + " mapped of " + count(num(s, "capacity_bytes") / page) +
       ": slab " + count(slab - tails) + ", large " + count(large) + ", reserve " + count(reserve) + " (idle " +
       count(idle) + "), releasing " + count(releasing) + ", moving " + count(moving) +
       (num(p, "region") > 0 ? ", copying region " + count(num(p, "region")) : std::string()));
  line("  virtual   " + count(slab + meshed + large + reserve - idle + releasing + moving) + " slots in use: slab " +
       count(slab) + ", meshed " + count(meshed) + ", large " + count(large) + ", reserve " +
       count(reserve - idle + releasing) + ", moving " + count(moving));
  line("            " + count(meshed + tails) + " of them map another slot's page: meshed " + count(meshed) +
       ", slab on a large object's last page " + count(tails));
  if (s.contains("occupancy_histogram") && s["occupancy_histogram"].is_array()) {
    std::string h = "  slab occupancy (" + count(slab) + " pages) ";
    int bin = 0;
    for (const auto& n : s["occupancy_histogram"]) {
      h += " " + std::to_string(bin * 10) + "-" + std::to_string(bin * 10 + 10) + "%:" + n.dump();
      ++bin;
    }
    line(h);
  }
}

// Two cycle counts with different scopes: the heap's (every cycle any caller ran, emergency
// ones included) and the background compactor's (the cycles it asked the heap for, by reason).
template <class Line>
void compaction_text(const json& s, Line line) {
  const json& c = section(s, "compaction");
  line("compaction");
  line("  heap cycles " + count(num(c, "cycles")) + " (by any caller; emergency " + count(num(c, "emergency_cycles")) +
       ", run by an allocation that did not fit)");
  line("  moved " + count(num(c, "objects_moved")) + " objects (" + bytes_text(num(c, "bytes_moved")) + "), pages freed " +
       count(num(c, "pages_freed")) + ", meshed " + count(num(c, "pages_meshed")));
  const json& comp = section(s, "compactor");
  if (!comp.value("running", false)) {
    line("  compactor: none (compaction on request only)");
    return;
  }
  const json& k = section(comp, "counters");
  // Every cycle is either its policy's (counted by trigger) or a request's; a request whose cycle
  // failed is counted as a request but ran no cycle.
  const double policy = num(k, "fragmentation") + num(k, "reserve_low") + num(k, "idle") + num(k, "safepoints") + num(k, "tails");
  const double requested = std::max(0.0, num(k, "cycles") - policy);
  const double failed = num(k, "explicit_requests") - requested;
  line("  compactor cycles " + count(num(k, "cycles")) + " = fragmentation " + count(num(k, "fragmentation")) +
       " + reserve low " + count(num(k, "reserve_low")) + " + idle " + count(num(k, "idle")) + " + safepoints " +
       count(num(k, "safepoints")) + " + tails " + count(num(k, "tails")) + " + requested " + count(requested) +
       (failed > 0 ? " (" + count(failed) + " more requests failed)" : std::string()));
}

}  // namespace

std::string bytes_text(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? count(b) + " B" : fixed(b, 1) + " " + units[u];
}

std::string record_text(const json& r) {
  return str(r, "trigger") + ": moved " + count(num(r, "objects_moved")) + " objects (" + bytes_text(num(r, "bytes_moved")) +
         "), freed " + count(num(r, "pages_freed")) + " pages, meshed " + count(num(r, "pages_meshed")) + ", skipped " +
         count(num(r, "objects_skipped")) + ", " + duration_text(num(r, "duration_ns")) +
         (num(r, "longest_pin_wait_ns") > 0 ? ", longest pin wait " + duration_text(num(r, "longest_pin_wait_ns")) : "");
}

std::string stats_text(const json& s) {
  std::string o;
  auto line = [&](const std::string& text) { o += text + "\n"; };
  line("valet service pid " + count(num(s, "pid")) + ", " + str(s, "backend") + ", up " + fixed(num(s, "uptime_s"), 1) + " s");
  line("memory");
  line("  live           " + bytes_text(num(s, "live_bytes")) + " in " + count(num(s, "live_objects")) +
       " objects (footprint " + bytes_text(num(s, "footprint_bytes")) + ")");
  line("  mapped         " + bytes_text(num(s, "mapped_bytes")) + " of " + bytes_text(num(s, "capacity_bytes")) +
       " capacity (reserve " + bytes_text(num(s, "reserve_bytes")) + ")");
  line("  reserved VA    " + bytes_text(num(s, "reserved_bytes")));
  line("  fragmentation  " + fixed(num(s, "fragmentation"), 3) + "  (1 - live/mapped)");
  line("  largest allocatable object  " + bytes_text(num(s, "largest_allocatable_bytes")));

  pages_text(s, line);
  const json& ops = section(s, "ops");
  line("operations");
  line("  allocate " + count(num(ops, "allocate")) + ", free " + count(num(ops, "free")) + ", resize " +
       count(num(ops, "resize")) + ", pin " + count(num(ops, "pin")) + ", failed allocations " +
       count(num(ops, "failed_allocations")));
  const json& d = section(s, "driver_calls");
  line("  driver: create " + count(num(d, "create")) + ", release " + count(num(d, "release")) + ", map " +
       count(num(d, "map")) + ", unmap " + count(num(d, "unmap")) + ", set_access " + count(num(d, "set_access")) +
       ", copy " + count(num(d, "copy")) + " (under the heap lock " + count(num(d, "under_heap_lock")) + ")");
  compaction_text(s, line);
  if (s.contains("recent_cycles") && s["recent_cycles"].is_array() && !s["recent_cycles"].empty()) {
    line("  last cycles (newest last):");
    const auto& cycles = s["recent_cycles"];
    const std::size_t first = cycles.size() > 5 ? cycles.size() - 5 : 0;
    for (std::size_t i = first; i < cycles.size(); ++i) line("    " + record_text(cycles[i]));
  }
  const json& t = section(s, "trace");
  if (t.value("recording", false))
    line("trace: recording to " + str(t, "path") + " (" + count(num(t, "lines")) + " lines)");
  return o;
}

std::string compact_text(const json& r) {
  if (!r.value("ran", true)) return "no cycle ran: " + str(r, "reason") + "\n";
  std::string o = "compaction (" + str(r, "by") + ") " + record_text(section(r, "record")) + "\n";
  if (r.contains("cycles") && r["cycles"].is_array() && r["cycles"].size() > 1)
    o += "  in " + std::to_string(r["cycles"].size()) + " cycles\n";
  o += "  fragmentation " + fixed(num(r, "fragmentation_before"), 3) + " -> " + fixed(num(r, "fragmentation_after"), 3) +
       ", mapped " + bytes_text(num(r, "mapped_bytes_before")) + " -> " + bytes_text(num(r, "mapped_bytes_after")) + "\n";
  if (r.contains("target_reached")) o += std::string("  target ") + (r["target_reached"].get<bool>() ? "reached" : "not reached") + "\n";
  return o;
}

std::string table_text(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width;
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], row[i].size());
    }
  std::string o;
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i)
      o += i + 1 < row.size() ? row[i] + std::string(width[i] - row[i].size() + 2, ' ') : row[i];
    o += "\n";
  }
  return o;
}

std::string policy_text(const json& policy) {
  std::size_t width = 0;
  for (const auto& [k, v] : policy.items()) width = std::max(width, k.size());
  std::string o;
  for (const auto& [k, v] : policy.items())
    o += k + std::string(width - k.size(), ' ') + " = " + (v.is_string() ? v.get<std::string>() : v.dump()) + "\n";
  return o;
}

}  // namespace valetctl
