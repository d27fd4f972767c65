#include "valet/host_backend.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "host/host_stream.h"
#include "parallel.h"
#include "valet/kernels/pattern.h"

namespace valet {
namespace {

constexpr std::size_t kPage = HostBackend::kPageSize;
// The most address space one reserve() takes, and so the most memory the emulation backs: pages
// beyond it could never all be mapped at once. (Page indices are 32-bit: 2^25 pages fit.)
constexpr std::size_t kMaxBytes = std::size_t{1} << 46;

Error sys_error(const char* call) {
  return make_error(Errc::system_error, std::string(call) + " failed: " + std::strerror(errno));
}

bool aligned(std::uintptr_t v) { return v % kPage == 0; }

}  // namespace

struct HostBackend::State {
  struct PageRecord {
    bool release_pending = false;  // released while still mapped: freed at the last unmap
    std::uint32_t mappings = 0;
  };
  struct Mapping {
    std::uint32_t page = 0;
    bool accessible = false;
  };

  HostBackendOptions options;
  int fd = -1;
  std::size_t page_count = 0;
  Status init;

  mutable std::mutex mu;  // pages, mappings, reservations
  // Per-page state exists only for pages that exist: the capacity may be terabytes (a memfd of
  // that size is sparse), and tables sized by it would cost gigabytes of host memory up front.
  std::unordered_map<std::uint32_t, PageRecord> pages;  // created pages, by index
  std::vector<std::uint32_t> free_pages;                // indices given back, reused first
  std::uint32_t fresh_pages = 0;                        // indices [0, fresh_pages) have been used
  std::size_t in_use = 0;
  std::map<DevicePtr, std::size_t> reservations;
  std::unordered_map<DevicePtr, Mapping> mappings;  // by page-aligned address

  std::atomic<std::int64_t> delay_us{0};
  std::mutex work_mu;  // streams and events
  std::unordered_map<std::uintptr_t, std::unique_ptr<host::HostStream>> streams;
  std::unordered_map<std::uintptr_t, std::shared_ptr<host::HostEvent>> events;
  std::unique_ptr<host::HostStream> default_stream;

  // Precondition: mu held. Is [va, va+bytes) inside one reservation?
  bool reserved(DevicePtr va, std::size_t bytes) const {
    auto it = reservations.upper_bound(va);
    if (it == reservations.begin()) return false;
    --it;
    return va >= it->first && va + bytes <= it->first + it->second && va + bytes > va;
  }

  // Precondition: mu held. Is every page overlapping [va, va+bytes) mapped (and accessible)?
  bool all_mapped(DevicePtr va, std::size_t bytes, bool need_access) const {
    if (bytes == 0) return true;
    for (DevicePtr p = va - va % kPage; p < va + bytes; p += kPage) {
      auto it = mappings.find(p);
      if (it == mappings.end() || (need_access && !it->second.accessible)) return false;
    }
    return true;
  }

  // Precondition: mu held. The record of a created page that is not being released, or null.
  PageRecord* live_page(PhysicalPage page) {
    if (page.id == 0 || page.id > page_count) return nullptr;
    auto it = pages.find(std::uint32_t(page.id - 1));
    return it == pages.end() || it->second.release_pending ? nullptr : &it->second;
  }

  // Precondition: mu held. Takes an index for a new page (a returned one first), or false.
  bool take_index(std::uint32_t& index) {
    if (!free_pages.empty()) {
      index = free_pages.back();
      free_pages.pop_back();
      return true;
    }
    if (fresh_pages == page_count) return false;
    index = fresh_pages++;
    return true;
  }

  // Precondition: mu held. Forgets a page; its index is reused only after return_memory().
  void forget_page(std::uint32_t index) {
    pages.erase(index);
    --in_use;
  }
  // Precondition: mu NOT held. Gives a forgotten page's memory back to the OS, then its index to
  // the free list. The hole punch (~0.5 ms for 2 MiB) runs without the lock, so that maps and
  // unmaps of other pages (a compaction's remap, which pins may wait for) never queue behind it.
  void return_memory(std::uint32_t index) {
    // A failed punch only delays the return of memory; the page is still free for reuse.
    (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(index) * off_t(kPage),
                    off_t(kPage));
    std::lock_guard lock(mu);
    free_pages.push_back(index);
  }

