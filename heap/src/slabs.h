// Slab pages: a 2 MiB page cut into equal slots of one size class, with an occupancy bitmap and
// the handle index of each slot's object (compaction walks it to find what to move).
//
// Meshing (heap/src/mesh.cpp) can fold other pages of the class into a page: their objects keep
// their virtual addresses, which are then "aliases", other virtual slots mapping this page's
// physical page. The bitmap then covers every sharer at once (a slot is free only if it is free
// in all of them), new objects are placed through the page's own slot, and an alias is unmapped
// once no object is addressed through it any more.
//
// Half of the pages fill from the lowest slot up and half from the highest down (by id), so that
// after frees the taken slots of an ascending and a descending page overlap far less often than
// two pages filled the same way: this is what makes pairs meshable (Mesh randomizes for the same
// reason; two-ended filling keeps the fast path a bit scan).
//
// Shared tails (docs/meshing.md): a slab page may be built on the physical page of a large
// object's last page, whose bytes [r, 2 MiB) the object does not use. The page's own slot then
// maps that physical page too, and its lowest slots, those overlapping [0, r), are "blocked":
// taken, owned by nobody, until the large object lets go of the page.
//
// Pages of a class sit in Boost.Intrusive lists bucketed by occupancy, so the densest page with a
// free slot is found in O(buckets) = O(1), and the sparsest pages (the compactor's candidates)
// are known without a scan. Threading: everything here requires the heap lock.
//
// validate() (slabs_validate.cpp) checks every invariant above that the slabs alone can see:
// each page's bitmap against its count, padding, owner table, blocked slots and fill hint; its
// bucket against its occupancy and the bucket lists against the pages; the page table and its
// free ids. What needs the page pool or the handle table (slot kinds, aliases' mappings, owners
// naming live objects) is the heap's validate().
#pragma once

#include <array>
#include <boost/intrusive/list.hpp>
#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "size_classes.h"
#include "valet/result.h"

namespace valet::detail {

inline constexpr std::uint32_t kNoOwner = 0;
inline constexpr std::size_t kBuckets = 8;  // 0: empty ... 7: full
// Virtual pages that may share one physical page (the page's own slot + its aliases).
inline constexpr std::size_t kMaxSharers = 8;
inline constexpr std::uint32_t kNoTail = ~0u;

// Another virtual slot mapping a slab page's physical page, and how many live (or deferred, or
// in-transit) objects are addressed through it.
struct SlabAlias {
  std::uint32_t slot = 0;
  std::uint32_t users = 0;
};

struct SlabPage {
  std::uint32_t id = 0;     // index in Slabs::pages_
  std::uint32_t slot = 0;   // virtual page slot in the arena
  std::uint32_t cls = 0;
  std::uint32_t capacity = 0;
  std::uint32_t used = 0;
  std::uint32_t hint = 0;   // ascending: no free slot below word `hint`; descending: above it
  // The lowest taken slot (capacity: none). Its bytes below are the page's free low span, what a
  // large object's last page can use (Slabs::low_free_bytes): kept here so that the search
  // for a tail's host reads no bitmap.
  std::uint32_t lowest = 0;
  std::uint8_t bucket = 0;
  bool live = false;
  // A compaction cycle is emptying this page: it stays out of the buckets (no allocation lands
  // on it) and only the cycle may destroy it, even if frees empty it meanwhile.
  bool evacuating = false;
  bool descending = false;  // fills from the highest slot down
  std::vector<std::uint64_t> bitmap;
  std::vector<SlabAlias> aliases;
  // Shared tail: the arena slot of the large object's last page whose physical page this page
  // is built on (kNoTail: none), and how many low slots that object's bytes block.
  std::uint32_t tail_slot = kNoTail;
  std::uint32_t blocked = 0;
  // Fixed objects here (they never move: evacuating the page cannot empty it, and meshing it as
  // a source waits for a safe point).
  std::uint32_t fixed = 0;
  std::vector<std::uint32_t> owners;  // handle index per slot; kNoOwner when free
  boost::intrusive::list_member_hook<> hook;
  // Slabs' index of the pages a large object's last page may share (Slabs::for_each_host), and
  // this page's key there (0: not listed).
  boost::intrusive::set_member_hook<> host_hook;
  std::uint64_t host_room = 0;

  bool test(std::uint32_t i) const { return (bitmap[i >> 6] >> (i & 63)) & 1u; }
  std::size_t sharers() const { return 1 + aliases.size(); }
  bool on_tail() const { return tail_slot != kNoTail; }
  // No object lives here (blocked slots hold no object).
  bool holds_no_object() const { return used == blocked; }
  SlabAlias* alias(std::uint32_t s) {
    for (auto& a : aliases)
      if (a.slot == s) return &a;
    return nullptr;
  }
};

// True when no slot is taken in both pages (same class). Padding bits past the capacity are
// taken in every page and are ignored.
bool disjoint(const SlabPage& a, const SlabPage& b);

class Slabs {
 public:
  using PageList = boost::intrusive::list<
      SlabPage, boost::intrusive::member_hook<SlabPage, boost::intrusive::list_member_hook<>, &SlabPage::hook>,
      boost::intrusive::constant_time_size<true>>;

