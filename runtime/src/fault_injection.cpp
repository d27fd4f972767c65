#include "valet/fault_injection.h"

#include <string>
#include <thread>

namespace valet {

FaultInjectingBackend::FaultInjectingBackend(std::unique_ptr<Backend> inner) : BackendAdaptor(std::move(inner)) {}

void FaultInjectingBackend::fail_nth(FaultOp op, std::uint64_t k) {
  std::lock_guard lock(mu_);
  auto& s = slots_[std::size_t(op)];
  s.fire_at = k == 0 ? 0 : s.calls + k;
}

void FaultInjectingBackend::fail_randomly(FaultOp op, double p, std::uint64_t seed) {
  std::lock_guard lock(mu_);
  slots_[std::size_t(op)].probability = p;
  rng_.seed(seed);
}

void FaultInjectingBackend::disarm_all() {
  std::lock_guard lock(mu_);
  for (auto& s : slots_) {
    s.fire_at = 0;
    s.probability = 0;
    s.delay = std::chrono::microseconds{0};
  }
}

std::uint64_t FaultInjectingBackend::calls(FaultOp op) const {
  std::lock_guard lock(mu_);
  return slots_[std::size_t(op)].calls;
}

std::uint64_t FaultInjectingBackend::faults(FaultOp op) const {
  std::lock_guard lock(mu_);
  return slots_[std::size_t(op)].faults;
}

std::uint64_t FaultInjectingBackend::total_faults() const {
  std::lock_guard lock(mu_);
  std::uint64_t n = 0;
  for (const auto& s : slots_) n += s.faults;
  return n;
}

void FaultInjectingBackend::delay_calls(FaultOp op, std::chrono::microseconds delay) {
  std::lock_guard lock(mu_);
  slots_[std::size_t(op)].delay = delay;
}

void FaultInjectingBackend::delay_page_calls(std::chrono::microseconds delay) {
  for (FaultOp op : {FaultOp::create_page, FaultOp::map, FaultOp::set_access, FaultOp::unmap, FaultOp::release_page})
    delay_calls(op, delay);
}

Status FaultInjectingBackend::before(DriverOp op) {
  std::unique_lock lock(mu_);
  auto& s = slots_[std::size_t(op)];
  ++s.calls;
  if (s.delay.count() > 0) {
    const auto delay = s.delay;
    lock.unlock();
    std::this_thread::sleep_for(delay);
    lock.lock();
  }
  bool fire = s.fire_at != 0 && s.calls == s.fire_at;
  if (fire) s.fire_at = 0;
  if (!fire && s.probability > 0) fire = std::uniform_real_distribution<double>(0, 1)(rng_) < s.probability;
  if (!fire) return {};
  ++s.faults;
  return make_error(Errc::driver_error, std::string("injected fault in ") + fault_op_name(op) + " (call " +
                                            std::to_string(s.calls) + ")");
}

}  // namespace valet
