// The copying region's side of the heap (docs/copying_placement.md; Config::copy_region_min_bytes):
// its range, placement with no call, the keeper's growth and trims, compaction's rounds of
// copies, and its part of validate. CopyRegion (copy_region.h) decides places and moves; this
// file makes the calls and the copies and keeps the handles in step.
//
// Move safety is evacuation's (compaction.cpp, docs/move-safety.md): each move's object is
// claimed MOVING | CANCELABLE before the copy, the copy runs on the work stream without the heap
// lock, and only a move no pin cancelled is committed (the handle repointed after its bytes are
// in place). The region's chunks above its top are the only ones mapped or unmapped, and no
// object or move destination lies there.
#include "heap_core.h"

namespace valet::detail {

namespace {
std::uint64_t pages_per_chunk(const CopyRegion& book) { return book.chunk() / kPageSize; }
// A book operation whose preconditions the caller checked: its status is asserted, the call made
// in every build.
void region_must(const Status& s) {
  VALET_ASSERT(s.ok());
  (void)s;
}
}  // namespace

Status HeapCore::create_region() {
  if (config.copy_region_min_bytes == 0) return {};
  const std::uint64_t chunk = config.copy_region_chunk_bytes;
  const std::uint64_t capacity = std::uint64_t(capacity_pages) * kPageSize / chunk * chunk;
  auto book = CopyRegion::create({capacity, chunk, kRegionAlign});
  if (!book.ok()) return book.error();
  auto va = backend->reserve(capacity);
  if (!va.ok()) return va.error();
  region.base = *va;
  region.reserved = capacity;
  region.book.emplace(std::move(*book));
  return {};
}

Status HeapCore::destroy_region() {
  if (!region_on()) return {};
  Status first;
  const std::uint64_t chunk = region.book->chunk();
  for (std::size_t k = region.chunks.size(); k-- > 0;) {
    const Status unmapped = backend->unmap(region.base + k * chunk, chunk);
    const Status released = backend->release_page(region.chunks[k]);
    if (first.ok() && !unmapped.ok()) first = unmapped;
    if (first.ok() && !released.ok()) first = released;
    pool.unlend(pages_per_chunk(*region.book));
  }
  region.chunks.clear();
  const Status unreserved = backend->unreserve(region.base, region.reserved);
  if (first.ok() && !unreserved.ok()) first = unreserved;
  region.book.reset();
  return first;
}

std::optional<Location> HeapCore::place_in_region(std::unique_lock<HeapMutex>& lock, std::size_t bytes) {
  mu.assert_held();
  CopyRegion& book = *region.book;
  auto at = book.place(bytes, kNoOwner);
  if (!at && !keeper.running()) {
    // Without the keeper's thread this thread grows the region, its calls without the lock (as
    // a page window's miss maps its own pages then).
    region.room_wanted = std::max(region.room_wanted, book.footprint(bytes));
    keep_region(lock);
    at = book.place(bytes, kNoOwner);
    region.room_wanted = 0;
  }
  // Room for the next ones: the keeper maps the headroom again (and trims what frees left).
  const std::uint64_t headroom = std::uint64_t(config.copy_region_headroom_chunks) * book.chunk();
  if (book.mapped() - book.top() < headroom) keeper.nudge();
  if (!at) {
    ++region.fell_back;
    return std::nullopt;
  }
  ++region.placed;
  return Location{ObjectKind::region, 0, std::uint32_t(*at / kRegionAlign), 0};
}

void HeapCore::keep_region(std::unique_lock<HeapMutex>& lock) {
  mu.assert_held();
  if (!region_on() || region.calls_in_flight || shut.load(std::memory_order_relaxed)) return;
  CopyRegion& book = *region.book;
  const std::uint64_t chunk = book.chunk();
  const std::uint64_t pages = pages_per_chunk(book);
  const std::uint64_t headroom =
      std::max(std::uint64_t(config.copy_region_headroom_chunks) * chunk, region.room_wanted);
  const std::uint64_t want = std::min(book.capacity(), (book.top() + headroom + chunk - 1) / chunk * chunk);
  if (book.mapped() < want) {
    // Growth: chunks created, mapped and granted above the top, the calls without the lock.
    const std::size_t n = std::min<std::size_t>((want - book.mapped()) / chunk, pool.creatable_pages() / pages);
    if (n == 0 || !pool.lend(n * pages)) return;
    region.calls_in_flight = true;
    const DevicePtr at = region.base + book.mapped();
    std::vector<PhysicalPage> made;
    lock.unlock();
    for (std::size_t k = 0; k < n; ++k) {
      auto p = backend->create_chunk(pages);
      if (!p.ok()) break;
      if (!backend->map(at + k * chunk, *p).ok()) {
        (void)backend->release_page(*p);
        break;
      }
      made.push_back(*p);
    }
    if (!made.empty() && !backend->set_access(at, made.size() * chunk).ok()) {
      for (std::size_t k = 0; k < made.size(); ++k) {
        (void)backend->unmap(at + k * chunk, chunk);
        (void)backend->release_page(made[k]);
      }
      made.clear();
    }
    lock.lock();
    region.calls_in_flight = false;
    pool.unlend((n - made.size()) * pages);
    if (made.empty()) return;
    region.chunks.insert(region.chunks.end(), made.begin(), made.end());
    region_must(book.grow(made.size() * chunk));
    region.chunks_mapped += made.size();
    return;
  }
  trim_region(lock, headroom, config.copy_region_hysteresis_chunks);
}

void HeapCore::trim_region(std::unique_lock<HeapMutex>& lock, std::uint64_t headroom, std::uint32_t hysteresis) {
  mu.assert_held();
  if (!region_on() || region.calls_in_flight) return;
  CopyRegion& book = *region.book;
  const std::uint64_t chunk = book.chunk();
  const std::uint64_t pages = pages_per_chunk(book);
  // The surplus leaves the book first (nothing is placed there from now), then is unmapped and
  // released without the lock.
  const std::uint64_t extra = book.surplus(headroom, hysteresis);
  if (extra == 0) return;
  region_must(book.shrink(extra));
  const std::size_t n = extra / chunk;
  const auto first_gone = region.chunks.end() - std::ptrdiff_t(n);
  std::vector<PhysicalPage> gone(first_gone, region.chunks.end());
  region.chunks.erase(first_gone, region.chunks.end());
  const DevicePtr at = region.base + book.mapped();
  region.calls_in_flight = true;
  lock.unlock();
  const Status unmapped = backend->unmap(at, extra);
  if (unmapped.ok())
    for (PhysicalPage p : gone) (void)backend->release_page(p);
  lock.lock();
  region.calls_in_flight = false;
  if (!unmapped.ok()) {  // still mapped: the chunks stay the region's
    region.chunks.insert(region.chunks.end(), gone.begin(), gone.end());
    region_must(book.grow(extra));
    return;
  }
  pool.unlend(n * pages);
  region.chunks_unmapped += n;
}

Status HeapCore::compact_region(std::unique_lock<HeapMutex>& lock, std::uint64_t& bytes_left, bool always,
                                CompactionRecord& rec) {
  mu.assert_held();
  if (!region_on()) return {};
  CopyRegion& book = *region.book;
  if (!always && double(book.hole_bytes()) <= config.copy_region_hole_high * double(book.mapped())) return {};
  // Peeked, not claimed: the claims are taken once a round is planned (a round's object found
  // pinned then has its move cancelled).
  const auto may_move = [this](std::uint32_t owner) {
    const HandleEntry* e = handles.get(owner);
    const std::uint64_t s = e->state.load(std::memory_order_acquire);
    return !e->fixed && state::live(s) && !(s & state::kMoving) && state::pins(s) == 0 && e->pending_unpins.empty();
  };
  Status st;
  while (bytes_left > 0 && !shut.load(std::memory_order_relaxed)) {
    const auto target = std::uint64_t(config.copy_region_hole_low * double(book.mapped()));
    if (book.hole_bytes() <= target) break;
    // The request's byte budget is a bound (CompactRequest::max_bytes): a round's last move may
    // pass the round's own budget, so what passes the cycle's is given back before anything is
    // claimed. (The policy engine gives a region cycle at least a chunk's worth.)
    const CopyRegion::RoundLimits limits{target, std::min<std::uint64_t>(bytes_left, move_batch_bytes), 200, bytes_left};
    CopyRegion::Round round = book.plan_round(limits, may_move);
    {
      std::uint64_t planned = 0;
      std::size_t keep = 0;
      while (keep < round.moves.size() && planned + round.moves[keep].bytes <= bytes_left) planned += round.moves[keep++].bytes;
      for (std::size_t k = round.moves.size(); k-- > keep;) region_must(book.cancel(round.moves[k]));
      round.moves.resize(keep);
    }
    ++region.rounds;
    if (round.growth_wanted) {  // a run goes to the top once the keeper has mapped room for it
      region.room_wanted = book.mapped() + round.growth_wanted - book.top();
      keeper.nudge();
      break;
    }
    if (round.moves.empty()) break;
    region.room_wanted = 0;  // used (or not needed): the keeper keeps its headroom again
    std::vector<std::pair<CopyRegion::Move, HandleEntry*>> claimed;
    CopyBatch batch;
    for (const CopyRegion::Move& m : round.moves) {
      HandleEntry* e = handles.get(m.owner);
      if (!try_begin_move(e, /*cancelable=*/true)) {
        region_must(book.cancel(m));
        ++rec.objects_skipped;
        ++region.moves_cancelled;
        continue;
      }
      batch.copies.push_back({region.base + m.from, region.base + m.to, e->size()});
      claimed.emplace_back(m, e);
    }
    if (claimed.empty()) break;  // every object of the round was taken meanwhile: next cycle
    // The copy runs without the heap lock; a pin meanwhile takes its object at the old place and
    // cancels that move (the object may then even be freed: the book frees its source at once).
    const Status copied = mover.run(lock, batch);
    bool repointed = false;
    for (const auto& [m, e] : claimed) bytes_left -= std::min(bytes_left, m.bytes);  // copied, kept or not
    for (auto& [m, e] : claimed) {
      if (!copied.ok()) drop_claim(e);
      if (!copied.ok() || !commit_move(e)) {
        region_must(book.cancel(m));
        if (copied.ok()) ++rec.objects_skipped, ++region.moves_cancelled;
        continue;
      }
      e->loc = Location{ObjectKind::region, 0, std::uint32_t(m.to / kRegionAlign), 0};
      e->address.store(region.base + m.to, std::memory_order_relaxed);
      region_must(book.commit(m));
      end_move(e);  // release: a pin that follows sees the new address
      rec.bytes_moved += e->size();
      ++rec.objects_moved;
      ++region.moves;
      region.bytes_moved += m.bytes;
      repointed = true;
    }
    if (!copied.ok()) {
      st = copied;
      break;
    }
    if (!repointed) break;  // pins cancelled every move: those objects wait for the next cycle
    table.changed();
  }
  // The top may have fallen: the keeper trims what is past the hysteresis.
  if (book.surplus(std::max(std::uint64_t(config.copy_region_headroom_chunks) * book.chunk(), region.room_wanted),
                   config.copy_region_hysteresis_chunks) > 0)
    keeper.nudge();
  return st;
}

Status HeapCore::validate_region() const {
  if (!region_on()) return {};
  const CopyRegion& book = *region.book;
  VALET_TRY(book.validate());
  if (region.chunks.size() * book.chunk() != book.mapped())
    return make_error(Errc::internal, "validate: the region maps " + std::to_string(region.chunks.size()) +
                                          " chunks for " + std::to_string(book.mapped()) + " bytes");
  if (pool.lent_pages() != region.chunks.size() * pages_per_chunk(book) && !region.calls_in_flight)
    return make_error(Errc::internal, "validate: the pool lent " + std::to_string(pool.lent_pages()) +
                                          " pages to a region of " + std::to_string(region.chunks.size()) + " chunks");
  return {};
}

}  // namespace valet::detail
