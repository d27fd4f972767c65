// Move claims: the lock-free protocol between pins and movers, on one object's state word
// (docs/move-safety.md). Every transition of the word is here; nothing else writes its flags.
//
// The word (HandleEntry::state) carries everything a lock-free pin must see at once:
//   bits 0..23  pin count (host pins and stream pins not yet released)
//   bit  24     LIVE       the entry holds an object
//   bit  25     MOVING     a mover owns the object: nobody else may move, resize or free it, and
//                          pins wait, unless CANCELABLE is set too
//   bit  26     CANCELABLE the mover is copying the object and has not repointed it: a pin takes
//                          the object where it is at once and clears MOVING and CANCELABLE, which
//                          cancels the move (the mover drops its copy)
//   bit  27     ALIASED    meshing is remapping the object's page; its bytes are complete at
//                          `alias` (the same offset of the destination page, which stays mapped):
//                          a pin takes that address at once instead of waiting for the driver
//   bits 32..63 generation of the object (a Handle with another generation is stale)
//
// A mover's life: try_claim (from "live, unpinned, not moving"), then for a cancelable claim
// commit (a pin may have cancelled it: then the object is no longer the mover's), optionally
// publish_alias, and end. A cancelable claim that is given up without a repoint is dropped.
// Pins: pin() waits while a non-cancelable, non-aliased move is under way, cancels a cancelable
// one, and takes the alias of an aliased one. Shutdown claims every object like a move and then
// kills it.
#pragma once

#include <atomic>
#include <cstdint>

#include "valet/result.h"
#include "valet/types.h"

namespace valet::detail {

namespace state {
inline constexpr std::uint64_t kPinMask = (1u << 24) - 1;
inline constexpr std::uint64_t kLive = 1ull << 24;
inline constexpr std::uint64_t kMoving = 1ull << 25;
inline constexpr std::uint64_t kCancelable = 1ull << 26;
inline constexpr std::uint64_t kAliased = 1ull << 27;
inline std::uint32_t generation(std::uint64_t s) { return std::uint32_t(s >> 32); }
inline std::uint32_t pins(std::uint64_t s) { return std::uint32_t(s & kPinMask); }
inline std::uint64_t make(std::uint32_t gen, std::uint64_t flags) { return (std::uint64_t(gen) << 32) | flags; }
inline bool live(std::uint64_t s) { return (s & kLive) != 0; }
}  // namespace state

using StateWord = std::atomic<std::uint64_t>;

namespace claims {

// Marks a live, unpinned, not moving object MOVING (and CANCELABLE: a pin may cancel the move
// until commit). false (nothing changed) when it is pinned, moving or not live. A stream-ordered
// unpin still pending is the caller's to check first (HeapCore::try_begin_move).
bool try_claim(StateWord& w, bool cancelable);
// Ends the cancelable phase: from here pins wait until end. false when a pin cancelled the move:
// the object is no longer the caller's (do not end it).
bool commit(StateWord& w);
// After commit: the object's complete copy is at `alias`, which stays mapped; until end a pin
// takes that address instead of waiting. `alias_slot` is the entry's alias field.
void publish_alias(StateWord& w, std::atomic<DevicePtr>& alias_slot, DevicePtr alias);
// Gives up a cancelable claim that no pin cancelled (nothing was repointed).
void drop(StateWord& w);
// Ends a committed (or non-cancelable) claim: pins waiting on it go on.
void end(StateWord& w);

// Waits while the object of generation `gen` is MOVING (for a pin: MOVING and neither CANCELABLE
// nor ALIASED); returns the state that ended the wait (or a stale one). Yields for up to 200 us,
// then sleeps on the word.
std::uint64_t wait_not_moving(const StateWord& w, std::uint32_t gen, bool until_cancelable = false);

// Whether a pin of an object in state `s` would wait (MOVING, neither CANCELABLE nor ALIASED: a
// committed move, or a pending object's mapping).
inline bool waits_for_move(std::uint64_t s) {
  return (s & state::kMoving) && !(s & (state::kCancelable | state::kAliased));
}

// A pin's transition: waits out a move it must not overtake, cancels a cancelable one, adds one
// pin. `waited_ns` receives how long it waited. On success `before` is the word before the pin
// (ALIASED in it: use the alias address). Errors: stale_handle (freed meanwhile),
// invalid_state (pin count full).
Status add_pin(StateWord& w, std::uint32_t gen, std::uint64_t& before, std::uint64_t& waited_ns);
inline void remove_pin(StateWord& w) { w.fetch_sub(1, std::memory_order_release); }

// Shutdown: claims a live, unpinned, settled object (not cancelable); false when it is pinned or
// moving. `kill` then ends the object (not live, same generation) and wakes its waiters.
bool claim_for_shutdown(StateWord& w);
void kill(StateWord& w);

// Makes a free entry live with the next generation; returns the generation.
std::uint32_t make_live(StateWord& w);
// The same, claimed as a move (not cancelable) in the same store: a pending object made without
// the heap lock, which no mover may claim in between (HeapCore::allocate_unlocked_miss).
std::uint32_t make_live_claimed(StateWord& w);
// Ends a live, unpinned, settled object of generation `gen` (a free). false when the word
// changed meanwhile (the caller looks again).
bool try_free(StateWord& w, std::uint64_t expected, std::uint32_t gen);
// Undoes a try_free that found the object was not to be freed there (a thread cache's fast path
// hands the free to the locked path): `was` is the word try_free replaced. Only the caller can
// have changed the word since (a free entry takes no pin and no claim).
void undo_free(StateWord& w, std::uint64_t was);

}  // namespace claims

}  // namespace valet::detail