  host::HostStream* stream(Stream s) {
    if (s.id == 0) return default_stream.get();
    std::lock_guard lock(work_mu);
    auto it = streams.find(s.id);
    return it == streams.end() ? nullptr : it->second.get();
  }
  // Shared: queued tasks keep an event alive after destroy_event, as the driver does.
  std::shared_ptr<host::HostEvent> event(Event e) {
    std::lock_guard lock(work_mu);
    auto it = events.find(e.id);
    return it == events.end() ? nullptr : it->second;
  }

  Status check_ranges_accessible(DevicePtr a, std::size_t n, const char* what) const {
    if (n == 0) return {};
    if (a == 0 || a + n < a) return make_error(Errc::invalid_argument, std::string(what) + ": null or wrapping range");
    if (!all_mapped(a, n, true))
      return make_error(Errc::invalid_state,
                        std::string(what) + ": range is not mapped with access at " + std::to_string(a));
    return {};
  }
};

HostBackend::HostBackend(HostBackendOptions options) : s_(std::make_unique<State>()) {
  s_->options = options;
  s_->delay_us.store(options.task_delay.count());
  s_->default_stream = std::make_unique<host::HostStream>(&s_->delay_us);
  s_->page_count = options.capacity_bytes / kPage;
  if (s_->page_count == 0) {
    s_->init = make_error(Errc::invalid_argument, "host backend: capacity below one 2 MiB page");
    return;
  }
  if (options.capacity_bytes > kMaxBytes) {
    s_->init = make_error(Errc::invalid_argument,
                          "host backend: a capacity of " + std::to_string(options.capacity_bytes) +
                              " bytes is more than the emulation can back (at most " +
                              std::to_string(kMaxBytes >> 40) + " TiB, the most address space it reserves)");
    return;
  }
  s_->fd = memfd_create("valet-host-vmm", MFD_CLOEXEC);
  if (s_->fd < 0) {
    s_->init = sys_error("memfd_create");
    return;
  }
  if (ftruncate(s_->fd, off_t(s_->page_count * kPage)) != 0) {
    s_->init = sys_error("ftruncate");
    return;
  }
}

HostBackend::~HostBackend() {
  // Queued work may still touch mappings: finish it before tearing anything down.
  {
    std::lock_guard lock(s_->work_mu);
    s_->streams.clear();
  }
  s_->default_stream.reset();
  for (auto& [va, bytes] : s_->reservations) munmap(reinterpret_cast<void*>(va), bytes);
  if (s_->fd >= 0) close(s_->fd);
}

Status HostBackend::status() const { return s_->init; }

std::string HostBackend::name() const {
  return "host (memfd emulation, " + std::to_string(s_->options.capacity_bytes >> 20) + " MiB)";
}

Capabilities HostBackend::capabilities() const {
  return Capabilities{.host_accessible = true, .device_kernels = false, .real_device = false};
}

Result<MemoryInfo> HostBackend::memory_info() {
  std::lock_guard lock(s_->mu);
  return MemoryInfo{(s_->page_count - s_->in_use) * kPage, s_->page_count * kPage};
}

Result<DevicePtr> HostBackend::reserve(std::size_t bytes) {
  VALET_TRY(s_->init);
  if (bytes == 0 || bytes % kPage != 0)
    return make_error(Errc::invalid_argument, "reserve: size must be a non-zero multiple of 2 MiB");
  if (bytes > kMaxBytes) return make_error(Errc::out_of_address_space, "reserve: more than 64 TiB asked");
  // Over-reserve by one page so the start can be aligned, then trim both ends.
  const std::size_t span = bytes + kPage;
  void* raw = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    if (errno == ENOMEM) return make_error(Errc::out_of_address_space, "reserve: mmap: out of address space");
    return sys_error("mmap(PROT_NONE)");
  }
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t start = (base + kPage - 1) / kPage * kPage;
  if (start > base) munmap(raw, start - base);
  const std::uintptr_t end = start + bytes;
  if (base + span > end) munmap(reinterpret_cast<void*>(end), base + span - end);
  std::lock_guard lock(s_->mu);
  s_->reservations.emplace(start, bytes);
  return DevicePtr{start};
}