  Slabs();
  ~Slabs();

  // Shared tails' hosts: the pages whose free low span a large object's last page could use,
  // from the least room of at least `room` bytes up (ties by id), until f(page) returns false.
  // A page's room (host_room) is all of it when empty, else the bytes below its lowest taken
  // slot; pages on a tail, meshed ones (aliases), full ones and those out of their buckets
  // (evacuating) are not listed. An index kept at every change of those fields, so that placing
  // a large object does not walk every slab page.
  template <class F>
  void for_each_host(std::uint64_t room, F&& f) const {
    for (auto it = hosts_.lower_bound(room, HostKey{}); it != hosts_.end(); ++it)
      if (!f(const_cast<SlabPage&>(*it))) return;
  }
  static std::uint64_t host_room(const SlabPage& p);
  // Bytes below a used slab page's lowest taken slot (0 for a page that cannot move onto a tail:
  // on one already, meshed, or holding nothing).
  static std::uint32_t low_free_bytes(const SlabPage& p);
  // A page's aliases changed (they are the heap's to add and drop): its place among the hosts.
  void aliases_changed(SlabPage* page) { index_host(page); }

  // The densest page of `cls` with a free slot, or nullptr.
  SlabPage* densest_with_room(std::uint32_t cls);
  // Makes a new, empty slab page of `cls` at arena slot `slot`.
  SlabPage* create(std::uint32_t cls, std::uint32_t slot);
  // Forgets an empty page (its arena slot goes back to the pool by the caller).
  void destroy(SlabPage* page);

  // Takes the lowest free slot of `page` for handle `owner`. Precondition: used < capacity.
  std::uint32_t take_slot(SlabPage* page, std::uint32_t owner);
  // Takes slot `i` of `page`. Precondition: it is free.
  void take_slot_at(SlabPage* page, std::uint32_t i, std::uint32_t owner);
  void free_slot(SlabPage* page, std::uint32_t i);
  // Shared tails: blocks slots [0, n) (free now) for the large object at arena slot `tail_slot`,
  // and frees them again when it lets go.
  void block_tail(SlabPage* page, std::uint32_t tail_slot, std::uint32_t n);
  void unblock_tail(SlabPage* page);
  // Takes a page out of its bucket for a compaction cycle: no allocation or move targets it, and
  // nothing but the cycle destroys it, until attach() (or destroy()).
  void detach(SlabPage* page);
  void attach(SlabPage* page) {
    page->evacuating = false;
    rebucket(page);
  }
  void set_owner(SlabPage* page, std::uint32_t i, std::uint32_t owner) { page->owners[i] = owner; }
  // Meshing: `dst` takes every taken slot of `src` at the same index and owner (their slots must
  // be free in `dst`), `src` is destroyed, and `dst` returns to its bucket.
  void fold(SlabPage* dst, SlabPage* src);

  SlabPage* page(std::uint32_t id) const { return id < pages_.size() ? pages_[id].get() : nullptr; }
  std::size_t live_pages() const { return live_pages_; }
  std::size_t pages_of(std::uint32_t cls) const;
  const PageList& bucket(std::uint32_t cls, std::size_t b) const { return buckets_[cls][b]; }

  template <class F>
  void for_each_page(F&& f) const {
    for (const auto& p : pages_)
      if (p && p->live) f(*p);
  }

  // Checks the slabs' own invariants (see the top of this file); an error names the first
  // broken one. Walks every slot of every page: for validate() and expensive assertions.
  Status validate() const;
  // The checks of one live page alone (no lists, no other pages).
  static Status validate_page(const SlabPage& p);
  // The first taken slot of `p` at or above `from` (its capacity: none).
  static std::uint32_t lowest_taken(const SlabPage& p, std::uint32_t from);

 private:
  friend struct SlabsTestPeer;  // tests: corrupts the bucket lists and the page table

  static std::uint8_t bucket_of(const SlabPage& p);
  void rebucket(SlabPage* p);
  void index_host(SlabPage* p);  // lists, relists or unlists p among the hosts (host_room)

  struct ByHostRoom {
    bool operator()(const SlabPage& a, const SlabPage& b) const {
      return a.host_room != b.host_room ? a.host_room < b.host_room : a.id < b.id;
    }
  };
  struct HostKey {  // lower_bound by room alone
    bool operator()(const SlabPage& a, std::uint64_t room) const { return a.host_room < room; }
    bool operator()(std::uint64_t room, const SlabPage& a) const { return room < a.host_room; }
  };
  using HostSet =
      boost::intrusive::set<SlabPage, boost::intrusive::member_hook<SlabPage, boost::intrusive::set_member_hook<>, &SlabPage::host_hook>,
                            boost::intrusive::compare<ByHostRoom>>;

  std::vector<std::unique_ptr<SlabPage>> pages_;
  std::vector<std::uint32_t> free_ids_;
  std::size_t live_pages_ = 0;
  std::array<std::array<PageList, kBuckets>, kClassCount> buckets_;
  HostSet hosts_;
};

}  // namespace valet::detail
