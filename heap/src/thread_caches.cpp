#include "thread_caches.h"

namespace valet::detail {

namespace {
// A thread's caches, by heap: a few heaps per thread at once is the common case (one per
// device); a thread using more replaces its oldest record and registers again under the heap
// lock when it comes back to that heap.
struct Known {
  std::uint64_t heap = 0;
  std::shared_ptr<ThreadCache> cache;  // its share ends with the thread: the heap then drops it
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
    if (k.heap == id_) return k.cache.get();
  return nullptr;
}

ThreadCache* ThreadCaches::mine_or_make() {
  if (ThreadCache* c = mine()) return c;
  // A thread that used more heaps than its record holds comes back to the cache it had.
  const std::thread::id me = std::this_thread::get_id();
  std::shared_ptr<ThreadCache> c;
  for (auto& k : caches_)
    if (k->thread == me) c = k;
  if (!c) {
    c = std::make_shared<ThreadCache>(me);
    caches_.push_back(c);
  }
  known[next_known] = {id_, c};
  next_known = (next_known + 1) % kKnown;
  return c.get();
}

void ThreadCaches::grant_runs(ThreadCache& c) {
  const std::size_t want = run_limit() - std::min(run_limit(), c.run_allowance);
  const std::size_t more = std::min(want, run_total_limit_ - run_granted_);
  c.run_allowance += more;
  run_granted_ += more;
}

void ThreadCaches::revoke_runs(ThreadCache& c) {
  run_granted_ -= c.run_allowance;
  c.run_allowance = 0;
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

void ThreadCaches::ungate() { gate_.fetch_sub(1, std::memory_order_release); }

void ThreadCaches::drop_orphans(const std::function<void(ThreadCache&)>& release) {
  // A thread's record holds the other share while the thread lives; only the thread itself
  // drops it (at exit, or replacing it under the heap lock), never during one of its fast paths.
  std::erase_if(caches_, [&](const std::shared_ptr<ThreadCache>& c) {
    if (c.use_count() == 1) {
      std::lock_guard lock(c->mu);
      release(*c);
    }
    const bool orphan = c.use_count() == 1 && c->holds_nothing() && c->live_bytes == 0 && c->live_objects == 0 &&
                        c->allocs == 0 && c->frees == 0;
    if (orphan) revoke_runs(*c);
    return orphan;
  });
}

}  // namespace valet::detail