Status HostBackend::unreserve(DevicePtr va, std::size_t bytes) {
  std::lock_guard lock(s_->mu);
  auto it = s_->reservations.find(va);
  if (it == s_->reservations.end() || it->second != bytes)
    return make_error(Errc::not_found, "unreserve: not a reservation of this size");
  // Walk whichever is smaller: the range's pages or the mappings (a reservation may be terabytes).
  bool mapped = false;
  if (bytes / kPage <= s_->mappings.size()) {
    for (DevicePtr p = va; p < va + bytes && !mapped; p += kPage) mapped = s_->mappings.count(p) != 0;
  } else {
    for (const auto& m : s_->mappings) mapped = mapped || (m.first >= va && m.first < va + bytes);
  }
  if (mapped) return make_error(Errc::invalid_state, "unreserve: the range still has mapped pages");
  if (munmap(reinterpret_cast<void*>(va), bytes) != 0) return sys_error("munmap");
  s_->reservations.erase(it);
  return {};
}

Result<PhysicalPage> HostBackend::create_page() {
  VALET_TRY(s_->init);
  std::uint32_t index;
  {
    std::lock_guard lock(s_->mu);
    if (!s_->take_index(index))
      return make_error(Errc::out_of_memory, "create_page: the emulated device memory (" +
                                                 std::to_string(s_->options.capacity_bytes >> 20) +
                                                 " MiB) is full");
  }
  // Commit the memory now, as cuMemCreate does: a page that exists has memory behind it. The
  // index is off the free list, so nobody else touches it; the lock is not held meanwhile.
  if (fallocate(s_->fd, 0, off_t(index) * off_t(kPage), off_t(kPage)) != 0) {
    const int err = errno;
    {
      std::lock_guard lock(s_->mu);
      s_->free_pages.push_back(index);
    }
    errno = err;
    if (err == ENOSPC || err == ENOMEM)
      return make_error(Errc::out_of_memory, "create_page: the host has no memory left for the page");
    return sys_error("fallocate");
  }
  std::lock_guard lock(s_->mu);
  s_->pages[index] = State::PageRecord{};
  ++s_->in_use;
  return PhysicalPage{std::uint64_t{index} + 1};
}

Status HostBackend::release_page(PhysicalPage page) {
  const std::uint64_t index = page.id - 1;
  {
    std::lock_guard lock(s_->mu);
    State::PageRecord* rec = s_->live_page(page);
    if (!rec) return make_error(Errc::not_found, "release_page: unknown or already released page");
    if (rec->mappings > 0) {
      rec->release_pending = true;
      return {};
    }
    s_->forget_page(std::uint32_t(index));
  }
  s_->return_memory(std::uint32_t(index));
  return {};
}

Status HostBackend::map(DevicePtr va, PhysicalPage page) {
  std::lock_guard lock(s_->mu);
  const std::uint64_t index = page.id - 1;
  State::PageRecord* rec = s_->live_page(page);
  if (!rec) return make_error(Errc::not_found, "map: unknown or released page");
  if (!aligned(va) || !s_->reserved(va, kPage))
    return make_error(Errc::invalid_argument, "map: address not aligned or not inside a reservation");
  if (s_->mappings.count(va)) return make_error(Errc::invalid_state, "map: the address is already mapped");
  void* r = mmap(reinterpret_cast<void*>(va), kPage, PROT_NONE, MAP_SHARED | MAP_FIXED, s_->fd,
                 off_t(index) * off_t(kPage));
  if (r == MAP_FAILED) return sys_error("mmap(MAP_SHARED|MAP_FIXED)");
  s_->mappings.emplace(va, State::Mapping{std::uint32_t(index), false});
  ++rec->mappings;
  return {};
}

