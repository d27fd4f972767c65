// What the allocation path asked for recently, for the reserve keeper's targets (reserve_keeper.h):
// the peak of the live bytes over a recent window, and the longest large request (in pages) over
// the same window, both over ordinary requests only. Updated by the allocation path and read by
// the keeper, both under the heap lock.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace valet::detail {

// The maximum of the values noted over roughly the last `window` nanoseconds, kept in two halves:
// the current half-window's maximum and the previous one's. A value is forgotten between one and
// two half-windows after it was noted, in O(1) space and time.
class WindowMax {
 public:
  explicit WindowMax(std::uint64_t window_ns) : half_(std::max<std::uint64_t>(window_ns / 2, 1)) {}

  void note(std::uint64_t v, std::uint64_t now) {
    roll(now);
    current_ = std::max(current_, v);
  }
  std::uint64_t get(std::uint64_t now) {
    roll(now);
    return std::max(current_, previous_);
  }

 private:
  void roll(std::uint64_t now) {
    if (now < started_ + half_) return;
    // One half-window passed: the current maximum becomes the previous one; two or more: both go.
    previous_ = now < started_ + 2 * half_ ? current_ : 0;
    current_ = 0;
    started_ = now - (now - started_) % half_;
  }

  std::uint64_t half_;
  std::uint64_t started_ = 0;
  std::uint64_t current_ = 0, previous_ = 0;
};

// The minimum of the values noted over roughly the last `window` nanoseconds, as WindowMax keeps
// the maximum: a value is forgotten between one and two half-windows after it was noted; with
// none noted in that time, the maximum of the type.
class WindowMin {
 public:
  explicit WindowMin(std::uint64_t window_ns) : half_(std::max<std::uint64_t>(window_ns / 2, 1)) {}

  void note(std::uint64_t v, std::uint64_t now) {
    roll(now);
    current_ = std::min(current_, v);
  }
  std::uint64_t get(std::uint64_t now) {
    roll(now);
    return std::min(current_, previous_);
  }

 private:
  static constexpr std::uint64_t kNone = ~std::uint64_t{0};
  void roll(std::uint64_t now) {
    if (now < started_ + half_) return;
    previous_ = now < started_ + 2 * half_ ? current_ : kNone;
    current_ = kNone;
    started_ = now - (now - started_) % half_;
  }

  std::uint64_t half_;
  std::uint64_t started_ = 0;
  std::uint64_t current_ = kNone, previous_ = kNone;
};

struct Demand {
  explicit Demand(std::uint64_t window_ns) : live_peak(window_ns), large_pages(window_ns) {}

  // A request of more than an eighth of the pages in use before it (and more than
  // kOrdinaryPages) is not ordinary demand: no reserve within the memory targets could hold it
  // mapped, and one such request, freed at once, must not lift the peak that bounds the reserve
  // for a whole window. (The benchmark's probes ask for half of the free memory or more: a fifth
  // to a third of the pages in use; the largest ordinary requests of the same traces a fiftieth.)
  static constexpr std::size_t kOrdinaryPages = 32;
  static bool ordinary(std::size_t pages, std::size_t used_pages) {
    return pages <= std::max(kOrdinaryPages, used_pages / 8);
  }

  WindowMax live_peak;    // live bytes after ordinary allocations
  WindowMax large_pages;  // pages of the longest ordinary large request
};

}  // namespace valet::detail
