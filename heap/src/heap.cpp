#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "heap_core.h"
#include "size_classes.h"

namespace valet {
namespace detail {
namespace {

std::atomic<std::uint32_t> g_next_tag{1};
constexpr std::size_t kMaxObject = std::size_t{1} << 48;

std::string mib(std::size_t bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1 << 20));
  return buf;
}

}  // namespace

HeapCore::HeapCore(std::unique_ptr<Backend> b, const Config& c, std::size_t cap_pages)
    : backend(std::move(b)), config(c), tag(g_next_tag.fetch_add(1)), capacity_pages(cap_pages),
      pool(*backend, cap_pages) {}

HeapCore::~HeapCore() { stop_keeper(); }

std::uint64_t HeapCore::now_ns() {
  return std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now().time_since_epoch())
                           .count());
}

void HeapCore::note_pin_wait(std::uint64_t ns) {
  for (auto* max : {&pin_wait_ns_max, &cycle_pin_wait_ns}) {
    std::uint64_t cur = max->load(std::memory_order_relaxed);
    while (ns > cur && !max->compare_exchange_weak(cur, ns, std::memory_order_relaxed)) {
    }
  }
}

Result<HandleEntry*> HeapCore::lookup(Handle h) const {
  if (h.is_null()) return make_error(Errc::invalid_handle, "null handle");
  if (h.heap != tag)
    return make_error(Errc::foreign_handle, "handle of another heap (tag " + std::to_string(h.heap) +
                                                ", this heap is " + std::to_string(tag) + ")");
  HandleEntry* e = handles.get(h.index);
  if (!e || h.index == 0) return make_error(Errc::invalid_handle, "handle index " + std::to_string(h.index) + " was never issued");
  const std::uint64_t s = e->state.load(std::memory_order_acquire);
  if (state::generation(s) != h.generation || !(s & state::kLive))
    return make_error(Errc::stale_handle, "stale handle: the object was freed (double free or use after free)");
  return e;
}

std::uint64_t HeapCore::wait_not_moving(HandleEntry* e, std::uint32_t gen, bool until_cancelable) {
  const std::uint64_t done_bits = until_cancelable ? state::kCancelable | state::kAliased : 0;
  auto waiting = [&](std::uint64_t s) { return (s & state::kMoving) && !(s & done_bits) && state::generation(s) == gen; };
  std::uint64_t s = e->state.load(std::memory_order_acquire);
  // What a pin waits for is short (a commit's few stores, a remap's three VMM calls): yield for
  // up to 200 us first, so that the waiter is running when it ends rather than asleep and queued
  // behind other threads for a core (milliseconds on a loaded host). Then sleep on the word.
  const std::uint64_t spin_until = waiting(s) ? now_ns() + 200'000 : 0;
  while (waiting(s) && now_ns() < spin_until) {
    std::this_thread::yield();
    s = e->state.load(std::memory_order_acquire);
  }
  while (waiting(s)) {
    e->state.wait(s, std::memory_order_acquire);
    s = e->state.load(std::memory_order_acquire);
  }
  return s;
}