Status HostBackend::unmap(DevicePtr va, std::size_t bytes) {
  std::vector<std::uint32_t> freed;
  {
    std::lock_guard lock(s_->mu);
    if (!aligned(va) || bytes == 0 || bytes % kPage != 0)
      return make_error(Errc::invalid_argument, "unmap: range not aligned to 2 MiB");
    if (!s_->all_mapped(va, bytes, false))
      return make_error(Errc::invalid_state, "unmap: part of the range is not mapped");
    void* r = mmap(reinterpret_cast<void*>(va), bytes, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return sys_error("mmap(PROT_NONE) over an unmapped range");
    for (DevicePtr p = va; p < va + bytes; p += kPage) {
      auto it = s_->mappings.find(p);
      const std::uint32_t index = it->second.page;
      s_->mappings.erase(it);
      auto& rec = s_->pages.find(index)->second;  // a mapped page keeps its record
      if (--rec.mappings == 0 && rec.release_pending) {
        s_->forget_page(index);
        freed.push_back(index);
      }
    }
  }
  for (std::uint32_t index : freed) s_->return_memory(index);
  return {};
}

Status HostBackend::set_access(DevicePtr va, std::size_t bytes) {
  std::lock_guard lock(s_->mu);
  if (!aligned(va) || bytes == 0 || bytes % kPage != 0)
    return make_error(Errc::invalid_argument, "set_access: range not aligned to 2 MiB");
  if (!s_->all_mapped(va, bytes, false))
    return make_error(Errc::invalid_state, "set_access: part of the range is not mapped");
  if (mprotect(reinterpret_cast<void*>(va), bytes, PROT_READ | PROT_WRITE) != 0)
    return sys_error("mprotect");
  for (DevicePtr p = va; p < va + bytes; p += kPage) s_->mappings[p].accessible = true;
  return {};
}

Result<Stream> HostBackend::create_stream() {
  auto stream = std::make_unique<host::HostStream>(&s_->delay_us);
  const auto id = reinterpret_cast<std::uintptr_t>(stream.get());
  std::lock_guard lock(s_->work_mu);
  s_->streams.emplace(id, std::move(stream));
  return Stream{id};
}

Status HostBackend::destroy_stream(Stream s) {
  std::unique_ptr<host::HostStream> doomed;
  {
    std::lock_guard lock(s_->work_mu);
    auto it = s_->streams.find(s.id);
    if (it == s_->streams.end()) return make_error(Errc::not_found, "destroy_stream: unknown stream");
    doomed = std::move(it->second);
    s_->streams.erase(it);
  }
  return {};  // ~HostStream drains the queue
}

Result<Event> HostBackend::create_event() {
  auto event = std::make_shared<host::HostEvent>();
  const auto id = reinterpret_cast<std::uintptr_t>(event.get());
  std::lock_guard lock(s_->work_mu);
  s_->events.emplace(id, std::move(event));
  return Event{id};
}

Status HostBackend::destroy_event(Event e) {
  std::lock_guard lock(s_->work_mu);
  if (s_->events.erase(e.id) == 0) return make_error(Errc::not_found, "destroy_event: unknown event");
  return {};
}

Status HostBackend::record_event(Event e, Stream s) {
  auto ev = s_->event(e);
  auto* st = s_->stream(s);
  if (!ev || !st) return make_error(Errc::not_found, "record_event: unknown event or stream");
  const std::uint64_t seq = ev->arm();
  st->enqueue([ev, seq] { ev->reach(seq); }, false);
  return {};
}

Result<bool> HostBackend::query_event(Event e) {
  auto ev = s_->event(e);
  if (!ev) return make_error(Errc::not_found, "query_event: unknown event");
  return ev->done();
}

Status HostBackend::synchronize_event(Event e) {
  auto ev = s_->event(e);
  if (!ev) return make_error(Errc::not_found, "synchronize_event: unknown event");
  ev->wait();
  return {};
}

Status HostBackend::stream_wait_event(Stream s, Event e) {
  auto ev = s_->event(e);
  auto* st = s_->stream(s);
  if (!ev || !st) return make_error(Errc::not_found, "stream_wait_event: unknown event or stream");
  const std::uint64_t seq = ev->armed();  // the most recent record
  st->enqueue([ev, seq] { ev->wait_for(seq); }, false);
  return {};
}

Status HostBackend::synchronize_stream(Stream s) {
  auto* st = s_->stream(s);
  if (!st) return make_error(Errc::not_found, "synchronize_stream: unknown stream");
  st->synchronize();
  return {};
}

Status HostBackend::copy(std::span<const CopyRange> ranges, Stream s) {
  auto* st = s_->stream(s);
  if (!st) return make_error(Errc::not_found, "copy: unknown stream");
  {
    std::lock_guard lock(s_->mu);
    for (const auto& r : ranges) {
      VALET_TRY(s_->check_ranges_accessible(r.src, r.bytes, "copy source"));
      VALET_TRY(s_->check_ranges_accessible(r.dst, r.bytes, "copy destination"));
    }
  }
  std::vector<CopyRange> work(ranges.begin(), ranges.end());
  st->enqueue(
      [work = std::move(work)] {
        parallel_chunks(work.size(), 16, [&](std::size_t b, std::size_t e) {
          for (std::size_t i = b; i < e; ++i)
            std::memcpy(reinterpret_cast<void*>(work[i].dst), reinterpret_cast<const void*>(work[i].src),
                        work[i].bytes);
        });
      },
      true);
  return {};
}

namespace {

void fill_one(const PatternRange& r) {
  auto* p = reinterpret_cast<unsigned char*>(r.dst);
  std::size_t i = 0;
  for (; i < r.bytes && (i & 7); ++i) p[i] = kernels::pattern_byte(r.seed, i);
  for (; i + 8 <= r.bytes; i += 8) {
    const std::uint64_t w = kernels::pattern_word(r.seed, i >> 3);
    std::memcpy(p + i, &w, 8);
  }
  for (; i < r.bytes; ++i) p[i] = kernels::pattern_byte(r.seed, i);
}

std::uint64_t verify_one(const PatternRange& r) {
  const auto* p = reinterpret_cast<const unsigned char*>(r.dst);
  std::uint64_t bad = 0;
  std::size_t i = 0;
  for (; i < r.bytes && (i & 7); ++i) bad += p[i] != kernels::pattern_byte(r.seed, i);
  for (; i + 8 <= r.bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    const std::uint64_t diff = w ^ kernels::pattern_word(r.seed, i >> 3);
    if (diff)
      for (int b = 0; b < 8; ++b) bad += ((diff >> (b * 8)) & 0xff) != 0;
  }
  for (; i < r.bytes; ++i) bad += p[i] != kernels::pattern_byte(r.seed, i);
  return bad;
}

}  // namespace

Status HostBackend::fill_pattern(std::span<const PatternRange> ranges, Stream s) {
  auto* st = s_->stream(s);
  if (!st) return make_error(Errc::not_found, "fill_pattern: unknown stream");
  {
    std::lock_guard lock(s_->mu);
    for (const auto& r : ranges) VALET_TRY(s_->check_ranges_accessible(r.dst, r.bytes, "fill_pattern"));
  }
  std::vector<PatternRange> work(ranges.begin(), ranges.end());
  st->enqueue(
      [work = std::move(work)] {
        parallel_chunks(work.size(), 8, [&](std::size_t b, std::size_t e) {
          for (std::size_t i = b; i < e; ++i) fill_one(work[i]);
        });
      },
      true);
  return {};
}

Result<std::uint64_t> HostBackend::verify_pattern(std::span<const PatternRange> ranges, Stream s) {
  auto* st = s_->stream(s);
  if (!st) return make_error(Errc::not_found, "verify_pattern: unknown stream");
  {
    std::lock_guard lock(s_->mu);
    for (const auto& r : ranges) VALET_TRY(s_->check_ranges_accessible(r.dst, r.bytes, "verify_pattern"));
  }
  std::atomic<std::uint64_t> bad{0};
  st->enqueue(
      [&bad, ranges] {
        parallel_chunks(ranges.size(), 8, [&](std::size_t b, std::size_t e) {
          std::uint64_t local = 0;
          for (std::size_t i = b; i < e; ++i) local += verify_one(ranges[i]);
          bad.fetch_add(local, std::memory_order_relaxed);
        });
      },
      true);
  st->synchronize();  // `ranges` and `bad` live in this frame: wait before returning
  return bad.load();
}

Status HostBackend::read(void* host_dst, DevicePtr src, std::size_t bytes) {
  s_->default_stream->synchronize();
  {
    std::lock_guard lock(s_->mu);
    VALET_TRY(s_->check_ranges_accessible(src, bytes, "read"));
  }
  if (bytes) std::memcpy(host_dst, reinterpret_cast<const void*>(src), bytes);
  return {};
}

Status HostBackend::write(DevicePtr dst, const void* host_src, std::size_t bytes) {
  s_->default_stream->synchronize();
  {
    std::lock_guard lock(s_->mu);
    VALET_TRY(s_->check_ranges_accessible(dst, bytes, "write"));
  }
  if (bytes) std::memcpy(reinterpret_cast<void*>(dst), host_src, bytes);
  return {};
}

Status HostBackend::enqueue_host_task(Stream s, std::function<void()> task) {
  auto* st = s_->stream(s);
  if (!st) return make_error(Errc::not_found, "enqueue_host_task: unknown stream");
  st->enqueue(std::move(task), true);
  return {};
}

void HostBackend::set_task_delay(std::chrono::microseconds delay) { s_->delay_us.store(delay.count()); }

std::size_t HostBackend::allocated_bytes() const {
  struct stat st {};
  if (s_->fd < 0 || fstat(s_->fd, &st) != 0) return 0;
  return std::size_t(st.st_blocks) * 512;
}

std::size_t HostBackend::pages_in_use() const {
  std::lock_guard lock(s_->mu);
  return s_->in_use;
}

}  // namespace valet
