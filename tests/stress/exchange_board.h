// The shared exchange through which worker threads hand objects to each other, so that frees,
// pins and resizes happen on threads other than the allocating one. Each slot is a
// mutex-protected record: whoever swaps an object out of a slot owns it from then on, so
// ownership (and the knowledge of the object's pattern) moves safely between threads.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "stress_support.h"

namespace valet::stress {

class ExchangeBoard {
 public:
  explicit ExchangeBoard(std::size_t slots) : slots_(std::make_unique<Slot[]>(slots)), count_(slots) {}

  std::size_t size() const { return count_; }

  // Puts `deposit` (or nothing) into slot i and returns what was there.
  std::optional<TrackedObject> swap(std::size_t i, std::optional<TrackedObject> deposit) {
    std::lock_guard lock(slots_[i].mu);
    std::swap(slots_[i].object, deposit);
    return deposit;
  }

  // Runs f(const TrackedObject&) on slot i's object, if any, with the slot locked: the object can
  // be pinned and read there but neither taken nor freed by anyone else meanwhile.
  template <class F>
  bool visit(std::size_t i, F&& f) {
    std::lock_guard lock(slots_[i].mu);
    if (!slots_[i].object) return false;
    f(*slots_[i].object);
    return true;
  }

  // Everything on the board (only while no worker runs: checkpoints and the end).
  std::vector<TrackedObject> snapshot() {
    std::vector<TrackedObject> all;
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard lock(slots_[i].mu);
      if (slots_[i].object) all.push_back(*slots_[i].object);
    }
    return all;
  }

  std::vector<TrackedObject> drain() {
    std::vector<TrackedObject> all;
    for (std::size_t i = 0; i < count_; ++i)
      if (auto o = swap(i, std::nullopt)) all.push_back(*o);
    return all;
  }

 private:
  struct Slot {
    std::mutex mu;
    std::optional<TrackedObject> object;
  };
  std::unique_ptr<Slot[]> slots_;
  std::size_t count_;
};

}  // namespace valet::stress