Result<HandleEntry*> HeapCore::acquire_pin(Handle h, DevicePtr& address) {
  if (shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "pin: the heap was shut down");
  auto looked = lookup(h);
  if (!looked.ok()) return looked;
  HandleEntry* e = *looked;
  std::uint64_t s = e->state.load(std::memory_order_acquire);
  std::uint64_t next = 0;
  for (;;) {
    if ((s & state::kMoving) && !(s & (state::kCancelable | state::kAliased))) {
      const std::uint64_t t0 = now_ns();
      s = wait_not_moving(e, h.generation, true);
      note_pin_wait(now_ns() - t0);
    }
    if (state::generation(s) != h.generation || !(s & state::kLive)) {
      if (shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "pin: the heap was shut down");
      return make_error(Errc::stale_handle, "pin of a freed object");
    }
    if (state::pins(s) == state::kPinMask) return make_error(Errc::invalid_state, "pin: too many pins on one object");
    // A move still copying the object is cancelled: the object stays where it is (the mover has
    // not repointed it), so the pin never waits for a copy.
    next = (s & state::kCancelable) ? (s + 1) & ~(state::kMoving | state::kCancelable) : s + 1;
    if (e->state.compare_exchange_weak(s, next, std::memory_order_acq_rel, std::memory_order_acquire)) break;
  }
  if (s & state::kCancelable) e->state.notify_all();  // a free or resize waiting on the move
  // Aliased: the page is being remapped; the bytes are complete at the alias, which stays mapped
  // while the object lives (whether the remap succeeds, or fails and the object is repointed).
  address = (s & state::kAliased) ? e->alias.load(std::memory_order_acquire) : e->address.load(std::memory_order_acquire);
  pin_count.fetch_add(1, std::memory_order_relaxed);
  return e;
}

Result<Event> HeapCore::take_event() {
  if (!spare_events.empty()) {
    const Event e = spare_events.back();
    spare_events.pop_back();
    return e;
  }
  return backend->create_event();
}

void HeapCore::recycle_event(Event e) { spare_events.push_back(e); }

Status HeapCore::record_release(Stream s, std::vector<Event>& pending) {
  Result<Event> ev = make_error(Errc::internal, "unset");
  {
    std::lock_guard lock(mu);
    ev = take_event();
  }
  Status st = ev.ok() ? backend->record_event(*ev, s) : Status(ev.error());
  if (st.ok()) {
    std::lock_guard lock(mu);
    pending.push_back(*ev);
  } else {
    // Without an event the only safe release is after the stream has drained.
    if (ev.ok()) {
      std::lock_guard lock(mu);
      recycle_event(*ev);
    }
    (void)backend->synchronize_stream(s);
  }
  return st;
}

Status HeapCore::unpin_on_stream(HandleEntry* e, Stream s) {
  // The event is listed before the pin count drops: a mover sees one or the other.
  Status st = record_release(s, e->pending_unpins);
  unpin(e);
  return st;
}

bool HeapCore::reap_unpins(HandleEntry* e) {
  auto& v = e->pending_unpins;
  for (std::size_t i = 0; i < v.size();) {
    auto done = backend->query_event(v[i]);
    if (done.ok() && !*done) {
      ++i;
      continue;
    }
    recycle_event(v[i]);  // complete (or unknown to the backend: nothing left to wait for)
    v[i] = v.back();
    v.pop_back();
  }
  return v.empty();
}

void HeapCore::reap_deferred() {
  for (std::size_t i = 0; i < deferred.size();) {
    auto& d = deferred[i];
    bool all = true;
    for (const Event ev : d.events) {
      auto done = backend->query_event(ev);
      if (done.ok() && !*done) all = false;
    }
    if (!all) {
      ++i;
      continue;
    }
    for (const Event ev : d.events) recycle_event(ev);
    footprint_bytes -= d.footprint;
    release_location(d.loc);
    deferred[i] = std::move(deferred.back());
    deferred.pop_back();
  }
}

bool HeapCore::try_begin_move(HandleEntry* e, bool cancelable) {
  std::uint64_t s = e->state.load(std::memory_order_acquire);
  if (!(s & state::kLive) || (s & state::kMoving) || state::pins(s) != 0) return false;
  // A stream-ordered unpin may still have queued work on the object. Checked before the claim:
  // a pin can only add events while it holds a pin, which the CAS below rules out.
  if (!e->pending_unpins.empty() && !reap_unpins(e)) return false;
  const std::uint64_t claim = state::kMoving | (cancelable ? state::kCancelable : 0);
  return e->state.compare_exchange_strong(s, s | claim, std::memory_order_acq_rel);
}

