// Streams and events of the host backend: a stream is one worker thread running queued tasks in
// order; an event is a sequence counter that a task on a stream advances.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace valet::host {

class HostEvent {
 public:
  // Called when the event is recorded: returns the sequence number that completes it.
  std::uint64_t arm();
  // The sequence of the most recent recording (0: never recorded).
  std::uint64_t armed() const;
  // Marks sequence `seq` as reached (called from the stream that recorded it).
  void reach(std::uint64_t seq);
  bool done() const;
  // Waits until the most recent recording (at the time of the call) has completed.
  void wait() const;
  // Waits until sequence `seq` has been reached.
  void wait_for(std::uint64_t seq) const;

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::uint64_t armed_ = 0;    // sequence of the most recent record
  std::uint64_t reached_ = 0;  // highest sequence completed
};

class HostStream {
 public:
  explicit HostStream(const std::atomic<std::int64_t>* delay_us);
  ~HostStream();  // drains the queue, then stops the worker
  HostStream(const HostStream&) = delete;
  HostStream& operator=(const HostStream&) = delete;

  // Queues a task; `delayed` tasks (device work) sleep the injected delay before running.
  void enqueue(std::function<void()> task, bool delayed);
  // Blocks until every task queued before the call has run.
  void synchronize();

 private:
  void run();

  const std::atomic<std::int64_t>* delay_us_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::pair<std::function<void()>, bool>> queue_;
  bool busy_ = false;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace valet::host
