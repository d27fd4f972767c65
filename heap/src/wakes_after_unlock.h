// Wakes of the heap's threads (the mapper, the keeper) that an allocating or freeing thread asks
// for while it holds the heap lock, sent once it lets the lock go. A thread woken while the lock
// is still held runs only to wait for the lock again: on a miss that was two system calls on the
// caller's thread (the signal, then the heap lock's wake at unlock) and, on a busy host, the woken
// thread taking the caller's core (docs/speed.md, "Session 31").
//
// Only inside a WakesAfterUnlock scope (Heap::allocate, Heap::free) are wakes deferred; every
// other thread notifies at once, as before. A deferred wake is sent at the calling thread's next
// unlock of a heap lock (BasicHeapMutex::unlock), including the unlock inside a condition
// variable's wait, so a caller that waits for the woken thread inside its call has woken it
// first. The scope's threads never wait on the condition variables they defer (only the mapper
// waits on its work queue's, only the keeper on its own), so sending one from inside such a wait,
// with that wait's internal mutex held, cannot deadlock.
#pragma once

#include <condition_variable>

namespace valet::detail {

struct DeferredWakes {
  static constexpr int kMax = 4;
  std::condition_variable_any* cvs[kMax] = {};
  int count = 0;
  bool deferring = false;

  void send() {
    // Copied first: a notify may run code that defers again (it does not today).
    std::condition_variable_any* now[kMax];
    const int n = count;
    for (int i = 0; i < n; ++i) now[i] = cvs[i];
    count = 0;
    for (int i = 0; i < n; ++i) now[i]->notify_one();
  }
};

inline thread_local DeferredWakes t_deferred_wakes;

// notify_one() on `cv`, now or (inside a WakesAfterUnlock scope) once this thread lets its heap
// lock go. Called with the heap lock held.
inline void notify_one_after_unlock(std::condition_variable_any& cv) {
  DeferredWakes& w = t_deferred_wakes;
  if (!w.deferring) {
    cv.notify_one();
    return;
  }
  for (int i = 0; i < w.count; ++i)
    if (w.cvs[i] == &cv) return;
  if (w.count == DeferredWakes::kMax) {
    cv.notify_one();
    return;
  }
  w.cvs[w.count++] = &cv;
}

// Declared before the heap lock's unique_lock in an API call, so that it ends after the lock.
class WakesAfterUnlock {
 public:
  WakesAfterUnlock() : outer_(!t_deferred_wakes.deferring) { t_deferred_wakes.deferring = true; }
  ~WakesAfterUnlock() {
    if (!outer_) return;
    t_deferred_wakes.deferring = false;
    t_deferred_wakes.send();  // none are left where the lock was let go after the last wake
  }
  WakesAfterUnlock(const WakesAfterUnlock&) = delete;
  WakesAfterUnlock& operator=(const WakesAfterUnlock&) = delete;

 private:
  bool outer_;
};

}  // namespace valet::detail
