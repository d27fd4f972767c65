// A heap's life: creation (validating the config, reserving the arena, filling the reserve,
// starting the keeper) and shutdown (decided under both locks before anything changes, then torn
// down once queued work has finished).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "heap_core.h"

namespace valet {
namespace detail {
namespace {

std::atomic<std::uint32_t> g_next_tag{1};

}  // namespace

HeapCore::HeapCore(std::unique_ptr<Backend> b, const Config& c, std::size_t cap_pages)
    : backend(std::make_unique<CountingBackend>(std::move(b))), config(c), tag(g_next_tag.fetch_add(1)), capacity_pages(cap_pages),
      pool(*backend, cap_pages) {
  backend->set_lock_probe(&this_thread_holds_a_heap_lock);
  static_assert(kLockRoles == kDriverThreadKinds);
  backend->set_thread_kind_probe(&this_thread_lock_role);
  keeper.set_after_turn([this](std::unique_lock<HeapMutex>& lock) {
    keep_standby_alias(lock);
    keep_region(lock);
  });
  misses.set_collect([this] { collect_unlocked_misses(); });
}

Status HeapCore::decide_shutdown(std::vector<std::uint32_t>& killed, HandleEntry*& settling) {
  settling = nullptr;
  if (table.held_scopes() > 0) return make_error(Errc::pinned, "shutdown: a handle-table scope is held; release it first");
  // No fast path may make an object live behind the claims below: they stay gated once the
  // shutdown is decided (every later call fails on `shut`), and open again if it is refused.
  caches.gate();
  fold_caches();  // the counters stay readable once the heap is shut
  // Claim every live object as a move (not cancelable): a pin arriving meanwhile waits for the
  // outcome rather than seeing the object freed. A held pin refuses the shutdown, and the claims
  // are ended: the waiting pins go on as if nothing happened. A refused shutdown changes
  // nothing, so nobody may see it: `shut` is set only once it is decided.
  for (std::uint32_t i = 1; i < handles.high_water(); ++i) {
    HandleEntry* e = handles.get(i);
    if (!state::live(e->state.load(std::memory_order_acquire))) continue;
    if (claims::claim_for_shutdown(e->state)) {
      killed.push_back(i);
      continue;
    }
    for (std::uint32_t k : killed) end_move(handles.get(k));
    killed.clear();
    // Unpinned but moving: a resize is copying it without the heap lock (no cycle runs: the
    // caller holds compaction_mu). The caller waits for it to settle and decides again.
    const std::uint64_t s = e->state.load(std::memory_order_acquire);
    if (state::pins(s) == 0 && (s & state::kMoving)) settling = e;
    caches.ungate();
    return make_error(Errc::pinned, "shutdown: object " + std::to_string(i) + " is pinned; release its pins first");
  }
  // Decided: from here every call fails with shut_down, and every handle is dead.
  shut.store(true, std::memory_order_release);
  for (std::uint32_t i : killed) claims::kill(handles.get(i)->state);
  return {};
}

Status HeapCore::tear_down(const std::vector<std::uint32_t>& killed) {
  // Queued work must finish before pages go: stream-ordered unpins, deferred frees, moves.
  (void)backend->synchronize_stream(mover.stream());
  Status first;
  auto note = [&](Status s) {
    if (!s.ok() && first.ok()) first = s;
  };
  for (std::uint32_t i : killed) note(releases.destroy_all(handles.get(i)->pending_unpins));
  note(table.destroy());
  note(releases.drain_all([](const Location&, std::size_t) {}));  // the pages go below, with every other
  // Every slot goes back as a whole: slab pages and large runs alike are unmapped and released.
  std::vector<SlabPage*> pages;
  slabs.for_each_page([&](const SlabPage& p) { pages.push_back(const_cast<SlabPage*>(&p)); });
  for (auto* p : pages) slabs.destroy(p);
  note(destroy_region());  // its chunks are lent pages of the pool's
  note(pool.destroy());
  note(backend->destroy_stream(mover.stream()));
  live_bytes = live_objects = 0;
  footprint_bytes = 0;
  return first;
}

}  // namespace detail

using detail::HeapCore;

Result<std::unique_ptr<Heap>> Heap::create(std::unique_ptr<Backend> backend, const Config& config) {
  if (!backend) return make_error(Errc::invalid_argument, "Heap::create: no backend");
  if (backend->granularity() != detail::kPageSize)
    return make_error(Errc::unsupported, "Heap::create: the backend's page size is not 2 MiB");
  std::size_t capacity = config.capacity;
  if (capacity > 0) {
    // More than the backend has cannot be backed, and would size the slot table for nothing.
    auto info = backend->memory_info();
    if (info.ok() && info->total_bytes > 0 && capacity > info->total_bytes)
      return make_error(Errc::invalid_argument, "Heap::create: capacity " + std::to_string(capacity) +
                                                    " bytes exceeds the backend's memory of " +
                                                    std::to_string(info->total_bytes) + " bytes");
  }
  if (capacity == 0) {
    auto info = backend->memory_info();
    if (!info.ok()) return info.error();
    // Leave room for the CUDA context, kernels and other users of the device.
    const std::size_t margin = backend->capabilities().real_device ? (std::size_t{512} << 20) : 0;
    capacity = info->free_bytes > margin ? info->free_bytes - margin : 0;
  }
  const std::size_t pages = capacity / detail::kPageSize;
  if (pages == 0) return make_error(Errc::invalid_argument, "Heap::create: capacity below one 2 MiB page");
  if (config.reserve_low_pages > config.reserve_high_pages)
    return make_error(Errc::invalid_argument, "Heap::create: reserve_low_pages > reserve_high_pages");
  if (!(config.reserve_fraction >= 0 && config.reserve_fraction <= 1))
    return make_error(Errc::invalid_argument, "Heap::create: reserve_fraction must be within [0, 1]");
  if (!(config.reserve_peak_ratio >= 1 && config.reserve_peak_ratio <= 4))
    return make_error(Errc::invalid_argument, "Heap::create: reserve_peak_ratio must be within [1, 4]");
  if (config.reserve_hold_ms > 60'000)
    return make_error(Errc::invalid_argument, "Heap::create: reserve_hold_ms must be within [0, 60000]");
  if (config.reserve_hold_allocs > 1'000'000)
    return make_error(Errc::invalid_argument, "Heap::create: reserve_hold_allocs must be within [0, 1000000]");
  if (config.reserve_window_ms == 0 || config.reserve_window_ms > 86'400'000)
    return make_error(Errc::invalid_argument, "Heap::create: reserve_window_ms must be within [1, 86400000]");
  if (config.address_space_factor < 2 || config.address_space_factor > 64)
    return make_error(Errc::invalid_argument, "Heap::create: address_space_factor must be within [2, 64]");
  if (config.chunk_min_pages == 1 || config.chunk_min_pages > (std::size_t{1} << 20))
    return make_error(Errc::invalid_argument, "Heap::create: chunk_min_pages must be 0 (off) or within [2, 1048576]");
  if (config.chunk_miss_pages == 1 || config.chunk_miss_pages > (std::size_t{1} << 20))
    return make_error(Errc::invalid_argument, "Heap::create: chunk_miss_pages must be 0 (off) or within [2, 1048576]");
  if (config.background_miss_limit == 0 || config.background_miss_limit > (std::size_t{1} << 20))
    return make_error(Errc::invalid_argument, "Heap::create: background_miss_limit must be within [1, 1048576]");
  if (config.standby_tail_aliases > 64)
    return make_error(Errc::invalid_argument, "Heap::create: standby_tail_aliases must be within [0, 64]");
  if (config.miss_mapper_spin_us > 100'000)
    return make_error(Errc::invalid_argument, "Heap::create: miss_mapper_spin_us must be within [0, 100000]");
  if (config.copy_region_min_bytes != 0) {
    if (config.copy_region_min_bytes <= detail::kMaxSlabObject || config.copy_region_min_bytes > (std::size_t{1} << 40))
      return make_error(Errc::invalid_argument,
                        "Heap::create: copy_region_min_bytes must be 0 (off) or within (1 MiB, 1 TiB]: slab pages hold the smaller objects");
    if (config.copy_region_chunk_bytes == 0 || config.copy_region_chunk_bytes % detail::kPageSize != 0 ||
        config.copy_region_chunk_bytes > (std::size_t{1} << 34))
      return make_error(Errc::invalid_argument, "Heap::create: copy_region_chunk_bytes must be a multiple of 2 MiB within (0, 16 GiB]");
    if (config.copy_region_chunk_bytes > pages * detail::kPageSize)
      return make_error(Errc::invalid_argument, "Heap::create: copy_region_chunk_bytes exceeds the capacity");
    if (config.copy_region_headroom_chunks > 1024 || config.copy_region_hysteresis_chunks > 1024)
      return make_error(Errc::invalid_argument, "Heap::create: copy_region_headroom_chunks and copy_region_hysteresis_chunks must be within [0, 1024]");
    if (!(config.copy_region_hole_low >= 0 && config.copy_region_hole_low <= config.copy_region_hole_high &&
          config.copy_region_hole_high <= 1))
      return make_error(Errc::invalid_argument, "Heap::create: copy_region_hole_low and _high must satisfy 0 <= low <= high <= 1");
  }
  auto core = std::make_unique<HeapCore>(std::move(backend), config, pages);
  core->config.capacity = pages * detail::kPageSize;
  core->move_batch_bytes = config.move_batch_bytes ? config.move_batch_bytes
                           : core->backend->capabilities().real_device ? std::size_t{64} << 20
                                                                        : std::size_t{2} << 20;
  const std::size_t slots = std::max<std::size_t>(pages * config.address_space_factor, 64);
  VALET_TRY(core->pool.init(slots));
  if (auto made = core->create_region(); !made.ok()) {
    (void)core->pool.destroy();
    return made.error();
  }
  core->pool.set_chunk_miss_pages(std::uint32_t(config.chunk_miss_pages));
  core->pool.set_chunk_min_pages(std::uint32_t(config.chunk_min_pages));
  // With background misses, the misses leave the keeper's low watermark in the reserve for new
  // slab pages, which otherwise map a tail's alias on the caller's thread (HeapCore::place).
  if (config.background_misses) core->pool.set_miss_reserve_floor(config.reserve_low_pages);
  auto stream = core->backend->create_stream();
  if (!stream.ok()) {
    (void)core->destroy_region();
    (void)core->pool.destroy();
    return stream.error();
  }
  core->mover.set_stream(*stream);
  {
    std::lock_guard lock(core->mu);
    (void)core->keeper.balance();
  }
  core->keeper.start();
  core->misses.set_spin_us(config.miss_mapper_spin_us);
  if (config.background_misses) core->misses.start();
  return std::unique_ptr<Heap>(new Heap(std::move(core)));
}

Heap::Heap(std::unique_ptr<HeapCore> core) : core_(std::move(core)) {}

Heap::~Heap() {
  auto st = shutdown();
  if (st.code() == Errc::pinned) {
    std::fprintf(stderr, "valet: heap destroyed while pins are held (%s); aborting\n", st.error().to_string().c_str());
    std::abort();
  }
  if (!st.ok()) std::fprintf(stderr, "valet: shutdown: %s\n", st.error().to_string().c_str());
}

Status Heap::shutdown() {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return {};
  // Lock order: the compaction lock, then the heap lock. Holding both, no cycle runs and no
  // allocate, free or resize is half done; calls arriving now wait for the outcome.
  std::unique_lock cl(c.compaction_mu);
  std::unique_lock lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return {};  // another shutdown got here first
  // A freed object's miss may still be in hand (the mapper's, or that of a pin serving it:
  // Config::pins_serve_misses, which misses.stop() below does not wait for): the misses pending
  // now settle first (the heap lock is let go meanwhile, as for a settling object below). No
  // miss is made without the heap lock from here (none once `shut` is set).
  const detail::HeapCore::UnlockedMissesClosed closed(c);
  c.wait_for_misses(lock);
  if (c.shut.load(std::memory_order_relaxed)) return {};
  std::vector<std::uint32_t> killed;
  for (;;) {
    detail::HandleEntry* settling = nullptr;
    const Status decided = c.decide_shutdown(killed, settling);
    if (decided.ok()) break;
    if (!settling) return decided;
    const std::uint32_t gen = detail::state::generation(settling->state.load(std::memory_order_acquire));
    lock.unlock();
    detail::claims::wait_not_moving(settling->state, gen);
    lock.lock();
    if (c.shut.load(std::memory_order_relaxed)) return {};
  }
  // The keeper and the miss mapper take the heap lock: stop them with the lock released
  // (nothing else can start; no miss is pending: each pending object was waited for above).
  lock.unlock();
  c.misses.stop();
  c.keeper.stop();
  lock.lock();
  // A free still trimming the reserve, or a placement mapping its run, without the lock
  // finishes first (a placement then sees `shut` and gives its run back).
  while (c.pool.releasing_pages() > 0 || c.pool.placements_in_flight() > 0) {
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
  return c.tear_down(killed);
}

bool Heap::is_shut_down() const { return core_->shut.load(); }
Backend& Heap::backend() { return core_->backend->inner(); }
const CountingBackend& Heap::driver_calls() const { return *core_->backend; }
std::uint64_t Heap::this_thread_lock_wait_ns() { return detail::t_heap_lock_wait_ns; }
Heap::LockWaitsByHolder Heap::this_thread_lock_wait_by_holder() {
  const auto& w = detail::t_heap_lock_wait_by_role;
  using detail::LockRole;
  return {w[std::size_t(LockRole::caller)], w[std::size_t(LockRole::mapper)], w[std::size_t(LockRole::keeper)],
          w[std::size_t(LockRole::compaction)]};
}
std::uint64_t Heap::this_thread_background_misses() { return detail::t_background_misses; }
const Config& Heap::config() const { return core_->config; }
std::uint32_t Heap::tag() const { return core_->tag; }

}  // namespace valet
