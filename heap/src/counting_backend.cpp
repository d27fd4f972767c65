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

CountingBackend::CountingBackend(std::unique_ptr<Backend> inner)
    : BackendAdaptor(std::move(inner)), id_(register_backend()) {}

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

}  // namespace valet
