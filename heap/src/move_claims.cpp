#include "move_claims.h"

#include <thread>

#include "clock.h"
#include "heap_mutex.h"

namespace valet::detail::claims {

bool try_claim(StateWord& w, bool cancelable) {
  std::uint64_t s = w.load(std::memory_order_acquire);
  if (!(s & state::kLive) || (s & state::kMoving) || state::pins(s) != 0) return false;
  const std::uint64_t claim = state::kMoving | (cancelable ? state::kCancelable : 0);
  return w.compare_exchange_strong(s, s | claim, std::memory_order_acq_rel);
}

bool commit(StateWord& w) {
  std::uint64_t s = w.load(std::memory_order_acquire);
  // A pin that came in cleared CANCELABLE (and MOVING); nobody else sets CANCELABLE meanwhile
  // (one compaction cycle at a time, and the cycle claims each object once).
  while ((s & state::kCancelable) && state::pins(s) == 0)
    if (w.compare_exchange_weak(s, s & ~state::kCancelable, std::memory_order_acq_rel, std::memory_order_acquire))
      return true;
  return false;
}

void publish_alias(StateWord& w, std::atomic<DevicePtr>& alias_slot, DevicePtr alias) {
  alias_slot.store(alias, std::memory_order_relaxed);
  w.fetch_or(state::kAliased, std::memory_order_release);  // publishes the alias
  wake_after_unlock(w);                                    // pins waiting since the commit
}

void drop(StateWord& w) {
  std::uint64_t s = w.load(std::memory_order_acquire);
  while (s & state::kCancelable)
    if (w.compare_exchange_weak(s, s & ~(state::kMoving | state::kCancelable), std::memory_order_acq_rel,
                                std::memory_order_acquire)) {
      wake_after_unlock(w);
      return;
    }
}

void end(StateWord& w) {
  w.fetch_and(~(state::kMoving | state::kAliased), std::memory_order_release);
  wake_after_unlock(w);  // made once the heap lock goes, where it is held (heap_mutex.h)
}

std::uint64_t wait_not_moving(const StateWord& w, std::uint32_t gen, bool until_cancelable) {
  const std::uint64_t done_bits = until_cancelable ? state::kCancelable | state::kAliased : 0;
  auto waiting = [&](std::uint64_t s) { return (s & state::kMoving) && !(s & done_bits) && state::generation(s) == gen; };
  std::uint64_t s = w.load(std::memory_order_acquire);
  // What a pin waits for is short (a commit's few stores, a remap's three VMM calls): yield for
  // up to 200 us first, so that the waiter is running when it ends rather than asleep and queued
  // behind other threads for a core (milliseconds on a loaded host). Then sleep on the word.
  const std::uint64_t spin_until = waiting(s) ? now_ns() + 200'000 : 0;
  while (waiting(s) && now_ns() < spin_until) {
    std::this_thread::yield();
    s = w.load(std::memory_order_acquire);
  }
  while (waiting(s)) {
    w.wait(s, std::memory_order_acquire);
    s = w.load(std::memory_order_acquire);
  }
  return s;
}

Status add_pin(StateWord& w, std::uint32_t gen, std::uint64_t& before, std::uint64_t& waited_ns) {
  waited_ns = 0;
  std::uint64_t s = w.load(std::memory_order_acquire);
  for (;;) {
    if (waits_for_move(s)) {
      const std::uint64_t t0 = now_ns();
      s = wait_not_moving(w, gen, true);
      waited_ns += now_ns() - t0;
    }
    if (state::generation(s) != gen || !(s & state::kLive)) return make_error(Errc::stale_handle, "pin of a freed object");
    if (state::pins(s) == state::kPinMask) return make_error(Errc::invalid_state, "pin: too many pins on one object");
    // A move still copying the object is cancelled: the object stays where it is (the mover has
    // not repointed it), so the pin never waits for a copy.
    const std::uint64_t next = (s & state::kCancelable) ? (s + 1) & ~(state::kMoving | state::kCancelable) : s + 1;
    if (w.compare_exchange_weak(s, next, std::memory_order_acq_rel, std::memory_order_acquire)) break;
  }
  if (s & state::kCancelable) w.notify_all();  // a free or resize waiting on the move
  before = s;
  return {};
}

bool claim_for_shutdown(StateWord& w) {
  std::uint64_t s = w.load(std::memory_order_acquire);
  return state::pins(s) == 0 && !(s & state::kMoving) && (s & state::kLive) &&
         w.compare_exchange_strong(s, s | state::kMoving, std::memory_order_acq_rel);
}

void kill(StateWord& w) {
  w.store(state::make(state::generation(w.load(std::memory_order_relaxed)), 0), std::memory_order_release);
  wake_after_unlock(w);
}

namespace {
std::uint32_t make_live_with(StateWord& w, std::uint64_t flags) {
  std::uint32_t gen = state::generation(w.load(std::memory_order_relaxed)) + 1;
  if (gen == 0) gen = 1;
  w.store(state::make(gen, state::kLive | flags), std::memory_order_release);
  return gen;
}
}  // namespace

std::uint32_t make_live(StateWord& w) { return make_live_with(w, 0); }
std::uint32_t make_live_claimed(StateWord& w) { return make_live_with(w, state::kMoving); }

bool try_free(StateWord& w, std::uint64_t expected, std::uint32_t gen) {
  return w.compare_exchange_strong(expected, state::make(gen, 0), std::memory_order_acq_rel);
}

void undo_free(StateWord& w, std::uint64_t was) { w.store(was, std::memory_order_release); }

}  // namespace valet::detail::claims
