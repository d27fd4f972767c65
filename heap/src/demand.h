// What the allocation path asked for recently, for the reserve keeper's targets (reserve_keeper.h):
// the peak of the live bytes over a recent window, and the longest large request (in pages) over
// the same window, both over ordinary requests only. Updated by the allocation path and read by
// the keeper, both under the heap lock.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace valet::detail {

// The maximum (or, with Min, the minimum) of the values noted over roughly the last `window`
// nanoseconds, kept in two halves: the current half-window's extreme and the previous one's. A
// value is forgotten between one and two half-windows after it was noted, in O(1) space and time.
// With none noted in that time: 0 for the maximum, the type's maximum for the minimum.
template <bool Min>
class WindowExtreme {
 public:
  explicit WindowExtreme(std::uint64_t window_ns) : half_(std::max<std::uint64_t>(window_ns / 2, 1)) {}

  void note(std::uint64_t v, std::uint64_t now) {
    roll(now);
    current_ = pick(current_, v);
  }
  std::uint64_t get(std::uint64_t now) {
    roll(now);
    return pick(current_, previous_);
  }

 private:
  static constexpr std::uint64_t kNone = Min ? ~std::uint64_t{0} : 0;
  static std::uint64_t pick(std::uint64_t a, std::uint64_t b) { return Min ? std::min(a, b) : std::max(a, b); }
  void roll(std::uint64_t now) {
    if (now < started_ + half_) return;
    // One half-window passed: the current extreme becomes the previous one; two or more: both go.
    previous_ = now < started_ + 2 * half_ ? current_ : kNone;
    current_ = kNone;
    started_ = now - (now - started_) % half_;
  }

  std::uint64_t half_;
  std::uint64_t started_ = 0;
  std::uint64_t current_ = kNone, previous_ = kNone;
};

using WindowMax = WindowExtreme<false>;
using WindowMin = WindowExtreme<true>;

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
