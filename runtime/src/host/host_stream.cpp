#include "host/host_stream.h"

namespace valet::host {

std::uint64_t HostEvent::arm() {
  std::lock_guard lock(mu_);
  return ++armed_;
}

std::uint64_t HostEvent::armed() const {
  std::lock_guard lock(mu_);
  return armed_;
}

void HostEvent::reach(std::uint64_t seq) {
  {
    std::lock_guard lock(mu_);
    if (seq > reached_) reached_ = seq;
  }
  cv_.notify_all();
}

bool HostEvent::done() const {
  std::lock_guard lock(mu_);
  return reached_ >= armed_;
}

void HostEvent::wait() const {
  std::unique_lock lock(mu_);
  const std::uint64_t target = armed_;
  cv_.wait(lock, [&] { return reached_ >= target; });
}

void HostEvent::wait_for(std::uint64_t seq) const {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return reached_ >= seq; });
}

HostStream::HostStream(const std::atomic<std::int64_t>* delay_us)
    : delay_us_(delay_us), worker_([this] { run(); }) {}

HostStream::~HostStream() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void HostStream::enqueue(std::function<void()> task, bool delayed) {
  {
    std::lock_guard lock(mu_);
    queue_.emplace_back(std::move(task), delayed);
  }
  cv_.notify_one();
}

void HostStream::synchronize() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

void HostStream::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and everything queued has run
    auto [task, delayed] = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    if (delayed) {
      const auto us = delay_us_->load(std::memory_order_relaxed);
      if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
    }
    task();
    lock.lock();
    busy_ = false;
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

}  // namespace valet::host
