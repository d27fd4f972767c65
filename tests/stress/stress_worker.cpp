#include "stress_worker.h"

#include <algorithm>

#include "object_patterns.h"

namespace valet::stress {

StressWorker::StressWorker(WorkerShared shared, WorkerLimits limits, std::uint64_t seed)
    : shared_(shared), limits_(limits), rng_(seed) {
  new_phase();
}

std::vector<TrackedObject> StressWorker::objects() const {
  std::vector<TrackedObject> all;
  all.reserve(owned_.size());
  for (const Owned& w : owned_) all.push_back(w.object);
  return all;
}

void StressWorker::run() {
  auto stream = shared_.heap.backend().create_stream();
  if (!stream.ok()) {
    shared_.errors.report("create_stream", stream.error());
    shared_.gate.leave();
    return;
  }
  stream_ = *stream;
  for (std::uint64_t n = 0; limits_.ops == 0 || n < limits_.ops; ++n) {
    if (shared_.stop.load(std::memory_order_relaxed)) break;
    park_if_requested();
    step();
    shared_.counters.add(shared_.counters.ops);
  }
  for (Owned& w : owned_) {
    w.held_pin.reset();
    if (w.held_stream_pin) {
      if (auto st = w.held_stream_pin->release(); !st.ok()) shared_.errors.report("stream pin release", st.error());
      w.held_stream_pin.reset();
    }
  }
  held_pins_ = 0;
  if (auto st = drain_stream(); !st.ok()) shared_.errors.report("synchronize_stream", st.error());
  // The heap may still hold frees of this stream for an event: they are covered now, so that
  // nothing records on the stream once it is destroyed.
  if (auto st = shared_.heap.flush_stream(stream_); !st.ok()) shared_.errors.report("flush_stream", st.error());
  if (auto st = shared_.heap.backend().destroy_stream(stream_); !st.ok())
    shared_.errors.report("destroy_stream", st.error());
  shared_.gate.leave();
}

void StressWorker::park_if_requested() {
  if (!shared_.gate.requested()) return;
  // The checkpoint reads every object: queued fills must have landed.
  if (auto st = drain_stream(); !st.ok()) shared_.errors.report("synchronize_stream", st.error());
  shared_.gate.park();
}

Status StressWorker::drain_stream() {
  if (!stream_dirty_) return {};
  stream_dirty_ = false;
  return shared_.heap.backend().synchronize_stream(stream_);
}

void StressWorker::new_phase() {
  // A new model, adapter or batch shape: the popular sizes change while objects of the old ones
  // linger (the workload where objects must move).
  popular_.clear();
  for (int i = 0; i < 6; ++i)
    popular_.push_back(std::min(limits_.max_object_bytes, log_uniform_size(rng_, 16 << 10, 512 << 10)));
  ops_left_in_phase_ = 1000 + rng_() % 3000;
}

void StressWorker::step() {
  if (ops_left_in_phase_-- == 0) new_phase();
  const bool over_budget = owned_bytes_ > limits_.byte_budget || owned_.size() >= limits_.max_objects;
  if (owned_.empty()) {
    chance(rng_, 0.9) ? op_allocate() : op_exchange();
    return;
  }
  // At the budget, now and then a purge (a burst of frees that leaves sparse pages), else mostly
  // single frees: the live set saws between the budget and a fraction of it.
  if (over_budget && chance(rng_, 0.01)) {
    op_purge();
    return;
  }
  if (over_budget && chance(rng_, 0.7)) {
    op_free();
    return;
  }
  // Weights of the mix: allocations and frees dominate; every other operation keeps objects
  // pinned, moving between threads or changing size while the compactor runs.
  static constexpr int kWeights[] = {28, 20, 12, 12, 10, 5, 8, 5};
  std::discrete_distribution<int> op(std::begin(kWeights), std::end(kWeights));
  switch (op(rng_)) {
    case 0: op_allocate(); break;
    case 1: op_free(); break;
    case 2: op_resize(); break;
    case 3: op_pin_and_verify(); break;
    case 4: op_stream_rewrite(); break;
    case 5: op_hold_or_release_pin(); break;
    case 6: op_exchange(); break;
    default: op_visit_board(); break;
  }
}

void StressWorker::expect_code(Errc got, Errc want, const char* what, const TrackedObject& o) {
  if (got == want) {
    shared_.counters.add(shared_.counters.refusals_checked);
    return;
  }
  shared_.errors.report(std::string(what) + " of " + describe(o) + ": got " + std::string(errc_name(got)) +
                        ", expected " + std::string(errc_name(want)));
}

bool StressWorker::clean_failure(const Error& e, const char* what) {
  if (e.code == Errc::out_of_memory) {
    shared_.counters.out_of_memory_seen(e.message);
    return true;
  }
  if (e.code == Errc::driver_error && shared_.faults_armed) {
    shared_.counters.add(shared_.counters.fault_errors);
    return true;
  }
  shared_.errors.report(what, e);
  return false;
}

void StressWorker::account(std::size_t bytes, bool add) {
  const std::size_t large = bytes > kLargeObject ? bytes : 0;
  if (add) {
    owned_bytes_ += bytes;
    owned_large_bytes_ += large;
  } else {
    owned_bytes_ -= bytes;
    owned_large_bytes_ -= large;
  }
}

void StressWorker::remove(std::size_t i) {
  account(owned_[i].object.size, false);
  owned_[i] = std::move(owned_.back());
  owned_.pop_back();
}

void StressWorker::op_allocate() {
  // Half the allocations take one of the phase's popular sizes: many objects of a few classes
  // fill several pages each, which random frees and purges then leave sparse for evacuation.
  std::size_t bytes = chance(rng_, 0.5) ? popular_[rng_() % popular_.size()]
                                        : random_object_size(rng_, limits_.max_object_bytes, limits_.large_share);
  // Large objects may take at most 40% of the budget, else a few of them would crowd out the
  // thousands of slab objects that give evacuation its work.
  if (bytes > kLargeObject && owned_large_bytes_ + bytes > limits_.byte_budget * 2 / 5)
    bytes = log_uniform_size(rng_, 1, kLargeObject);
  if (!owned_.empty() && owned_bytes_ + bytes > limits_.byte_budget) {
    op_free();
    return;
  }
  auto& heap = shared_.heap;
  shared_.counters.add(shared_.counters.allocations);
  // Some objects are fixed (raw-pointer users' kind: never moved) and some are allocated on this
  // thread's stream, where its stream-ordered frees are reused at once.
  DevicePtr fixed_at = 0;
  Result<Handle> h = make_error(Errc::internal, "unset");
  if (chance(rng_, 0.15)) {
    auto f = heap.allocate_fixed(bytes, stream_);
    if (f.ok()) {
      fixed_at = f->address;
      h = f->handle;
    } else {
      h = f.error();
    }
  } else {
    h = chance(rng_, 0.3) ? heap.allocate(bytes, stream_) : heap.allocate(bytes);
  }
  if (!h.ok()) {
    (void)clean_failure(h.error(), "allocate");
    return;
  }
  const TrackedObject o{*h, pattern_seed(new_id(), bytes), bytes, fixed_at};
  if (chance(rng_, 0.05)) {
    auto size = heap.size_of(o.handle);
    if (!size.ok() || *size != bytes) shared_.errors.report("size_of after allocate disagrees: " + describe(o));
  }
  const bool stream_ordered = chance(rng_, 0.5);
  if (auto st = fill_object(heap, stream_, o, stream_ordered); !st.ok()) {
    shared_.errors.report("fill after allocate of " + describe(o), st.error());
    (void)drain_stream();
    (void)heap.free(o.handle);
    return;
  }
  stream_dirty_ |= stream_ordered;
  owned_.push_back(Owned{o, std::nullopt, std::nullopt});
  account(bytes, true);
}

void StressWorker::op_free() {
  auto& heap = shared_.heap;
  const std::size_t i = pick();
  Owned& w = owned_[i];
  const TrackedObject o = w.object;
  if (w.pinned()) {
    expect_code(heap.free(o.handle).code(), Errc::pinned, "free of a pinned object", o);
    return;
  }
  // A free right behind a queued stream-ordered fill is the interesting case for the heap (it
  // must not reuse the memory before the stream passes the fill), so half of those go unverified.
  if (!stream_dirty_ || chance(rng_, 0.5)) verify_object(heap, stream_, o, "before free", shared_.counters, shared_.errors);
  shared_.counters.add(shared_.counters.frees);
  // Stream-ordered frees on this thread's stream (behind its queued fills) or plain ones.
  if (auto st = chance(rng_, 0.4) ? heap.free(o.handle, stream_) : heap.free(o.handle); !st.ok()) {
    shared_.errors.report("free of " + describe(o), st.error());
    return;  // keep it: the final sweep reports it again if it is really lost
  }
  remove(i);
  if (chance(rng_, 0.03)) {
    expect_code(heap.free(o.handle).code(), Errc::stale_handle, "double free", o);
    expect_code(heap.pin(o.handle).code(), Errc::stale_handle, "pin of a freed object", o);
    expect_code(heap.resize(o.handle, 64).code(), Errc::stale_handle, "resize of a freed object", o);
  }
}

void StressWorker::op_resize() {
  auto& heap = shared_.heap;
  const std::size_t i = pick();
  Owned& w = owned_[i];
  const TrackedObject old = w.object;
  if (w.pinned() || old.fixed_at != 0) {
    expect_code(heap.resize(old.handle, old.size + 1).code(), Errc::pinned, "resize of a pinned or fixed object", old);
    return;
  }
  std::size_t bytes = chance(rng_, 0.5)
                          ? random_object_size(rng_, limits_.max_object_bytes, limits_.large_share)
                          : std::size_t(double(old.size) * std::uniform_real_distribution<double>(0.5, 2.0)(rng_));
  bytes = std::clamp<std::size_t>(bytes, 1, limits_.max_object_bytes);
  if (bytes > old.size && owned_bytes_ - old.size + bytes > limits_.byte_budget) bytes = std::max<std::size_t>(1, old.size / 2);
  // Usually wait for our queued fills first; sometimes not, and then the heap may refuse with
  // `pinned` (a stream-ordered unpin is pending), never move the object under the fill.
  const bool may_be_pending = stream_dirty_ && chance(rng_, 0.3);
  if (!may_be_pending) {
    if (auto st = drain_stream(); !st.ok()) shared_.errors.report("synchronize_stream", st.error());
  }
  shared_.counters.add(shared_.counters.resizes);
  auto st = heap.resize(old.handle, bytes);
  if (st.ok()) {
    const std::size_t kept = std::min(old.size, bytes);
    auto bad = count_mismatches(heap, stream_, old.handle, bytes, old.seed, kept);
    if (!bad.ok() || *bad != 0)
      shared_.errors.report("resize " + std::to_string(old.size) + " -> " + std::to_string(bytes) + " of " +
                            describe(old) + ": " +
                            (bad.ok() ? std::to_string(*bad) + " of the kept bytes differ" : bad.error().to_string()));
    else
      shared_.counters.add(shared_.counters.bytes_verified, kept);
    w.object.size = bytes;
    w.object.seed = pattern_seed(new_id(), bytes);
    account(old.size, false);
    account(bytes, true);
    const bool stream_ordered = chance(rng_, 0.5);
    if (auto f = fill_object(heap, stream_, w.object, stream_ordered); !f.ok())
      shared_.errors.report("fill after resize of " + describe(w.object), f.error());
    stream_dirty_ |= stream_ordered;
    return;
  }
  if (st.code() == Errc::pinned && may_be_pending) {
    shared_.counters.add(shared_.counters.refusals_checked);
  } else if (!clean_failure(st.error(), "resize")) {
    return;
  }
  // A failed resize leaves the object as it was.
  auto size = heap.size_of(old.handle);
  if (!size.ok() || *size != old.size)
    shared_.errors.report("failed resize changed the size of " + describe(old));
  else if (shared_.faults_armed || chance(rng_, 0.25))
    verify_object(heap, stream_, old, "after a failed resize", shared_.counters, shared_.errors);
}

void StressWorker::op_pin_and_verify() {
  auto& heap = shared_.heap;
  const TrackedObject o = owned_[pick()].object;
  shared_.counters.add(shared_.counters.host_pins);
  if (chance(rng_, 0.7)) {
    // Large objects: three windows (start, a random place, end), not all of their megabytes.
    verify_windows(heap, stream_, o, 64 * 1024, rng_, "pinned check", shared_.counters, shared_.errors);
    return;
  }
  // The stream-ordered way: pin for the stream, check there, unpin at the stream's point.
  shared_.counters.add(shared_.counters.stream_pins);
  auto pin = heap.pin(o.handle, stream_);
  if (!pin.ok()) {
    shared_.errors.report("stream pin of " + describe(o), pin.error());
    return;
  }
  if (o.fixed_at != 0 && pin->address() != o.fixed_at)
    shared_.errors.report("fixed object " + describe(o) + " moved");
  const PatternRange r{pin->address(), o.size, o.seed};
  auto bad = pin->size() == o.size ? heap.backend().verify_pattern({&r, 1}, stream_)
                                   : Result<std::uint64_t>(make_error(Errc::data_mismatch, "pin reports another size"));
  if (auto st = pin->release(); !st.ok()) shared_.errors.report("stream pin release", st.error());
  stream_dirty_ = true;
  if (!bad.ok() || *bad != 0)
    shared_.errors.report("stream-pinned check of " + describe(o) + ": " +
                          (bad.ok() ? std::to_string(*bad) + " bytes differ" : bad.error().to_string()));
  else
    shared_.counters.add(shared_.counters.bytes_verified, o.size);
}

void StressWorker::op_purge() {
  // Frees most of this thread's objects at once, as a service does when a batch of requests ends:
  // the survivors are left scattered over sparse pages, the compactor's best case.
  const double keep = std::uniform_real_distribution<double>(0.05, 0.4)(rng_);
  for (std::size_t i = owned_.size(); i-- > 0;) {
    if (owned_[i].pinned() || chance(rng_, keep)) continue;
    const TrackedObject o = owned_[i].object;
    if (!stream_dirty_) verify_object(shared_.heap, stream_, o, "before purge", shared_.counters, shared_.errors);
    shared_.counters.add(shared_.counters.frees);
    if (auto st = shared_.heap.free(o.handle); !st.ok()) {
      shared_.errors.report("free of " + describe(o), st.error());
      continue;
    }
    remove(i);
  }
}

void StressWorker::op_stream_rewrite() {
  // A new pattern queued on our stream under a stream pin released at once: if the heap moved or
  // reused the object before the stream ran the fill, the fill would land in the wrong place and
  // a later check (here, another thread, or a checkpoint) would see the old pattern.
  Owned& w = owned_[pick()];
  w.object.seed = pattern_seed(new_id(), w.object.size);
  shared_.counters.add(shared_.counters.stream_pins);
  if (auto st = fill_object(shared_.heap, stream_, w.object, true); !st.ok())
    shared_.errors.report("stream-ordered rewrite of " + describe(w.object), st.error());
  stream_dirty_ = true;
}

void StressWorker::op_hold_or_release_pin() {
  auto& heap = shared_.heap;
  if (held_pins_ > 0 && (held_pins_ >= limits_.max_held_pins || chance(rng_, 0.5))) {
    for (Owned& w : owned_) {
      if (!w.pinned()) continue;
      w.held_pin.reset();
      if (w.held_stream_pin) {
        if (auto st = w.held_stream_pin->release(); !st.ok()) shared_.errors.report("stream pin release", st.error());
        w.held_stream_pin.reset();
        stream_dirty_ = true;
      }
      --held_pins_;
      return;
    }
    return;
  }
  Owned& w = owned_[pick()];
  if (w.pinned()) return;
  if (chance(rng_, 0.5)) {
    shared_.counters.add(shared_.counters.host_pins);
    auto pin = heap.pin(w.object.handle);
    if (!pin.ok()) {
      shared_.errors.report("held pin of " + describe(w.object), pin.error());
      return;
    }
    w.held_pin.emplace(std::move(pin).value());
  } else {
    shared_.counters.add(shared_.counters.stream_pins);
    auto pin = heap.pin(w.object.handle, stream_);
    if (!pin.ok()) {
      shared_.errors.report("held stream pin of " + describe(w.object), pin.error());
      return;
    }
    w.held_stream_pin.emplace(std::move(pin).value());
  }
  ++held_pins_;
}

void StressWorker::op_exchange() {
  const std::size_t slot = std::uniform_int_distribution<std::size_t>(0, shared_.board.size() - 1)(rng_);
  std::optional<TrackedObject> deposit;
  if (!owned_.empty() && chance(rng_, 0.6)) {
    const std::size_t i = pick();
    if (!owned_[i].pinned()) {
      // The next owner reads the object at once: our queued fills must be done.
      if (auto st = drain_stream(); !st.ok()) shared_.errors.report("synchronize_stream", st.error());
      deposit = owned_[i].object;
      remove(i);
      shared_.counters.add(shared_.counters.exchanges);
    }
  }
  if (auto got = shared_.board.swap(slot, deposit)) {
    owned_.push_back(Owned{*got, std::nullopt, std::nullopt});
    account(got->size, true);
  }
}

void StressWorker::op_visit_board() {
  auto& heap = shared_.heap;
  const std::size_t slot = std::uniform_int_distribution<std::size_t>(0, shared_.board.size() - 1)(rng_);
  const bool stream_ordered = chance(rng_, 0.3);
  shared_.board.visit(slot, [&](const TrackedObject& o) {
    shared_.counters.add(shared_.counters.cross_thread_pins);
    if (!stream_ordered) {
      verify_object(heap, stream_, o, "cross-thread pin", shared_.counters, shared_.errors);
      return;
    }
    auto pin = heap.pin(o.handle, stream_);
    if (!pin.ok()) {
      shared_.errors.report("cross-thread stream pin of " + describe(o), pin.error());
      return;
    }
    const PatternRange r{pin->address(), o.size, o.seed};
    auto bad = heap.backend().verify_pattern({&r, 1}, stream_);
    if (auto st = pin->release(); !st.ok()) shared_.errors.report("stream pin release", st.error());
    // The object's next owner expects no unpin of ours still pending on it.
    stream_dirty_ = true;
    if (auto st = drain_stream(); !st.ok()) shared_.errors.report("synchronize_stream", st.error());
    if (!bad.ok() || *bad != 0)
      shared_.errors.report("cross-thread stream-pinned check of " + describe(o) + ": " +
                            (bad.ok() ? std::to_string(*bad) + " bytes differ" : bad.error().to_string()));
    else
      shared_.counters.add(shared_.counters.bytes_verified, o.size);
  });
}

}  // namespace valet::stress
