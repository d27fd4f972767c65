// Tail links: which large objects' last pages could host a slab page (open tails) and which do
// (shared tails). The state of shared tails, owned here; the operations that map pages and build
// slab pages on tails are the heap's (tails.cpp, tail_unshare.cpp).
//
// A tail is named by the arena slot of the large object's last page.
//   open    tail -> bytes the object uses on that page (its room: kPageBytes - bytes)
//   shared  tail -> id of the slab page built on that page's physical page
// A tail is never both. Threading: requires the heap lock.
#pragma once

#include <boost/container/flat_map.hpp>
#include <cstdint>
#include <optional>

#include "handle_table.h"
#include "page_pool.h"
#include "slabs.h"

namespace valet::detail {

class TailLinks {
 public:
  // Open tails in slot order: (tail, bytes used). A sorted vector: every large allocation opens
  // one and its free closes it, and a tree's node per tail cost those calls more than moving a
  // few hundred entries does (docs/speed.md, "Session 33").
  using OpenTails = boost::container::flat_map<std::uint32_t, std::uint32_t>;
  // Shared tails in slot order: (tail, slab page). Sorted for the same reason: a hash map's node
  // per share was a malloc under the heap lock on every booking of a run with a shared tail.
  using SharedTails = boost::container::flat_map<std::uint32_t, std::uint32_t>;

  // Offers `tail` to slab pages: the object uses `used` bytes of it.
  void open(std::uint32_t tail, std::uint32_t used) { open_[tail] = used; }
  // The tail is no longer offered (the object is resized or freed).
  void close(std::uint32_t tail) { open_.erase(tail); }
  // A slab page now lives on `tail` (it is no longer open).
  void share(std::uint32_t tail, std::uint32_t slab_page) {
    open_.erase(tail);
    shared_[tail] = slab_page;
  }
  // The slab page left `tail` (or the object let go of it).
  void unshare(std::uint32_t tail) { shared_.erase(tail); }

  std::optional<std::uint32_t> open_bytes(std::uint32_t tail) const;
  std::optional<std::uint32_t> shared_page(std::uint32_t tail) const;
  bool is_shared(std::uint32_t tail) const { return shared_.contains(tail); }
  // The open tail with the most room, if any.
  std::optional<std::uint32_t> roomiest() const;

  bool any_open() const { return !open_.empty(); }
  std::size_t shared_count() const { return shared_.size(); }
  // Open tails in slot order: (tail, bytes used).
  const OpenTails& open_tails() const { return open_; }
  const SharedTails& shared_tails() const { return shared_; }

  // Every shared tail is a large slot whose slab page is live and names it back; every open tail
  // is a large object's own, unshared last page and records the bytes that object uses there.
  Status validate(const PagePool& pool, const Slabs& slabs, const HandleTable& handles) const;

 private:
  friend struct HeapInternals;
  OpenTails open_;
  SharedTails shared_;
};

}  // namespace valet::detail
