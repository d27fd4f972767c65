#include "thread_caches.h"

namespace valet::detail {

namespace {
// A thread's caches, by heap: a few heaps per thread at once is the common case (one per
// device); a thread using more replaces its oldest record and registers again under the heap
// lock when it comes back to that heap.
struct Known {
  std::uint64_t heap = 0;
  ThreadCache* cache = nullptr;
};
constexpr std::size_t kKnown = 4;
thread_local std::array<Known, kKnown> known{};
thread_local std::size_t next_known = 0;
}  // namespace

std::uint64_t ThreadCaches::next_id() {
  static std::atomic<std::uint64_t> ids{1};
  return ids.fetch_add(1, std::memory_order_relaxed);
}

ThreadCache* ThreadCaches::mine() const {
  for (const Known& k : known)
    if (k.heap == id_) return k.cache;
  return nullptr;
}

ThreadCache* ThreadCaches::mine_or_make() {
  if (ThreadCache* c = mine()) return c;
  // A thread that used more heaps than its record holds comes back to the cache it had.
  const std::thread::id me = std::this_thread::get_id();
  ThreadCache* c = nullptr;
  for (auto& k : caches_)
    if (k->thread == me) c = k.get();
  if (!c) {
    caches_.push_back(std::make_unique<ThreadCache>(me));
    c = caches_.back().get();
  }
  known[next_known] = {id_, c};
  next_known = (next_known + 1) % kKnown;
  return c;
}

void ThreadCaches::gate() {
  gate_.fetch_add(1, std::memory_order_relaxed);
  // A fast path that began before the flag was set ends before its cache's lock is free; one
  // that begins after takes the lock after this pass, and sees the flag.
  for (auto& c : caches_) {
    c->mu.lock();
    c->mu.unlock();
  }
}

void ThreadCaches::ungate() { gate_.fetch_sub(1, std::memory_order_relaxed); }

}  // namespace valet::detail