bool HeapCore::commit_move(HandleEntry* e) {
  std::uint64_t s = e->state.load(std::memory_order_acquire);
  // A pin that came in cleared CANCELABLE (and MOVING); nobody else sets CANCELABLE meanwhile
  // (one compaction cycle at a time, and the cycle claims each object once).
  while ((s & state::kCancelable) && state::pins(s) == 0)
    if (e->state.compare_exchange_weak(s, s & ~state::kCancelable, std::memory_order_acq_rel, std::memory_order_acquire))
      return true;
  return false;
}

void HeapCore::publish_alias(HandleEntry* e, DevicePtr alias) {
  e->alias.store(alias, std::memory_order_relaxed);
  e->state.fetch_or(state::kAliased, std::memory_order_release);  // publishes the alias
  e->state.notify_all();                                          // pins waiting since the commit
}

void HeapCore::drop_claim(HandleEntry* e) {
  std::uint64_t s = e->state.load(std::memory_order_acquire);
  while (s & state::kCancelable)
    if (e->state.compare_exchange_weak(s, s & ~(state::kMoving | state::kCancelable), std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
      e->state.notify_all();
      return;
    }
}

void HeapCore::end_move(HandleEntry* e) {
  e->state.fetch_and(~(state::kMoving | state::kAliased), std::memory_order_release);
  e->state.notify_all();
}

DevicePtr HeapCore::address_of(const Location& loc) const {
  if (loc.kind == ObjectKind::large) return pool.address(loc.page);
  const SlabPage* p = slabs.page(pool.slot(loc.page).owner);
  return pool.address(loc.page) + DevicePtr(loc.index) * class_size(p->cls);
}

std::size_t HeapCore::footprint_of(const Location& loc) const {
  if (loc.kind == ObjectKind::large) return std::size_t(loc.pages) * kPageSize;
  return class_size(slabs.page(pool.slot(loc.page).owner)->cls);
}

Result<Location> HeapCore::place(std::size_t bytes, std::uint32_t owner) {
  if (bytes <= kMaxSlabObject) {
    const std::uint32_t cls = class_of(bytes);
    SlabPage* page = slabs.densest_with_room(cls);
    if (!page) page = slab_on_tail(cls);
    if (!page) {
      auto slot = pool.take_page(SlotKind::slab, 0);
      if (!slot.ok()) return slot.error();
      page = slabs.create(cls, *slot);
      pool.slot(*slot).owner = page->id;
      want_refill();
    }
    const std::uint32_t i = slabs.take_slot(page, owner);
    return Location{ObjectKind::slab, page->slot, i, 0};
  }
  const std::uint32_t n = std::uint32_t((bytes + kPageSize - 1) / kPageSize);
  // Its last page on a slab page's physical page, when one has the room (no page of its own).
  if (auto loc = place_on_slab_page(bytes, n, owner)) return *loc;
  auto run = pool.take_run(n, owner);
  if (!run.ok()) return run.error();
  want_refill();
  const Location loc{ObjectKind::large, *run, 0, n};
  open_tail(loc, bytes);
  return loc;
}

void HeapCore::release_location(const Location& loc) {
  if (loc.kind == ObjectKind::large) {
    release_large(loc);
  } else {
    SlabPage* p = free_slab_slot(loc);
    // Keep one empty page per class against allocate/free ping-pong; give back the others.
    if (p->holds_no_object() && !p->evacuating && slabs.pages_of(p->cls) > 1) (void)retire_slab(p);
  }
  after_release();
}

void HeapCore::want_refill() {
  if (pool.reserve_pages() >= config.reserve_low_pages) return;
  if (keeper.joinable()) {
    keeper_wanted = true;
    keeper_cv.notify_one();
  }
}

void HeapCore::trim_reserve(std::unique_lock<HeapMutex>& lock) {
  const std::size_t high = config.reserve_high_pages, mid = (config.reserve_low_pages + high) / 2;
  while (pool.over(high) && !keeper_stop) {
    // Idle pages (left by meshing or failed operations) cost one driver call each.
    if (!pool.release_idle(pool.idle_pages()).ok()) return;
    if (!pool.over(high)) return;
    auto batch = pool.begin_release(mid, 64);
    if (batch.empty()) return;
    lock.unlock();
    pool.release_calls(batch);
    lock.lock();
    if (!pool.finish_release(batch).ok()) return;
  }
}

void HeapCore::after_release() {
  if (pool.reserve_pages() <= config.reserve_high_pages) return;
  if (keeper.joinable()) {
    keeper_wanted = true;
    keeper_cv.notify_one();
  } else {
    (void)pool.balance(config.reserve_low_pages, config.reserve_high_pages);
  }
}

Error HeapCore::out_of_memory(std::size_t asked, const Error& cause) const {
  if (cause.code != Errc::out_of_memory) return cause;
  return make_error(Errc::out_of_memory,
                    "cannot allocate " + std::to_string(asked) + " bytes (" + mib(asked) + "): live " +
                        mib(live_bytes) + " in " + std::to_string(live_objects) + " objects (footprint " +
                        mib(footprint_bytes) + "), held " + mib(pool.created_pages() * kPageSize) +
                        " of a capacity of " + mib(capacity_pages * kPageSize) + "; " + cause.message);
}

Result<Handle> HeapCore::allocate_locked(std::size_t bytes) {
  std::uint32_t index;
  if (!handles.acquire(index)) return make_error(Errc::out_of_memory, "the handle table is full");
  auto loc = place(bytes, index);
  if (!loc.ok()) {
    handles.release(index);
    return loc.error();
  }
  HandleEntry* e = handles.get(index);
  e->size = bytes;
  e->loc = *loc;
  e->address.store(address_of(*loc), std::memory_order_relaxed);
  std::uint32_t gen = state::generation(e->state.load(std::memory_order_relaxed)) + 1;
  if (gen == 0) gen = 1;
  e->state.store(state::make(gen, state::kLive), std::memory_order_release);
  live_bytes += bytes;
  footprint_bytes += footprint_of(*loc);
  ++live_objects;
  ++ops.allocate;
  ++table_version;
  return Handle{index, gen, tag};
}

void HeapCore::emergency_compact(std::unique_lock<HeapMutex>& lock) {
  CompactRequest req;
  req.max_occupancy = 0.999;
  req.trigger = CompactionTrigger::emergency;
  // Lock order: the compaction lock before the heap lock.
  lock.unlock();
  std::lock_guard cl(compaction_mu);
  lock.lock();
  if (shut.load(std::memory_order_relaxed)) return;  // a shutdown ran while the lock was released
  (void)compact_locked(lock, req);
}

void HeapCore::make_room(std::unique_lock<HeapMutex>& lock) {
  reap_deferred();
  retire_empty_slabs();  // to the reserve, where the retry finds them
  // An emergency cycle (bounded: one full cycle) evacuates sparse pages.
  if (config.compact_on_oom) emergency_compact(lock);
}

void HeapCore::keeper_loop() {
  std::unique_lock lock(mu);
  while (!keeper_stop) {
    keeper_cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return keeper_stop || keeper_wanted; });
    if (keeper_stop) break;
    keeper_wanted = false;
    if (!deferred.empty()) reap_deferred();
    // A large free can leave thousands of pages to give back (~50 us of driver calls each on a
    // GPU, ~0.7 ms on the host emulation): they are released without the heap lock, so neither
    // allocations nor compaction wait for them. Refilling stays under the lock (a few pages).
    if (pool.over(config.reserve_high_pages))
      trim_reserve(lock);
    else
      (void)pool.balance(config.reserve_low_pages, config.reserve_high_pages);
  }
}

