#include "job_worker.h"

#include <utility>

namespace valet::control {

JobWorker::JobWorker(std::function<void()> wake) : wake_(std::move(wake)), thread_([this] { loop(); }) {}

JobWorker::~JobWorker() { stop(); }

bool JobWorker::submit(std::uint64_t client, bool reply, std::function<nlohmann::json()> job) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
    if (!reply)
      for (const Job& queued : queue_)
        if (!queued.reply) return false;
    queue_.push_back({client, reply, std::move(job)});
  }
  cv_.notify_one();
  return true;
}

std::vector<std::pair<std::uint64_t, nlohmann::json>> JobWorker::take_done() {
  std::lock_guard lock(mu_);
  return std::exchange(done_, {});
}

void JobWorker::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    queue_.clear();
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void JobWorker::loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    nlohmann::json result = job.run();  // jobs catch their own exceptions (commands.cpp)
    lock.lock();
    if (job.reply) done_.emplace_back(job.client, std::move(result));
    lock.unlock();
    wake_();
    lock.lock();
  }
}

}  // namespace valet::control
