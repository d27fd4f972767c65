// Chunks (page_pool.h): one physical allocation of several pages backing the body of a large
// object whose pages had to be created. On the GPU a chunk of k pages costs one create, one map
// and one access grant, each a little dearer than a page's, where k pages cost k of each
// (docs/speed.md, session 21: 256 pages as one chunk ~80 us against ~11 ms page by page). The
// price is the driver's rule that a chunk is mapped and unmapped only whole: its slots never
// move alone, so they serve only large objects placed on them, and go back to the backend only
// when no object uses any of them (then at once: a free chunk kept for reuse crowds the page
// reserve out; docs/speed.md, "Session 22").
#include <algorithm>
#include <string>

#include "page_pool.h"
#include "thread_scratch.h"

namespace valet::detail {

Status PagePool::map_new_chunk(std::uint32_t start, std::uint32_t n) {
  if (n > creatable_pages())
    return make_error(Errc::out_of_memory, "the heap holds its whole capacity (" +
                                               std::to_string(capacity_pages_ * kPage >> 20) + " MiB)");
  auto page = backend_.create_chunk(n);
  if (!page.ok()) return page.error();
  const std::uint32_t p = add_chunk_record(*page, n, start);
  note_created_peak();
  if (auto st = map_at(start, p); !st.ok()) {
    chunk_unmapped(p);  // released (or kept idle if even that fails)
    return st;
  }
  return {};
}

std::uint32_t PagePool::add_chunk_record(PhysicalPage page, std::uint32_t n, std::uint32_t first) {
  const std::uint32_t p = add_record(page);
  phys_[p].pages = n;
  phys_[p].first = first;
  created_ += n;
  chunk_pages_ += n;
  ++chunks_;
  ++chunks_created_;
  return p;
}

void PagePool::keep_idle_chunk(std::uint32_t p) {
  idle_chunks_.push_back(p);
  idle_chunk_pages_ += phys_[p].pages;
}

void PagePool::chunk_unmapped(std::uint32_t p) {
  if (backend_.release_page(phys_[p].page).ok()) {
    forget_record(p);
    return;
  }
  keep_idle_chunk(p);
}

bool PagePool::cuts_chunk(std::uint32_t start, std::uint32_t n) const {
  for (const std::uint32_t s : {start, start + n - 1}) {
    if (!in_chunk(s)) continue;
    const PhysRecord& r = phys_[slots_[s].phys];
    if (r.first < start || r.first + r.pages > start + n) return true;
  }
  return false;
}

void PagePool::insert_free(std::uint32_t start, std::uint32_t n) {
  for (std::uint32_t s = start; s < start + n;) {
    const bool chunk = in_chunk(s);
    std::uint32_t e = s + 1;
    while (e < start + n && in_chunk(e) == chunk) ++e;
    (chunk ? chunk_reserve_ : reserve_).insert(s, e - s);
    s = e;
  }
}

std::size_t PagePool::whole_free_chunk_pages() const {
  std::size_t pages = 0;
  for_each_whole_free_chunk([&](std::uint32_t p) {
    pages += phys_[p].pages;
    return true;
  });
  return pages;
}

bool PagePool::whole_free_chunk_at(std::uint32_t start, std::uint32_t length) const {
  const PhysRecord& c = phys_[slots_[start].phys];
  return c.first == start && c.first + c.pages <= start + length;
}

// Asked on every large free and keeper round: a scan that stops at the first one, no list.
bool PagePool::free_chunk_waits() const {
  return chunk_reserve_.total() > 0 && !for_each_whole_free_chunk([](std::uint32_t) { return false; });
}

void PagePool::take_free_chunks(ReleaseBatch& b, std::size_t at_least) {
  // All of them by default, whatever the reserve's budget: a free chunk serves only a run that
  // holds it whole, and two driver calls give all its pages back (docs/speed.md, "Session 22").
  // With `at_least`, only enough of them to hold that many pages (the one that fits best alone,
  // else the largest first): the others may serve the next runs where they lie.
  if (at_least == 0) return;
  // The thread's list, kept from call to call: no malloc under the lock.
  ScratchOrOwn<std::vector<std::uint32_t>, struct FreeChunkList> scratch;
  std::vector<std::uint32_t>& chunks = scratch.get();
  chunks.clear();
  for_each_whole_free_chunk([&](std::uint32_t p) {
    chunks.push_back(p);
    return true;
  });
  if (at_least != kAllFreeChunks) {
    std::sort(chunks.begin(), chunks.end(), [&](std::uint32_t a, std::uint32_t c) { return phys_[a].pages > phys_[c].pages; });
    // The smallest that holds them alone (the list runs from the largest down).
    const auto fit = std::find_if(chunks.rbegin(), chunks.rend(), [&](std::uint32_t p) { return phys_[p].pages >= at_least; });
    if (fit != chunks.rend()) {
      chunks = {*fit};
    } else {
      std::size_t n = 0, pages = 0;
      while (n < chunks.size() && pages < at_least) pages += phys_[chunks[n++]].pages;
      chunks.resize(n);
    }
  }
  for (const std::uint32_t p : chunks) {
    chunk_reserve_.take_exact(phys_[p].first, phys_[p].pages);
    releasing_.insert(phys_[p].first, phys_[p].pages);
    b.runs.push_back({phys_[p].first, phys_[p].pages, false, false, true});
    b.phys.push_back(p);
    b.pages.push_back(phys_[p].page);
  }
}

Status PagePool::release_free_chunks(std::size_t at_least) {
  if (at_least == kAllFreeChunks) {
    std::size_t all = ~std::size_t{0};
    VALET_TRY(release_idle_chunks(all));
  }
  // A release batch that keeps the whole reserve: the free chunks alone.
  ReleaseBatch b = begin_release(std::size_t(reserve_.total()), 0, false, at_least);
  if (b.empty()) {
    retire_release(b);
    return {};
  }
  release_calls(b);
  Status st = finish_release(b);
  retire_release(b);
  return st;
}

// Each chunk is mapped whole at one place (its `first` slot onwards) or nowhere (idle); its
// slots are large or reserve, and its free slots are in the chunk reserve, not the reserve.
Status PagePool::validate_chunks() const {
  auto bad = [](const std::string& what) { return make_error(Errc::internal, "page pool: " + what); };
  std::size_t pages = 0, count = 0;
  for (std::uint32_t p = 0; p < phys_.size(); ++p) {
    const PhysRecord& r = phys_[p];
    if (!r.in_use || !r.chunk()) continue;
    pages += r.pages;
    ++count;
    if (r.dropping != 0) return bad("chunk " + std::to_string(p) + " has dropping slots");
    if (r.mappings == 0) {
      if (std::find(idle_chunks_.begin(), idle_chunks_.end(), p) == idle_chunks_.end())
        return bad("chunk " + std::to_string(p) + " is mapped nowhere and not idle (leak)");
      continue;
    }
    if (r.mappings != r.pages || std::uint64_t(r.first) + r.pages > slots_.size())
      return bad("chunk " + std::to_string(p) + " is not mapped whole");
    for (std::uint32_t s = r.first; s < r.first + r.pages; ++s)
      if (slots_[s].phys != p) return bad("chunk " + std::to_string(p) + " is not mapped at its slots");
  }
  if (pages != chunk_pages_ || count != chunks_) return bad("chunk counts are wrong");
  std::size_t idle = 0;
  for (const std::uint32_t p : idle_chunks_) {
    if (p >= phys_.size() || !phys_[p].in_use || !phys_[p].chunk() || phys_[p].mappings != 0)
      return bad("idle chunk " + std::to_string(p) + " is mapped or dead");
    idle += phys_[p].pages;
  }
  if (idle != idle_chunk_pages_) return bad("idle chunk pages miscounted");
  for (std::uint32_t s = 0; s < slots_.size(); ++s) {
    if (!in_chunk(s)) {
      if (chunk_reserve_.contains(s)) return bad("slot " + std::to_string(s) + " in the chunk reserve is no chunk's");
      continue;
    }
    const SlotKind k = slots_[s].kind;
    if (k != SlotKind::large && k != SlotKind::reserve)
      return bad("chunk slot " + std::to_string(s) + " is neither large nor reserve");
    if (k == SlotKind::reserve && reserve_.contains(s)) return bad("chunk slot " + std::to_string(s) + " in the reserve");
  }
  return {};
}

}  // namespace valet::detail
