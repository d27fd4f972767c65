// The pinner threads (see pinners.h).
#include "pinners.h"

#include <sys/resource.h>

#include <random>

#include "signature.h"

namespace valet::replay {

namespace {

using Clock = std::chrono::steady_clock;

// Involuntary context switches of the calling thread so far (the scheduler took its core).
long involuntary_switches() {
  rusage u{};
  return getrusage(RUSAGE_THREAD, &u) == 0 ? u.ru_nivcsw : -1;
}

}  // namespace

Pinners::Pinners(Heap& heap, const LiveSet& live, const PinnerOptions& options)
    : heap_(heap), live_(live), options_(options) {
  for (int t = 0; t < options_.threads; ++t)
    threads_.emplace_back([this, seed = options_.seed * 0x9e37'79b9'7f4a'7c15ull + std::uint64_t(t)] { run(seed); });
}

void Pinners::stop() {
  stopping_.store(true, std::memory_order_relaxed);
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

PinnerCounters Pinners::counters() const {
  PinnerCounters c;
  c.pins = pins_.load();
  c.stale = stale_.load();
  c.errors = errors_.load();
  c.signature_errors = signature_errors_.load();
  c.max_wait_ns = max_wait_ns_.load();
  c.waits_over_100us = waits_over_100us_.load();
  c.waits_over_1ms = waits_over_1ms_.load();
  c.preempted = preempted_.load();
  c.max_wait_unpreempted_ns = max_wait_unpreempted_ns_.load();
  std::lock_guard lock(error_mu_);
  c.first_error = first_error_;
  c.max_wait_line = max_wait_line_;
  c.max_wait_end_line = max_wait_end_line_;
  return c;
}

void Pinners::note_error(const std::string& message) {
  std::lock_guard lock(error_mu_);
  if (first_error_.empty()) first_error_ = message;
}

void Pinners::note_wait(std::uint64_t wait_ns, std::uint32_t line, std::uint32_t end_line, bool preempted) {
  if (wait_ns > 100'000) waits_over_100us_.fetch_add(1, std::memory_order_relaxed);
  if (wait_ns > 1'000'000) waits_over_1ms_.fetch_add(1, std::memory_order_relaxed);
  if (preempted) {
    preempted_.fetch_add(1, std::memory_order_relaxed);
  } else {
    std::uint64_t cur = max_wait_unpreempted_ns_.load(std::memory_order_relaxed);
    while (wait_ns > cur && !max_wait_unpreempted_ns_.compare_exchange_weak(cur, wait_ns, std::memory_order_relaxed)) {
    }
  }
  if (wait_ns <= max_wait_ns_.load(std::memory_order_relaxed)) return;
  std::lock_guard lock(error_mu_);  // rare: a new longest wait
  if (wait_ns <= max_wait_ns_.load(std::memory_order_relaxed)) return;
  max_wait_ns_.store(wait_ns, std::memory_order_relaxed);
  max_wait_line_ = line;
  max_wait_end_line_ = end_line;
}

void Pinners::run(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  while (!stopping_.load(std::memory_order_relaxed)) {
    if (auto entry = live_.pick(rng)) {
      auto replay_line = [&] {
        return options_.replay_line ? options_.replay_line->load(std::memory_order_relaxed) : 0u;
      };
      const std::uint32_t line = replay_line();
      const long switches = involuntary_switches();
      const auto asked = Clock::now();
      auto pin = heap_.pin(entry->handle);
      const auto got = Clock::now();
      const bool preempted = switches < 0 || involuntary_switches() != switches;
      note_wait(std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(got - asked).count()), line,
                replay_line(), preempted);
      if (pin.ok()) {
        pins_.fetch_add(1, std::memory_order_relaxed);
        if (options_.check_signature && Signatures::check_head(pin->as<const void>(), entry->id, entry->bytes) != 0) {
          signature_errors_.fetch_add(1, std::memory_order_relaxed);
          note_error("pin of object " + std::to_string(entry->id) + " saw a damaged signature");
        }
        // Hold the pin as a short kernel would.
        while (Clock::now() - got < options_.hold) {
        }
        pin->reset();
      } else if (pin.code() == Errc::stale_handle) {
        stale_.fetch_add(1, std::memory_order_relaxed);
      } else {
        errors_.fetch_add(1, std::memory_order_relaxed);
        note_error("pin of object " + std::to_string(entry->id) + ": " + pin.error().to_string());
      }
    }
    std::this_thread::sleep_for(options_.gap);
  }
}

}  // namespace valet::replay
