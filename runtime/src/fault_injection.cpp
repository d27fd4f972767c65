#include "valet/fault_injection.h"

#include <thread>

#include <string>

namespace valet {

const char* fault_op_name(FaultOp op) {
  switch (op) {
    case FaultOp::reserve: return "reserve";
    case FaultOp::create_page: return "create_page";
    case FaultOp::release_page: return "release_page";
    case FaultOp::map: return "map";
    case FaultOp::unmap: return "unmap";
    case FaultOp::set_access: return "set_access";
    case FaultOp::copy: return "copy";
    case FaultOp::count: break;
  }
  return "?";
}

FaultInjectingBackend::FaultInjectingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

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

Status FaultInjectingBackend::should_fail(FaultOp op) {
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

Result<DevicePtr> FaultInjectingBackend::reserve(std::size_t bytes) {
  VALET_TRY(should_fail(FaultOp::reserve));
  return inner_->reserve(bytes);
}
Result<PhysicalPage> FaultInjectingBackend::create_page() {
  VALET_TRY(should_fail(FaultOp::create_page));
  return inner_->create_page();
}
Status FaultInjectingBackend::release_page(PhysicalPage p) {
  VALET_TRY(should_fail(FaultOp::release_page));
  return inner_->release_page(p);
}
Status FaultInjectingBackend::map(DevicePtr va, PhysicalPage p) {
  VALET_TRY(should_fail(FaultOp::map));
  return inner_->map(va, p);
}
Status FaultInjectingBackend::unmap(DevicePtr va, std::size_t bytes) {
  VALET_TRY(should_fail(FaultOp::unmap));
  return inner_->unmap(va, bytes);
}
Status FaultInjectingBackend::set_access(DevicePtr va, std::size_t bytes) {
  VALET_TRY(should_fail(FaultOp::set_access));
  return inner_->set_access(va, bytes);
}
Status FaultInjectingBackend::copy(std::span<const CopyRange> r, Stream s) {
  VALET_TRY(should_fail(FaultOp::copy));
  return inner_->copy(r, s);
}

}  // namespace valet
