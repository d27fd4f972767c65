// Allocation latencies in bounded memory: a histogram, exact to the nanosecond below 64 us (where
// nearly every allocation falls) and within 1/256 of the value above, so that a trace of any
// length costs the same ~600 KiB. Ranks follow the PyTorch baseline replayer's: the median is the
// mean of the middle two for an even count, a percentile q the sorted element at rank q * n.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

namespace valet::replay {

class LatencyHistogram {
 public:
  LatencyHistogram() : exact_(kExact, 0), log_((64 - kExactBits) << kSubBits, 0) {}

  void add(std::uint64_t ns) {
    ++count_;
    max_ = std::max(max_, ns);
    if (ns < kExact) {
      ++exact_[ns];
      return;
    }
    ++log_[log_bucket(ns)];
  }

  std::uint64_t count() const { return count_; }
  std::uint64_t max() const { return max_; }

  // The value of rank `r` (0-based) among the sorted samples; precondition: r < count().
  double at_rank(std::uint64_t r) const {
    for (std::uint64_t v = 0; v < kExact; ++v) {
      if (r < exact_[v]) return double(v);
      r -= exact_[v];
    }
    for (std::size_t b = 0; b < log_.size(); ++b) {
      if (r < log_[b]) return std::min(bucket_middle(b), double(max_));
      r -= log_[b];
    }
    return double(max_);
  }

  // The median; 0 with no sample.
  double median() const {
    const std::uint64_t n = count_;
    if (n == 0) return 0;
    return n % 2 ? at_rank(n / 2) : (at_rank(n / 2 - 1) + at_rank(n / 2)) / 2;
  }
  // The sample at rank q * n (0 < q < 1), as the baseline computes p99; 0 with no sample.
  double percentile(double q) const {
    const std::uint64_t n = count_;
    if (n == 0) return 0;
    return at_rank(std::min(n - 1, std::uint64_t(q * double(n))));
  }

 private:
  static constexpr unsigned kExactBits = 16;
  static constexpr std::uint64_t kExact = std::uint64_t{1} << kExactBits;
  static constexpr unsigned kSubBits = 8;  // buckets per power of two above kExact

  // Precondition: ns >= kExact. The power of two, then the next kSubBits bits below its top bit.
  static std::size_t log_bucket(std::uint64_t ns) {
    const unsigned top = 63u - unsigned(std::countl_zero(ns));
    const std::uint64_t sub = (ns >> (top - kSubBits)) & ((1u << kSubBits) - 1);
    return (std::size_t(top - kExactBits) << kSubBits) | std::size_t(sub);
  }
  static double bucket_middle(std::size_t b) {
    const unsigned top = unsigned(b >> kSubBits) + kExactBits;
    const std::uint64_t sub = b & ((1u << kSubBits) - 1);
    const double width = double(std::uint64_t{1} << (top - kSubBits));
    return double((std::uint64_t{1} << kSubBits) | sub) * width + width / 2;
  }

  std::vector<std::uint64_t> exact_;
  std::vector<std::uint64_t> log_;
  std::uint64_t count_ = 0;
  std::uint64_t max_ = 0;
};

}  // namespace valet::replay
