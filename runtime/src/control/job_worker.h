// The control server's worker thread: runs jobs that may take long (compactions a client waits
// for) one at a time, off the server thread, so every other client is still served meanwhile.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>
#include <vector>

namespace valet::control {

class JobWorker {
 public:
  // `wake` is called on the worker thread after each job, to tell the server a result is ready.
  explicit JobWorker(std::function<void()> wake);
  ~JobWorker();  // stop()

  // Queues `job` for connection `client`. With `reply`, its result comes back from take_done().
  // A job without a reply (a background compaction) is dropped when another such job is still
  // queued: it would do the same work, and a client repeating it must not grow the queue.
  // Returns false when dropped.
  bool submit(std::uint64_t client, bool reply, std::function<nlohmann::json()> job);
  // Results of finished jobs that owe a reply: (client, reply).
  std::vector<std::pair<std::uint64_t, nlohmann::json>> take_done();
  // Lets the running job finish, drops queued ones, joins the thread. Idempotent.
  void stop();

 private:
  struct Job {
    std::uint64_t client;
    bool reply;
    std::function<nlohmann::json()> run;
  };
  void loop();

  std::function<void()> wake_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::vector<std::pair<std::uint64_t, nlohmann::json>> done_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace valet::control