void HeapCore::start_keeper() {
  if (!config.background_reserve || keeper.joinable()) return;
  {
    std::lock_guard lock(mu);
    keeper_stop = false;
  }
  keeper = std::thread([this] { keeper_loop(); });
}

void HeapCore::stop_keeper() {
  if (!keeper.joinable()) return;
  {
    std::lock_guard lock(mu);
    keeper_stop = true;
  }
  keeper_cv.notify_all();
  keeper.join();
}

Status HeapCore::decide_shutdown(std::vector<std::uint32_t>& killed) {
  if (table_pins.load() > 0) return make_error(Errc::pinned, "shutdown: a handle-table scope is held; release it first");
  // Claim every live object as a move (not cancelable): a pin arriving meanwhile waits for the
  // outcome rather than seeing the object freed. A held pin refuses the shutdown, and the claims
  // are ended: the waiting pins go on as if nothing happened. A refused shutdown changes
  // nothing, so nobody may see it: `shut` is set only once it is decided.
  for (std::uint32_t i = 1; i < handles.high_water(); ++i) {
    HandleEntry* e = handles.get(i);
    std::uint64_t s = e->state.load(std::memory_order_acquire);
    if (!(s & state::kLive)) continue;
    if (state::pins(s) == 0 && !(s & state::kMoving) &&
        e->state.compare_exchange_strong(s, s | state::kMoving, std::memory_order_acq_rel)) {
      killed.push_back(i);
      continue;
    }
    for (std::uint32_t k : killed) end_move(handles.get(k));
    killed.clear();
    return make_error(Errc::pinned, "shutdown: object " + std::to_string(i) + " is pinned; release its pins first");
  }
  // Decided: from here every call fails with shut_down, and every handle is dead.
  shut.store(true, std::memory_order_release);
  for (std::uint32_t i : killed) {
    HandleEntry* e = handles.get(i);
    e->state.store(state::make(state::generation(e->state.load(std::memory_order_relaxed)), 0), std::memory_order_release);
    e->state.notify_all();
  }
  return {};
}

