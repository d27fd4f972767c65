// Prepared tail aliases: a compaction cycle that builds slab pages on large objects' tails (to
// mesh onto them, or to evacuate onto them) maps each tail's alias, the slab page's own slot,
// before it plans and without the heap lock. Until session 30 slab_on_tail_at mapped it while
// the planner ran, under the lock (a map and an access grant, ~40-50 µs on an H100, several per
// cycle): every thread that wanted the lock meanwhile waited for them (docs/speed.md,
// "Session 30"). The planners run dry first to name the tails; what the real plan does not take
// is discarded at the cycle's end, its unmap queued for the keeper, or kept as a standby. With
// background misses and Config::standby_tail_aliases, the keeper keeps standby aliases between
// cycles (heap_core.h, keep_standby_alias).
#include <algorithm>

#include "heap_core.h"

namespace valet::detail {

void HeapCore::prepare_tail_aliases(std::unique_lock<HeapMutex>& lock, bool mesh, bool evacuate,
                                    std::uint64_t pages_left, std::uint64_t bytes_left) {
  mu.assert_held();
  if (!config.share_tails || !keeper.running() || !tails.any_open()) return;
  tail_aliases_prepared = true;  // from here the planners map nothing under the lock
  std::vector<std::uint32_t> want;
  std::vector<MeshPair> no_pairs;
  std::vector<SlabPage*> no_sources;
  // One budget (the arguments are this function's copies): what the mesh onto tails would
  // spend is not the evacuation's. The mesh of ordinary pairs between them is not counted, so
  // the evacuation's dry run may name a few tails its real run finds no budget for.
  if (mesh) pair_with_tails(no_pairs, pages_left, bytes_left, &want);
  if (evacuate) choose_tail_sources(no_sources, pages_left, bytes_left, &want);
  std::vector<PagePool::TailAlias> aliases;
  for (std::uint32_t tail : want) {
    if (prepared_aliases.contains(tail)) continue;
    auto a = pool.begin_tail_alias(tail);
    if (!a) continue;  // a chunk's page, or no free slot: the planners pass the tail over
    aliases.push_back(*a);
  }
  if (aliases.empty()) return;
  lock.unlock();
  for (auto& a : aliases) pool.tail_alias_calls(a);
  lock.lock();
  for (auto& a : aliases)
    if (pool.finish_tail_alias(a) && !prepared_aliases.try_emplace(a.tail, a.slot).second) {
      pool.discard_tail_alias(a.slot);  // one prepared meanwhile (a standby, a small object's) serves
      after_release();
    }
  drain_caches();  // what the threads cached meanwhile cannot move (compact_locked drained before)
}

void HeapCore::keep_standby_alias(std::unique_lock<HeapMutex>& lock) {
  mu.assert_held();
  if (!keeps_standbys() || tail_aliases_prepared) return;
  // Standbys whose tail closed or changed its page go first. One whose tail is still open maps
  // that live object's page and holds no memory, so it stays when the reserve recovers
  // (discarding and preparing again at every swing of the reserve, or after every compaction
  // cycle, kept the keeper and the driver busy: docs/speed.md, "Session 38"). New ones only
  // while slab pages may find the reserve empty: otherwise they take reserve pages, and
  // standbys made for tails that come and go would only keep the driver busy.
  for (std::uint32_t tail : stale_standbys()) discard_standby_alias(tail);
  const bool wanted = pool.reserve_pages() <= config.reserve_low_pages;
  if (!wanted || prepared_aliases.size() >= config.standby_tail_aliases) return;
  // The roomiest open tails without one (a burst of new slab pages takes several).
  std::vector<std::pair<std::uint32_t, std::uint32_t>> roomiest;  // (bytes used, tail)
  for (const auto& [tail, used] : tails.open_tails())
    if (!prepared_aliases.contains(tail)) roomiest.push_back({used, tail});
  const std::size_t want = std::min(roomiest.size(), config.standby_tail_aliases - prepared_aliases.size());
  std::partial_sort(roomiest.begin(), roomiest.begin() + std::ptrdiff_t(want), roomiest.end());
  std::vector<PagePool::TailAlias> aliases;
  for (std::size_t k = 0; k < want; ++k)
    if (auto a = pool.begin_tail_alias(roomiest[k].second)) aliases.push_back(*a);
  if (aliases.empty()) return;
  lock.unlock();
  for (auto& a : aliases) pool.tail_alias_calls(a);
  lock.lock();
  for (auto& a : aliases) {
    if (!pool.finish_tail_alias(a)) continue;
    if (prepared_aliases.contains(a.tail)) {  // a cycle that began meanwhile prepared the same tail
      pool.discard_tail_alias(a.slot);
      after_release();
      continue;
    }
    prepared_aliases[a.tail] = a.slot;  // a cycle that began meanwhile discards it at its end
  }
}

void HeapCore::discard_standby_alias(std::uint32_t tail) {
  mu.assert_held();
  if (tail_aliases_prepared) return;  // a cycle's: it discards what it did not use
  const auto it = prepared_aliases.find(tail);
  if (it == prepared_aliases.end()) return;
  pool.discard_tail_alias(it->second);
  prepared_aliases.erase(it);
  after_release();  // the keeper unmaps it
}

bool HeapCore::keeps_standbys() const {
  return config.share_tails && misses.running() && config.standby_tail_aliases > 0;
}

bool HeapCore::standby_valid(std::uint32_t tail, std::uint32_t slot) const {
  return tails.open_bytes(tail) && pool.slot(slot).phys == pool.slot(tail).phys;
}

std::vector<std::uint32_t> HeapCore::stale_standbys() const {
  std::vector<std::uint32_t> stale;
  for (const auto& [tail, slot] : prepared_aliases)
    if (!standby_valid(tail, slot)) stale.push_back(tail);
  return stale;
}

void HeapCore::discard_tail_aliases(bool keep_standbys) {
  mu.assert_held();
  tail_aliases_prepared = false;
  if (prepared_aliases.empty()) return;
  // What a cycle did not use stays as standbys, up to their number, where they are kept at all:
  // the roomiest of the tails still open on the same page.
  std::vector<std::pair<std::uint32_t, std::uint32_t>> kept;  // (bytes used, tail)
  if (keep_standbys && keeps_standbys()) {
    for (const auto& [tail, slot] : prepared_aliases)
      if (standby_valid(tail, slot)) kept.push_back({*tails.open_bytes(tail), tail});
    const std::size_t keep = std::min<std::size_t>(kept.size(), config.standby_tail_aliases);
    std::partial_sort(kept.begin(), kept.begin() + std::ptrdiff_t(keep), kept.end());
    kept.resize(keep);
  }
  bool discarded = false;
  for (auto it = prepared_aliases.begin(); it != prepared_aliases.end();) {
    const std::uint32_t tail = it->first;
    if (std::any_of(kept.begin(), kept.end(), [&](const auto& k) { return k.second == tail; })) {
      ++it;
      continue;
    }
    pool.discard_tail_alias(it->second);
    it = prepared_aliases.erase(it);
    discarded = true;
  }
  if (discarded) after_release();  // the keeper unmaps them
}

}  // namespace valet::detail
