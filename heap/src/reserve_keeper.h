// The reserve keeper: keeps the page pool's reserve (created, mapped, unused pages) between its
// watermarks, so that allocations find mapped pages without a driver call and a long-running
// service gives memory back. With Config::background_reserve it is a thread of its own that
// sleeps until woken (or 20 ms), otherwise its work runs inline on the caller's thread.
//
// Releasing a page costs ~50 us of driver calls on an H100 (~0.7 ms on the host emulation), so a
// trim takes a batch of pages out of the reserve under the heap lock, releases them without it,
// and books the outcome under it again: neither allocations nor compaction wait for it.
// Refilling stays under the lock (a few pages).
//
// Threading: want_refill, after_release and trim require the heap lock; start and stop must be
// called without it (the thread takes it).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "heap_mutex.h"
#include "page_pool.h"
#include "valet/config.h"

namespace valet::detail {

class ReserveKeeper {
 public:
  // `on_wake` runs under the heap lock each time the thread wakes, before the reserve is balanced
  // (the heap reaps deferred frees there).
  ReserveKeeper(HeapMutex& mu, PagePool& pool, const Config& config, std::function<void()> on_wake);
  ~ReserveKeeper() { stop(); }

  // Starts the thread when the config asks for one. Idempotent.
  void start();
  // Stops and joins the thread; trims in progress end after their current batch.
  void stop();

  // The reserve fell under its low watermark: wake the thread (inline refills happen at the next
  // balance, i.e. never on the allocation path).
  void want_refill();
  // Pages went back to the reserve: wake the thread, or balance inline when there is none.
  void after_release();
  // Brings the reserve back under its high watermark (to the middle of the watermarks), the
  // driver calls made without the heap lock, batch by batch. Precondition: `lock` holds mu.
  void trim(std::unique_lock<HeapMutex>& lock);
  // Refills or trims to the watermarks under the lock (maintain(), heap creation).
  Status balance();

  // Watermarks are ordered; a stopped keeper has no thread.
  Status validate() const;

 private:
  void loop();
  void wake();

  HeapMutex& mu_;
  PagePool& pool_;
  const Config& config_;
  std::function<void()> on_wake_;
  std::thread thread_;
  std::condition_variable_any cv_;
  bool stop_ = false;    // under mu
  bool wanted_ = false;  // under mu
};

}  // namespace valet::detail
