// What the allocations at or over the p99 were made of: of those slowest ones, how many returned
// pending, how many waited for the heap lock and how much of their time that wait was, how many
// made driver calls or were under a page. The p99 is known only at the end, so every allocation
// is kept (12 bytes each).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <vector>

#include "report.h"

namespace valet::replay {

class AllocTail {
 public:
  // `by_holder_ns`: its lock waits by holder (kLockHolders).
  void add(std::uint64_t ns, std::uint64_t lock_wait_ns, bool pending, bool driver_calls, bool under_page,
           const HolderWaitsNs& by_holder_ns) {
    constexpr std::uint64_t kMax = std::numeric_limits<std::uint32_t>::max();
    const auto longest = std::max_element(by_holder_ns.begin(), by_holder_ns.end());
    samples_.push_back({std::uint32_t(std::min(ns, kMax)), std::uint32_t(std::min(lock_wait_ns, kMax)),
                        std::uint8_t((pending ? kPending : 0) | (driver_calls ? kCalls : 0) |
                                     (under_page ? kUnderPage : 0)),
                        std::uint8_t(longest - by_holder_ns.begin())});
  }

  // The allocations whose time is at least `over_ns` (the run's alloc p99).
  ReplayReport::AllocTail figures(double over_ns) const {
    ReplayReport::AllocTail t;
    t.over_ns = over_ns;
    std::vector<std::uint32_t> ns, own;
    double sum_ns = 0, sum_wait = 0;
    for (const Sample& s : samples_) {
      if (double(s.ns) < over_ns) continue;
      ++t.count;
      t.pending += (s.flags & kPending) != 0;
      t.with_driver_calls += (s.flags & kCalls) != 0;
      t.under_page += (s.flags & kUnderPage) != 0;
      t.waited += s.lock_wait_ns > 0;
      if (s.lock_wait_ns > 0) ++t.waited_on[s.longest_holder];
      sum_ns += s.ns;
      sum_wait += std::min(s.lock_wait_ns, s.ns);
      ns.push_back(s.ns);
      own.push_back(s.ns - std::min(s.lock_wait_ns, s.ns));
    }
    if (t.count == 0) return t;
    t.lock_wait_share = sum_wait / sum_ns;
    t.median_ns = median(ns);
    t.median_ns_without_wait = median(own);
    return t;
  }

 private:
  static constexpr std::uint8_t kPending = 1, kCalls = 2, kUnderPage = 4;
  struct Sample {
    std::uint32_t ns, lock_wait_ns;
    std::uint8_t flags;
    std::uint8_t longest_holder;  // index of its longest wait's holder
  };
  static double median(std::vector<std::uint32_t>& v) {
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(v.size() / 2), v.end());
    return double(v[v.size() / 2]);
  }
  std::vector<Sample> samples_;
};

}  // namespace valet::replay