Status HeapCore::tear_down(const std::vector<std::uint32_t>& killed) {
  // Queued work must finish before pages go: stream-ordered unpins, deferred frees, moves.
  (void)backend->synchronize_stream(work_stream);
  Status first;
  auto note = [&](Status s) {
    if (!s.ok() && first.ok()) first = s;
  };
  for (std::uint32_t i : killed) {
    HandleEntry* e = handles.get(i);
    for (Event ev : e->pending_unpins) {
      note(backend->synchronize_event(ev));
      note(backend->destroy_event(ev));
    }
    e->pending_unpins.clear();
  }
  for (auto& d : deferred)
    for (Event ev : d.events) {
      note(backend->synchronize_event(ev));
      note(backend->destroy_event(ev));
    }
  deferred.clear();
  for (Event ev : table_pending) {
    note(backend->synchronize_event(ev));
    note(backend->destroy_event(ev));
  }
  table_pending.clear();
  note(release_table_memory());
  for (Event ev : spare_events) note(backend->destroy_event(ev));
  spare_events.clear();
  // Every slot goes back as a whole: slab pages and large runs alike are unmapped and released.
  std::vector<SlabPage*> pages;
  slabs.for_each_page([&](const SlabPage& p) { pages.push_back(const_cast<SlabPage*>(&p)); });
  for (auto* p : pages) slabs.destroy(p);
  note(pool.destroy());
  note(backend->destroy_stream(work_stream));
  live_bytes = footprint_bytes = live_objects = 0;
  return first;
}

}  // namespace detail

using detail::HandleEntry;
using detail::HeapCore;
namespace state = detail::state;

// --- Pin / StreamPin ---

Pin& Pin::operator=(Pin&& o) noexcept {
  if (this != &o) {
    reset();
    core_ = std::exchange(o.core_, nullptr);
    handle_ = o.handle_;
    address_ = o.address_;
    size_ = o.size_;
  }
  return *this;
}

void Pin::reset() {
  if (!core_) return;
  core_->unpin(core_->handles.get(handle_.index));
  core_ = nullptr;
}

