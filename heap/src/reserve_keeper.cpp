#include "reserve_keeper.h"

#include <chrono>

namespace valet::detail {

ReserveKeeper::ReserveKeeper(HeapMutex& mu, PagePool& pool, const Config& config, std::function<void()> on_wake)
    : mu_(mu), pool_(pool), config_(config), on_wake_(std::move(on_wake)) {}

void ReserveKeeper::start() {
  if (!config_.background_reserve || thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] { loop(); });
}

void ReserveKeeper::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void ReserveKeeper::wake() {
  wanted_ = true;
  cv_.notify_one();
}

void ReserveKeeper::want_refill() {
  mu_.assert_held();
  if (pool_.reserve_pages() >= config_.reserve_low_pages) return;
  if (thread_.joinable()) wake();
}

void ReserveKeeper::after_release() {
  mu_.assert_held();
  if (pool_.reserve_pages() <= config_.reserve_high_pages) return;
  if (thread_.joinable())
    wake();
  else
    (void)balance();
}

Status ReserveKeeper::balance() { return pool_.balance(config_.reserve_low_pages, config_.reserve_high_pages); }

void ReserveKeeper::trim(std::unique_lock<HeapMutex>& lock) {
  mu_.assert_held();
  const std::size_t high = config_.reserve_high_pages, mid = (config_.reserve_low_pages + high) / 2;
  while (pool_.over(high) && !stop_) {
    // Idle pages (left by meshing or failed operations) cost one driver call each.
    if (!pool_.release_idle(pool_.idle_pages()).ok()) return;
    if (!pool_.over(high)) return;
    auto batch = pool_.begin_release(mid, 64);
    if (batch.empty()) return;
    lock.unlock();
    pool_.release_calls(batch);
    lock.lock();
    if (!pool_.finish_release(batch).ok()) return;
  }
}

void ReserveKeeper::loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return stop_ || wanted_; });
    if (stop_) break;
    wanted_ = false;
    if (on_wake_) on_wake_();
    // A large free can leave thousands of pages to give back: they are released without the
    // heap lock. Refilling stays under the lock.
    if (pool_.over(config_.reserve_high_pages))
      trim(lock);
    else
      (void)balance();
  }
}

Status ReserveKeeper::validate() const {
  if (config_.reserve_low_pages > config_.reserve_high_pages)
    return make_error(Errc::internal, "validate: the reserve's low watermark is above its high one");
  if (!config_.background_reserve && thread_.joinable())
    return make_error(Errc::internal, "validate: a keeper thread runs although the config asks for none");
  return {};
}

}  // namespace valet::detail
