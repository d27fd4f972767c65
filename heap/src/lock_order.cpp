// The per-thread record of held locks behind lock_order.h's checks. Compiled in every build (it
// is small), used only by checked mutexes.
#include "lock_order.h"

#include <cstdio>
#include <cstdlib>

namespace valet::detail {

const char* lock_name(LockRank rank) {
  switch (rank) {
    case LockRank::compactor_cycle: return "the compactor's cycle_mu";
    case LockRank::compaction: return "compaction_mu";
    case LockRank::heap: return "mu (the heap lock)";
    case LockRank::thread_cache: return "a thread cache's mu";
    case LockRank::pool_holds: return "the page pool's holds_mu";
    case LockRank::backend: return "a backend lock";
    case LockRank::pool_defer: return "the page pool's defer_mu";
  }
  return "an unknown lock";
}

namespace lock_order {
namespace {

constexpr const char* kOrder = "cycle_mu -> compaction_mu -> mu -> a thread cache's mu -> holds_mu -> backend locks -> defer_mu";

struct Held {
  LockRank rank;
  const void* lock;
};

// A thread holds at most one lock per rank, so the record never needs more than the ranks.
constexpr int kMaxHeld = 8;

struct Record {
  Held held[kMaxHeld];
  int count = 0;
};

thread_local Record record;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "valet: lock order violated: %s (the order is %s)\n", what, kOrder);
  std::fflush(stderr);
  std::abort();
}

}  // namespace

void before_lock(LockRank rank, const void* lock) {
  const Held* highest = nullptr;
  for (int i = 0; i < record.count; ++i) {
    const Held& h = record.held[i];
    if (h.lock == lock) {
      char what[200];
      std::snprintf(what, sizeof what, "taking %s, which this thread already holds (it would wait for itself)",
                    lock_name(rank));
      die(what);
    }
    if (!highest || h.rank > highest->rank) highest = &h;
  }
  if (highest && highest->rank >= rank) {
    char what[300];
    std::snprintf(what, sizeof what, "taking %s (rank %d) while holding %s (rank %d)", lock_name(rank), int(rank),
                  lock_name(highest->rank), int(highest->rank));
    die(what);
  }
}

void acquired(LockRank rank, const void* lock) {
  if (record.count == kMaxHeld) die("a thread holds more locks than there are ranks");
  record.held[record.count++] = Held{rank, lock};
}

void released(const void* lock) {
  for (int i = 0; i < record.count; ++i)
    if (record.held[i].lock == lock) {
      record.held[i] = record.held[--record.count];
      return;
    }
  die("releasing a lock this thread does not hold");
}

bool holds(const void* lock) {
  for (int i = 0; i < record.count; ++i)
    if (record.held[i].lock == lock) return true;
  return false;
}

void not_held(LockRank rank) {
  std::fprintf(stderr, "valet: lock not held: this thread must hold %s here\n", lock_name(rank));
  std::fflush(stderr);
  std::abort();
}

}  // namespace lock_order
}  // namespace valet::detail
