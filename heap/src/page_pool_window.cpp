// Placing a large run around the reserve (page_pool.h, best_window): when no reserve run is long
// enough for a request, the run goes where free slots around one of the longest reserve runs
// make room, so that the reserve pages already there stay mapped where they are and only the
// other slots get pages. Each page a run does not have to move saves an unmap's share, a map and
// the access grant, the dearest call per page on the GPU.
#include <algorithm>
#include <vector>

#include "page_pool.h"
#include "thread_scratch.h"

namespace valet::detail {

namespace {

// The longest reserve runs tried: the longest hold the most of a window.
constexpr int kCandidates = 8;

struct Piece {
  std::uint32_t start = 0, length = 0;
  bool mapped = false;  // reserve slots; otherwise unmapped
  std::uint32_t end() const { return start + length; }
};

}  // namespace

std::optional<PagePool::Window> PagePool::best_window(std::uint32_t n, bool last_unmapped) const {
  std::optional<Window> best;
  // The pieces around a candidate run, reused from call to call (no allocation under the lock).
  ScratchOrOwn<std::vector<Piece>, struct WindowSpan> scratch;
  std::vector<Piece>& span = scratch.get();
  int tried = 0;
  // The free piece (reserve or unmapped, clipped to [lo, hi)) holding `slot`, if any. Each set
  // holds slots of one kind only (validate()), so the sets' bitmaps say which holds the slot and
  // where its piece begins and ends: a few words each, where the slot records and the sets' edge
  // records would be a cache miss a piece (docs/speed.md, "Session 47").
  auto piece_at = [&](std::uint32_t slot, std::uint32_t lo, std::uint32_t hi) -> std::optional<Piece> {
    for (const RangeSet* set : {&unmapped_, &dropped_, &reserve_})  // a dropping alias: unmapped on demand
      if (set->contains(slot)) {
        const RangeSet::Range r = set->piece_within(slot, lo, hi);
        return Piece{r.start, r.length, set == &reserve_};
      }
    return std::nullopt;
  };
  reserve_.for_each_longest([&](RangeSet::Range run) {
    if (++tried > kCandidates) return false;
    // The free slots around the run, at most n - run.length on either side (a window holding
    // the run reaches no further).
    const std::uint32_t reach = n - run.length;
    const std::uint32_t lo = run.start > reach ? run.start - reach : 0;
    const std::uint32_t hi = std::uint32_t(std::min<std::uint64_t>(std::uint64_t(run.start) + run.length + reach, slots_.size()));
    // No window here holds more reserve slots than [lo, hi) does: where that is no more than the
    // best window's, the run's neighbours are not walked (the same window is chosen).
    if (best && reserve_.count_within(lo, hi) <= best->mapped) return true;
    span.clear();
    for (std::uint32_t at = run.start; at > lo;) {
      auto p = piece_at(at - 1, lo, hi);
      if (!p) break;
      span.push_back(*p);
      at = p->start;
    }
    std::reverse(span.begin(), span.end());
    span.push_back({run.start, run.length, true});
    for (std::uint32_t at = run.start + run.length; at < hi;) {
      auto p = piece_at(at, lo, hi);
      if (!p) break;
      span.push_back(*p);
      at = p->end();
    }
    if (span.back().end() - span.front().start < n) return true;
    // The window holding the most reserve slots starts at a piece's start or ends at a piece's
    // end (the count is piecewise linear in the start).
    auto mapped_in = [&](std::uint32_t w) {
      std::uint32_t m = 0;
      for (const Piece& p : span)
        if (p.mapped) {
          const std::uint32_t s = std::max(p.start, w), e = std::min(p.end(), w + n);
          if (e > s) m += e - s;
        }
      return m;
    };
    auto last_is_unmapped = [&](std::uint32_t last) {
      for (const Piece& p : span)
        if (last >= p.start && last < p.end()) return !p.mapped;
      return false;
    };
    auto consider = [&](std::int64_t w) {
      if (w < span.front().start || w + n > span.back().end()) return;
      if (last_unmapped && !last_is_unmapped(std::uint32_t(w + n - 1))) return;
      const std::uint32_t m = mapped_in(std::uint32_t(w));
      if (!best || m > best->mapped) best = Window{std::uint32_t(w), m};
    };
    for (const Piece& p : span) {
      consider(p.start);
      consider(std::int64_t(p.end()) - n);
      if (last_unmapped && !p.mapped) consider(std::int64_t(p.start) + 1 - n);  // ends on its first slot
    }
    return true;
  });
  // A whole free chunk (page_pool_chunks.cpp) is a mapped run too, if the window holds all of
  // it inside the body: its pages then serve the run where they lie, instead of going back to
  // the backend while the run gets new ones (a KV cache reallocated a token longer frees a
  // chunk of the body it needs; docs/speed.md, "Session 39"). Never part of one: the rest would
  // stay mapped for nothing.
  const std::uint32_t body = last_unmapped ? n - 1 : n;
  for_each_whole_free_chunk([&](std::uint32_t p) {
    const PhysRecord& c = phys_[p];
    if (c.pages > body || (best && best->mapped >= n)) return true;
    // The window [w, w + n): the chunk inside its body, every other slot free.
    auto consider_at = [&](std::uint32_t w) {
      if (w + std::uint64_t(n) > slots_.size() || c.first < w || c.first + c.pages > w + body) return;
      std::uint32_t m = c.pages;
      for (std::uint32_t at = w; at < w + n;) {
        if (at == c.first) {
          at += c.pages;
          continue;
        }
        auto piece = piece_at(at, w, std::min(w + n, at < c.first ? c.first : w + n));
        if (!piece) return;
        if (last_unmapped && piece->mapped && piece->end() == w + n) return;
        if (piece->mapped) m += piece->end() - at;
        at = piece->end();
      }
      if (!best || m > best->mapped) best = Window{w, m};
    };
    // The free slots around the chunk that such a window may reach: from `left` to `right`.
    const std::uint32_t reach = body - c.pages;
    const std::uint32_t lo = c.first > reach ? c.first - reach : 0;
    std::uint32_t left = c.first, right = c.first + c.pages;
    const std::uint32_t hi = std::uint32_t(std::min<std::uint64_t>(std::uint64_t(right) + reach + (n - body), slots_.size()));
    // As for the reserve's runs: no walk where the window cannot beat the best one.
    if (best && c.pages + reserve_.count_within(lo, hi) <= best->mapped) return true;
    while (left > lo) {
      auto piece = piece_at(left - 1, lo, c.first);
      if (!piece) break;
      left = piece->start;
    }
    while (right < hi) {
      auto piece = piece_at(right, right, hi);
      if (!piece) break;
      right = piece->end();
    }
    // The leftmost window (the most of the pieces before the chunk: a freed run's own pages) and
    // the rightmost.
    consider_at(left);
    if (right >= left + n) consider_at(std::min(c.first, right - n));
    return true;
  });
  if (best && best->mapped == 0) return std::nullopt;
  return best;
}

}  // namespace valet::detail
