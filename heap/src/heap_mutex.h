// The heap lock. Critical sections are short (a bitmap scan, a few list moves), so waiters spin
// briefly before sleeping: with std::mutex alone, 8 threads on a 16-core host convoy through
// futex sleeps and the allocate+free median grows 50-fold (measured on an H100 host).
#pragma once

#include <atomic>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VALET_CPU_RELAX() _mm_pause()
#else
#define VALET_CPU_RELAX() std::this_thread::yield()
#endif

namespace valet::detail {

class HeapMutex {
 public:
  void lock() {
    if (!locked_.exchange(true, std::memory_order_acquire)) return;
    for (int spins = 0;; ++spins) {
      while (locked_.load(std::memory_order_relaxed)) {
        if (spins < 2000) {
          VALET_CPU_RELAX();
          ++spins;
        } else {
          locked_.wait(true, std::memory_order_relaxed);
        }
      }
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
    }
  }
  bool try_lock() { return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire); }
  void unlock() {
    locked_.store(false, std::memory_order_release);
    locked_.notify_one();
  }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace valet::detail
