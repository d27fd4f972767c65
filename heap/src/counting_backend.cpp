#include "valet/counting_backend.h"

#include <algorithm>
#include <mutex>
#include <unordered_set>
#include <vector>

namespace valet {
namespace {

// Each thread's counts, one entry per CountingBackend the thread has called through. A thread
// calls through few backends at once, so a short vector searched linearly beats any map.
struct ThreadTally {
  std::uint64_t owner = 0;
  DriverCallCounts counts;
};
thread_local std::vector<ThreadTally> t_tallies;

// Backends alive now, by id: a thread drops the entries of dead ones when its vector grows, so a
// long-lived thread that meets many short-lived backends (one per test heap) keeps a short vector.
struct Registry {
  std::mutex mu;
  std::unordered_set<std::uint64_t> live;
  std::uint64_t next_id = 1;
};
Registry& registry() {
  static auto* r = new Registry;  // never destroyed: backends may outlive static destruction
  return *r;
}

constexpr std::size_t kPruneAbove = 8;

ThreadTally* find_tally(std::uint64_t owner) {
  for (auto it = t_tallies.rbegin(); it != t_tallies.rend(); ++it)
    if (it->owner == owner) return &*it;
  return nullptr;
}

ThreadTally& tally_of(std::uint64_t owner) {
  if (ThreadTally* t = find_tally(owner)) return *t;
  if (t_tallies.size() >= kPruneAbove) {
    auto& r = registry();
    std::lock_guard lock(r.mu);
    std::erase_if(t_tallies, [&](const ThreadTally& t) { return r.live.count(t.owner) == 0; });
  }
  t_tallies.push_back(ThreadTally{owner, {}});
  return t_tallies.back();
}

std::uint64_t register_backend() {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  const std::uint64_t id = r.next_id++;
  r.live.insert(id);
  return id;
}

}  // namespace

std::uint64_t DriverCallCounts::total() const {
  std::uint64_t n = 0;
  for (std::uint64_t c : by_op) n += c;
  return n;
}

DriverCallCounts DriverCallCounts::since(const DriverCallCounts& earlier) const {
  DriverCallCounts d;
  for (std::size_t i = 0; i < kDriverOpCount; ++i) d.by_op[i] = by_op[i] - earlier.by_op[i];
  return d;
}

std::uint64_t DriverCallTimes::total_ns() const {
  std::uint64_t n = 0;
  for (const auto& kind : ns)
    for (std::uint64_t t : kind) n += t;
  return n;
}

std::uint64_t DriverCallTimes::op_ns(DriverOp op) const {
  std::uint64_t n = 0;
  for (const auto& kind : ns) n += kind[std::size_t(op)];
  return n;
}

std::uint64_t DriverCallTimes::thread_kind_ns(std::size_t kind) const {
  std::uint64_t n = 0;
  for (std::uint64_t t : ns[kind]) n += t;
  return n;
}

CountingBackend::CountingBackend(std::unique_ptr<Backend> inner)
    : BackendAdaptor(std::move(inner)), id_(register_backend()) {
  time_calls();
}

CountingBackend::~CountingBackend() {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  r.live.erase(id_);
}

std::uint64_t CountingBackend::calls(DriverOp op) const {
  return totals_[std::size_t(op)].load(std::memory_order_relaxed);
}

DriverCallCounts CountingBackend::totals() const {
  DriverCallCounts c;
  for (std::size_t i = 0; i < kDriverOpCount; ++i) c.by_op[i] = totals_[i].load(std::memory_order_relaxed);
  return c;
}

DriverCallCounts CountingBackend::under_lock() const {
  DriverCallCounts c;
  for (std::size_t i = 0; i < kDriverOpCount; ++i) c.by_op[i] = under_lock_[i].load(std::memory_order_relaxed);
  return c;
}

DriverCallTimes CountingBackend::times() const {
  DriverCallTimes t;
  for (std::size_t k = 0; k < kDriverThreadKinds; ++k)
    for (std::size_t i = 0; i < kDriverOpCount; ++i) t.ns[k][i] = ns_[k][i].load(std::memory_order_relaxed);
  return t;
}

DriverCallCounts CountingBackend::this_thread() const {
  const ThreadTally* t = find_tally(id_);
  return t ? t->counts : DriverCallCounts{};
}

Status CountingBackend::before(DriverOp op) {
  totals_[std::size_t(op)].fetch_add(1, std::memory_order_relaxed);
  ++tally_of(id_).counts.by_op[std::size_t(op)];
  if (probe_ && probe_()) under_lock_[std::size_t(op)].fetch_add(1, std::memory_order_relaxed);
  return {};
}

void CountingBackend::after(DriverOp op, std::chrono::nanoseconds took) {
  const std::size_t kind = kind_probe_ ? std::min(kind_probe_(), kDriverThreadKinds - 1) : 0;
  ns_[kind][std::size_t(op)].fetch_add(std::uint64_t(took.count()), std::memory_order_relaxed);
}

}  // namespace valet