StreamPin& StreamPin::operator=(StreamPin&& o) noexcept {
  if (this != &o) {
    (void)release();
    core_ = std::exchange(o.core_, nullptr);
    handle_ = o.handle_;
    stream_ = o.stream_;
    address_ = o.address_;
    size_ = o.size_;
  }
  return *this;
}

Status StreamPin::release() {
  if (!core_) return {};
  auto* core = std::exchange(core_, nullptr);
  return core->unpin_on_stream(core->handles.get(handle_.index), stream_);
}

// --- Heap ---

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
  if (config.address_space_factor < 2 || config.address_space_factor > 64)
    return make_error(Errc::invalid_argument, "Heap::create: address_space_factor must be within [2, 64]");
  auto core = std::make_unique<HeapCore>(std::move(backend), config, pages);
  core->config.capacity = pages * detail::kPageSize;
  core->move_batch_bytes = config.move_batch_bytes ? config.move_batch_bytes
                           : core->backend->capabilities().real_device ? std::size_t{64} << 20
                                                                        : std::size_t{2} << 20;
  const std::size_t slots = std::max<std::size_t>(pages * config.address_space_factor, 64);
  VALET_TRY(core->pool.init(slots));
  auto stream = core->backend->create_stream();
  if (!stream.ok()) {
    (void)core->pool.destroy();
    return stream.error();
  }
  core->work_stream = *stream;
  {
    std::lock_guard lock(core->mu);
    (void)core->pool.balance(config.reserve_low_pages, config.reserve_high_pages);
  }
  core->start_keeper();
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

Result<Handle> Heap::allocate(std::size_t bytes) {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "allocate: the heap was shut down");
  if (bytes == 0) return make_error(Errc::invalid_argument, "allocate: 0 bytes");
  if (bytes > detail::kMaxObject)
    return make_error(Errc::invalid_argument, "allocate: " + std::to_string(bytes) + " bytes is beyond any device");
  std::unique_lock lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "allocate: the heap was shut down");
  if (bytes > c.capacity_pages * detail::kPageSize) {
    ++c.ops.failed_allocations;
    return make_error(Errc::out_of_memory, "allocate: " + std::to_string(bytes) + " bytes exceeds the heap's capacity of " +
                                               std::to_string(c.capacity_pages * detail::kPageSize) + " bytes");
  }
  auto h = c.allocate_locked(bytes);
  if (h.ok() || h.code() != Errc::out_of_memory) return h;
  // Out-of-memory is never reported while free pages are held: make room, and retry once.
  c.make_room(lock);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "allocate: the heap was shut down");
  h = c.allocate_locked(bytes);
  if (h.ok()) return h;
  ++c.ops.failed_allocations;
  return c.out_of_memory(bytes, h.error());
}

Status Heap::free(Handle h) {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "free: the heap was shut down");
  std::unique_lock lock(c.mu);
  for (;;) {
    if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "free: the heap was shut down");
    auto looked = c.lookup(h);
    if (!looked.ok()) return looked.error();
    HandleEntry* e = *looked;
    std::uint64_t s = e->state.load(std::memory_order_acquire);
    if (state::pins(s) > 0) return make_error(Errc::pinned, "free: the object is pinned");
    if (s & state::kMoving) {
      lock.unlock();
      c.wait_not_moving(e, h.generation);
      lock.lock();
      continue;
    }
    if (!e->state.compare_exchange_strong(s, state::make(h.generation, 0), std::memory_order_acq_rel)) continue;
    c.live_bytes -= e->size;
    --c.live_objects;
    ++c.ops.free;
    ++c.table_version;
    const std::size_t footprint = c.footprint_of(e->loc);
    if (!e->pending_unpins.empty() && !c.reap_unpins(e)) {
      // The memory stays taken, owned by nobody, until the streams pass their unpins.
      if (e->loc.kind == detail::ObjectKind::slab)
        c.slabs.set_owner(c.slabs.page(c.pool.slot(e->loc.page).owner), e->loc.index, detail::kNoOwner);
      else
        for (std::uint32_t k = 0; k < e->loc.pages; ++k) c.pool.slot(e->loc.page + k).owner = 0;
      c.deferred.push_back({e->loc, footprint, std::move(e->pending_unpins)});
      e->pending_unpins.clear();
    } else {
      c.footprint_bytes -= footprint;
      c.release_location(e->loc);
    }
    c.handles.release(h.index);
    // A large object's pages above the reserve's high watermark go back to the backend now, in
    // this call but without the heap lock: held memory follows live memory, and the freeing
    // thread (which gave back gigabytes) pays for it rather than every later allocation.
    if (e->loc.kind == detail::ObjectKind::large && c.pool.over(c.config.reserve_high_pages)) c.trim_reserve(lock);
    return {};
  }
}

