#include "reserve_keeper.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "clock.h"

namespace valet::detail {

namespace {
// Pages one batch moves at most: bounds the work a stop waits for, and the bookkeeping under
// the lock at either end of a batch.
constexpr std::uint32_t kBatchPages = 64;
// The keeper trims in smaller batches: the pages of a batch in flight are still mapped and out of
// every allocation's reach, and the keeper's trims run while allocations go on (the freeing
// thread's own trims end before its free returns).
constexpr std::uint32_t kKeeperTrimPages = 8;
// The keeper's periodic turn, when nothing woke it.
constexpr std::chrono::milliseconds kPeriod{20};
// Batches per wake: the keeper yields the lock between wakes.
constexpr int kBatchesPerWake = 64;
std::size_t pages_of(std::uint64_t bytes) { return std::size_t((bytes + kPageBytes - 1) / kPageBytes); }
// Set on a keeper's own thread (its loop), where relock counts waits: not thread_, which start()
// assigns while the thread may already run.
thread_local bool t_keeper_thread = false;
}  // namespace

ReserveKeeper::ReserveKeeper(HeapMutex& mu, PagePool& pool, const Config& config, const std::int64_t& live_bytes,
                             Demand& demand, std::function<void()> on_wake)
    : mu_(mu),
      pool_(pool),
      config_(config),
      live_bytes_(live_bytes),
      demand_(demand),
      on_wake_(std::move(on_wake)),
      reserve_seen_(std::max<std::uint64_t>(1, std::uint64_t(config.reserve_hold_ms) * 1'000'000)),
      reserve_seen_takes_(std::max<std::uint64_t>(1, config.reserve_hold_allocs)) {}

bool ReserveKeeper::holds() const {
  return config_.background_misses && (config_.reserve_hold_ms > 0 || config_.reserve_hold_allocs > 0);
}

std::size_t ReserveKeeper::untouched_surplus(std::uint64_t now, std::size_t limit) {
  if (!holds()) return ~std::size_t{0};
  note_reserve(now);
  // The lowest the reserve was over the hold, less what the keeper's trims took out since: an
  // older reading below the pages trimmed since means none of today's surplus was there then.
  // With both clocks the hold ends at whichever comes first: the shorter window's (higher) low.
  std::uint64_t seen = 0;
  if (config_.reserve_hold_ms > 0) seen = reserve_seen_.get(now);
  if (config_.reserve_hold_allocs > 0) seen = std::max(seen, reserve_seen_takes_.get(takes_));
  const std::uint64_t low = seen > hold_trimmed_ ? seen - hold_trimmed_ : 0;
  return low > limit ? std::size_t(low - limit) : 0;
}

void ReserveKeeper::start() {
  if (!config_.background_reserve || thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = false;
    // Alias slots that frees and compaction let go of are the thread's to unmap from now on.
    pool_.set_deferred_drops(true);
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
  if (wanted_) return;
  wanted_ = true;
  wake_after_unlock(cv_);
}

ReserveTargets ReserveKeeper::targets() {
  mu_.assert_held();
  const std::uint64_t now = now_ns();
  const std::size_t used = pool_.used_pages();
  const auto by_live = std::size_t(config_.reserve_fraction * double(pages_of(std::uint64_t(std::max<std::int64_t>(0, live_bytes_)))));
  // What keeps mapped memory within ratio x the recent peak of the (ordinary) live bytes: as
  // live memory falls below its peak, the reserve keeps what the next allocations will likely
  // take back; near the peak, nothing beyond the watermark, whatever the pages in use waste.
  const std::size_t bound = peak_bound_pages(now, 0);
  const std::size_t by_peak = bound > used ? bound - used : 0;
  ReserveTargets t;
  t.limit = std::max(config_.reserve_high_pages, std::min(by_live, by_peak));
  t.ceiling = std::max(config_.reserve_high_pages, by_peak);  // >= limit
  // Half the limit at most: the other half keeps freed runs for reuse.
  const std::size_t wanted = std::max<std::size_t>(config_.reserve_low_pages, 2 * demand_.large_pages.get(now));
  t.frontier = std::uint32_t(std::min(std::max<std::size_t>(t.limit / 2, config_.reserve_low_pages), wanted));
  const std::size_t reserve = pool_.reserve_pages();
  // Config::keeper_creates_ahead: with background misses the misses may create their own pages
  // on the mapper's thread instead; the keeper then creates up to the low watermark only, so
  // that a slab page finds a mapped page and opens no tail's alias on the caller's thread (on the
  // H100 without it, 13 of h11's allocations made calls, the slowest 1.3 ms).
  const bool creates = config_.keeper_creates_ahead || !config_.background_misses;
  const std::size_t create_to = creates ? t.limit : std::min(t.limit, config_.reserve_low_pages);
  t.may_create = create_to > reserve ? create_to - reserve : 0;
  return t;
}

std::size_t ReserveKeeper::peak_bound_pages(std::uint64_t now, std::uint64_t live_floor) const {
  mu_.assert_held();
  return std::size_t(config_.reserve_peak_ratio * double(pages_of(std::max(demand_.live_peak.get(now), live_floor))));
}

void ReserveKeeper::want_refill() {
  mu_.assert_held();
  if (!thread_.joinable()) return;
  if (holds()) {
    ++takes_;
    note_reserve(now_ns());  // an allocation took reserve pages
  }
  if (pool_.reserve_pages() < config_.reserve_low_pages || pool_.longest_reserve_run() < targets().frontier) wake();
}

void ReserveKeeper::after_release() {
  mu_.assert_held();
  if (thread_.joinable()) {
    if (pool_.reserve_pages() > targets().limit) {
      wake();
    } else if (pool_.queued_drops() > 0 && !drops_wanted_) {
      // Only the drops: the thread does not top the reserve up on this wake (that waits for
      // an allocation's want_refill or the periodic wake, as before drops were deferred).
      drops_wanted_ = true;
      wake_after_unlock(cv_);
    }
  } else if (pool_.reserve_pages() > config_.reserve_high_pages) {
    (void)balance();
  }
}

Status ReserveKeeper::balance() { return pool_.balance(config_.reserve_low_pages, config_.reserve_high_pages); }

bool ReserveKeeper::trim_to(std::unique_lock<HeapMutex>& lock, std::size_t limit, std::uint32_t batch_pages,
                            std::size_t chunk_pages, std::size_t* released) {
  auto batch = pool_.begin_release(limit, batch_pages, true, chunk_pages);
  if (batch.empty()) {
    PagePool::retire_release(batch);
    return false;
  }
  if (released) {
    *released = batch.idle;
    for (const auto& run : batch.runs)
      if (!run.chunk) *released += run.length;  // a free chunk is outside the reserve's pages
  }
  lock.unlock();
  pool_.release_calls(batch);
  relock(lock);
  const bool ok = pool_.finish_release(batch).ok();
  PagePool::retire_release(batch);
  return ok;
}

bool ReserveKeeper::trims_on_freeing_thread(std::size_t returned_pages) const {
  mu_.assert_held();
  return !(thread_.joinable() && config_.background_misses &&
           Demand::ordinary(returned_pages, pool_.demand_pages() + returned_pages));
}

bool ReserveKeeper::trim_surplus(std::unique_lock<HeapMutex>& lock, std::size_t returned_pages) {
  mu_.assert_held();
  const bool keeper = thread_.joinable();
  if (!trims_on_freeing_thread(returned_pages)) {
    // With a keeper and background misses an ordinary free makes no driver call: the surplus it
    // leaves in the reserve, and a chunk it emptied, are the keeper's, woken now. A free adds no
    // mapped memory (its pages were mapped before it), and a page is created only where the
    // reserve has none to give and after the free chunks waiting are released (PagePool::
    // begin_place), so the keeper's lag delays memory going back and does not raise the peak
    // beyond what its batch in flight holds. Until session 29 a free trimmed what lay beyond
    // the peak bound itself, and released its emptied chunk: most of the driver calls left on
    // the allocation path (docs/speed.md, "Session 29"). With synchronous misses the allocation
    // path calls the driver at every miss anyway, and there the free's trim is what keeps mean
    // fragmentation within its target on the host (h11, p23: 0.069 -> 0.071 without it).
    if (pool_.reserve_pages() > targets().limit || free_chunk_pages_due() > 0) wake();
    return false;
  }
  // Otherwise the freeing thread gives back its emptied chunk and the reserve beyond the peak
  // bound, as before session 29. For a return of no ordinary demand (a probe, a model's weights:
  // more than an eighth of the pages in use) that holds with background misses too: the pages
  // of a release batch stay mapped until its calls end, so the keeper's release of such a
  // return would let the next allocations create as many pages beside it (on the host, t1's
  // peak reached 1.42x the live peak). Without a keeper, every free trims down to the high
  // watermark.
  const std::size_t to = keeper ? targets().ceiling : config_.reserve_high_pages;
  if (pool_.free_chunk_waits()) (void)trim_to(lock, ~std::size_t{0} / 2, kBatchPages, PagePool::kAllFreeChunks);
  bool trimmed = false;
  while (!stop_ && pool_.reserve_pages() > to) {
    if (!trim_to(lock, to, kBatchPages, PagePool::kAllFreeChunks)) break;
    trimmed = true;
  }
  if (keeper) wake();  // the rest, down to the limit
  return trimmed;
}

std::size_t ReserveKeeper::free_chunk_pages_due() const {
  mu_.assert_held();
  if (!pool_.free_chunk_waits()) return 0;
  const std::size_t promised = pool_.promised_pages();
  if (promised == 0) return PagePool::kAllFreeChunks;
  const std::size_t held = pool_.whole_free_chunk_pages();
  return held > promised ? held - promised : 0;
}

void ReserveKeeper::chunks_for_misses_done() {
  mu_.assert_held();
  if (thread_.joinable() && free_chunk_pages_due() > 0) wake();
}

void ReserveKeeper::relock(std::unique_lock<HeapMutex>& lock, bool after_yield) {
  if (!t_keeper_thread) {  // a freeing thread's own trim
    lock.lock();
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  lock.lock();
  const auto ns = std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count());
  ++(after_yield ? waits_.yields : waits_.batches);
  waits_.wait_ns += ns;
  waits_.longest_ns = std::max(waits_.longest_ns, ns);
  if (ns > 1'000'000) ++waits_.over_1ms;
}

bool ReserveKeeper::provision(std::unique_lock<HeapMutex>& lock, const ReserveTargets& t) {
  auto batch = pool_.begin_provision(t.frontier, t.may_create, kBatchPages);
  if (batch.empty()) return false;
  lock.unlock();
  pool_.provision_calls(batch);
  relock(lock);
  const bool whole = batch.mapped == batch.length;
  pool_.finish_provision(batch);
  return whole;
}

bool ReserveKeeper::drop_aliases(std::unique_lock<HeapMutex>& lock) {
  auto batch = pool_.begin_drops();
  if (batch.empty()) return false;
  lock.unlock();
  pool_.drop_calls(batch);
  relock(lock);
  pool_.finish_drops(batch);
  return true;
}

void ReserveKeeper::keep(std::unique_lock<HeapMutex>& lock) {
  if (paused_ > 0) return;  // resume() wakes the thread again
  for (int round = 0; round < kBatchesPerWake && !stop_ && paused_ == 0; ++round) {
    const ReserveTargets t = targets();
    // Hysteresis: a free that returns a few pages over the limit does not start a trim at once.
    const std::size_t slack = std::max<std::size_t>(2, t.limit / 8);
    // The surplus over the limit goes once it sat unused for the hold; beyond the ceiling at once.
    const std::size_t reserve = pool_.reserve_pages();
    const std::size_t untouched = untouched_surplus(now_ns(), t.limit);
    const std::size_t keep_to = std::min(t.ceiling, std::max(t.limit, reserve > untouched ? reserve - untouched : 0));
    const std::size_t chunks = free_chunk_pages_due();
    if (reserve > keep_to + slack || pool_.idle_pages() > 0 || chunks > 0) {
      std::size_t released = 0;
      if (!trim_to(lock, keep_to, kKeeperTrimPages, chunks, &released)) return;
      hold_trimmed_ += released;
    } else if (pool_.longest_reserve_run() < t.frontier) {
      // Pages it would create come after as many free chunks go back (held for queued misses):
      // mapped memory never holds both.
      if (t.may_create > 0 && pool_.free_chunk_waits() && !trim_to(lock, reserve, 0, t.may_create)) return;
      if (!provision(lock, t)) return;
    } else {
      return;
    }
    yield(lock);  // a caller waiting for the lock goes before the next batch
  }
}

void ReserveKeeper::loop() {
  t_keeper_thread = true;
  const ScopedLockRole role(LockRole::keeper);
  PagePool::set_defers_to_callers(config_.keeper_defers);  // callers first at the driver (page_pool.h)
  std::unique_lock lock(mu_);
  auto kept = std::chrono::steady_clock::now();
  while (!stop_) {
    const bool woken = wait_with_heap_lock_for(cv_, lock, kPeriod, [&] { return stop_ || wanted_ || drops_wanted_; });
    if (stop_) break;
    // A wake for drops alone does not put the periodic turn off.
    const bool drops_only = woken && !wanted_ && std::chrono::steady_clock::now() - kept < kPeriod;
    wanted_ = drops_wanted_ = false;
    if (drops_only) {
      if (paused_ == 0) (void)drop_aliases(lock);
      continue;
    }
    kept = std::chrono::steady_clock::now();
    if (on_wake_) on_wake_();
    keep(lock);
    yield(lock);
    if (after_turn_ && paused_ == 0 && !stop_) after_turn_(lock);
    yield(lock);
    // The drops after the reserve's work: they hold no memory of their own (the pages stay
    // mapped by their owners), while a trim that waits keeps mapped memory above its budget.
    // A slot still held by queued work waits for the next wake.
    if (paused_ == 0) (void)drop_aliases(lock);
  }
  // From here frees drop aliases themselves; the queued ones go now (what queued work still
  // holds stays queued: the pool's destroy() unmaps it at the end).
  pool_.set_deferred_drops(false);
  (void)drop_aliases(lock);
}

Status ReserveKeeper::validate() const {
  if (config_.reserve_low_pages > config_.reserve_high_pages)
    return make_error(Errc::internal, "validate: the reserve's low watermark is above its high one");
  if (!(config_.reserve_fraction >= 0) || !(config_.reserve_peak_ratio >= 1))
    return make_error(Errc::internal, "validate: the reserve's budget is out of range");
  if (!config_.background_reserve && thread_.joinable())
    return make_error(Errc::internal, "validate: a keeper thread runs although the config asks for none");
  return {};
}

}  // namespace valet::detail