Result<Pin> Heap::pin(Handle h) {
  auto& c = *core_;
  DevicePtr address = 0;
  auto e = c.acquire_pin(h, address);
  if (!e.ok()) return e.error();
  Pin p;
  p.core_ = &c;
  p.handle_ = h;
  p.address_ = address;
  p.size_ = (*e)->size;
  return p;
}

Result<StreamPin> Heap::pin(Handle h, Stream stream) {
  auto& c = *core_;
  DevicePtr address = 0;
  auto e = c.acquire_pin(h, address);
  if (!e.ok()) return e.error();
  StreamPin p;
  p.core_ = &c;
  p.handle_ = h;
  p.stream_ = stream;
  p.address_ = address;
  p.size_ = (*e)->size;
  return p;
}

Result<std::size_t> Heap::size_of(Handle h) const {
  if (core_->shut.load(std::memory_order_acquire)) return make_error(Errc::shut_down, "size_of: the heap was shut down");
  std::lock_guard lock(core_->mu);
  if (core_->shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "size_of: the heap was shut down");
  auto e = core_->lookup(h);
  if (!e.ok()) return e.error();
  return (*e)->size;
}

Status Heap::maintain() {
  auto& c = *core_;
  if (c.shut.load()) return make_error(Errc::shut_down, "maintain: the heap was shut down");
  std::lock_guard lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "maintain: the heap was shut down");
  c.reap_deferred();
  c.retire_empty_slabs();
  return c.pool.balance(c.config.reserve_low_pages, c.config.reserve_high_pages);
}

Result<CompactionRecord> Heap::compact(const CompactRequest& request) {
  auto& c = *core_;
  if (c.shut.load()) return make_error(Errc::shut_down, "compact: the heap was shut down");
  if (!(request.max_occupancy > 0 && request.max_occupancy < 1))
    return make_error(Errc::invalid_argument, "compact: max_occupancy must be within (0, 1)");
  std::lock_guard cl(c.compaction_mu);
  std::unique_lock lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return make_error(Errc::shut_down, "compact: the heap was shut down");
  return c.compact_locked(lock, request);
}

Status Heap::shutdown() {
  auto& c = *core_;
  if (c.shut.load(std::memory_order_acquire)) return {};
  // Lock order: the compaction lock, then the heap lock. Holding both, no cycle runs and no
  // allocate, free or resize is half done; calls arriving now wait for the outcome.
  std::unique_lock cl(c.compaction_mu);
  std::unique_lock lock(c.mu);
  if (c.shut.load(std::memory_order_relaxed)) return {};  // another shutdown got here first
  std::vector<std::uint32_t> killed;
  VALET_TRY(c.decide_shutdown(killed));
  // The keeper takes the heap lock: stop it with the lock released (nothing else can start).
  lock.unlock();
  c.stop_keeper();
  lock.lock();
  // A free still trimming the reserve without the lock finishes first.
  while (c.pool.releasing_pages() > 0) {
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
  return c.tear_down(killed);
}

bool Heap::is_shut_down() const { return core_->shut.load(); }
Backend& Heap::backend() { return *core_->backend; }
const Config& Heap::config() const { return core_->config; }
std::uint32_t Heap::tag() const { return core_->tag; }

}  // namespace valet
