// Fuzz harness: the input bytes are an operation stream (allocate, free, resize, host pin/unpin,
// stream-ordered pins and rewrites, compaction: meshing and evacuation, misuse) run against a small host heap next to a
// model of what every object must hold. After every operation the returned code must be one the
// model allows and validate() must pass; freed and resized objects are checked, and at the end
// every live object, then the shutdown (every page back with the backend). Any violation aborts
// with a message, which libFuzzer reports as a crash.
#include "heap_fuzz.h"

#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <memory>
#include <vector>

#include "heap_core.h"
#include "valet/heap.h"
#include "valet/host_backend.h"

namespace valet::fuzz {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr std::size_t kCapacity = 64 * kMiB;
constexpr std::size_t kMaxLive = 64;          // bounds the cost of one input
constexpr std::size_t kMaxHostPins = 16;
constexpr std::size_t kMaxStreamPins = 8;
constexpr std::size_t kMaxOps = 512;

// Reads the input; past its end every read is 0, so any byte string is a valid program.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : p_(data), n_(size) {}
  bool done() const { return i_ >= n_; }
  std::uint8_t u8() { return i_ < n_ ? p_[i_++] : 0; }
  std::uint32_t u16() { return u8() | std::uint32_t(u8()) << 8; }
  std::uint32_t u24() { return u16() | std::uint32_t(u8()) << 16; }
  std::uint32_t u32() { return u16() | u16() << 16; }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
  std::size_t i_ = 0;
};

// Sizes: mostly ordinary ones of every kind, sometimes an edge (class and page boundaries, the
// capacity, 0, absurd sizes).
std::size_t decode_size(Reader& r) {
  static constexpr std::size_t kEdges[] = {1,          255,          256,          257,          1024,
                                           1025,       kMiB - 1,     kMiB,         kMiB + 1,     2 * kMiB - 1,
                                           2 * kMiB,   2 * kMiB + 1, 32 * kMiB,    kCapacity - 1, kCapacity,
                                           kCapacity + 1, std::size_t{1} << 48, (std::size_t{1} << 48) + 1,
                                           std::size_t{1} << 60, std::numeric_limits<std::size_t>::max(), 0};
  switch (r.u8() % 8) {
    case 0: return r.u8();
    case 1: return 1 + r.u16() % 4096;
    case 2:
    case 3: return 1 + r.u24() % kMiB;
    case 4: return kMiB + r.u24() % (3 * kMiB);
    case 5: return kEdges[r.u8() % std::size(kEdges)];
    default: return 1 + r.u16();
  }
}

struct Object {
  Handle h;
  std::size_t size = 0;
  std::uint64_t seed = 0;
  int host_pins = 0;
  int stream_pins = 0;        // held, not released
  bool unpin_pending = false; // a stream-ordered unpin may not have passed yet
  DevicePtr fixed_at = 0;     // a fixed object's address (allocate_fixed): it never changes
  bool pinned() const { return host_pins > 0 || stream_pins > 0; }
};

class FuzzRun {
 public:
  FuzzRun(const std::uint8_t* data, std::size_t size) : in_(data, size) {}
  void run();

 private:
  [[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "heap_fuzz: op %zu (%s): %s\n", op_index_, op_name_, what.c_str());
    std::abort();
  }
  void check(bool ok, const std::string& what) {
    if (!ok) fail(what);
  }
  void expect(Errc got, std::initializer_list<Errc> allowed, const char* call) {
    for (Errc a : allowed)
      if (got == a) return;
    fail(std::string(call) + " returned " + std::string(errc_name(got)));
  }
  template <class T>
  T must(Result<T> r, const char* call) {
    if (!r.ok()) fail(std::string(call) + ": " + r.error().to_string());
    return std::move(r).value();
  }
  void must(Status s, const char* call) {
    if (!s.ok()) fail(std::string(call) + ": " + s.error().to_string());
  }

  Object* pick() { return live_.empty() ? nullptr : &live_[in_.u8() % live_.size()]; }
  Object* find(Handle h) {
    for (auto& o : live_)
      if (o.h == h) return &o;
    return nullptr;
  }
  std::uint64_t next_seed() { return ++seed_ * 0x9e3779b97f4a7c15ull; }

  void fill(Object& o, bool stream_ordered);
  std::uint64_t mismatches(const Object& o, std::size_t bytes, std::size_t filled_size = 0);
  void op_allocate();
  void op_free();
  void op_resize();
  void op_host_pin();
  void op_host_unpin();
  void op_stream_rewrite();
  void op_stream_hold();
  void op_stream_release();
  void op_compact();
  void op_sync();
  void op_misuse();
  void finish();

  Reader in_;
  std::unique_ptr<Heap> heap_;
  HostBackend* host_ = nullptr;
  Stream a_{}, b_{};  // a: fills and checks; b: pins held without work
  std::vector<Object> live_;
  std::vector<std::pair<Handle, Pin>> pins_;
  std::vector<StreamPin> stream_pins_;
  std::vector<Handle> freed_;
  std::uint64_t seed_ = 0;
  std::size_t op_index_ = 0;
  const char* op_name_ = "setup";
};

// The bytes of an object that carry its pattern: all of it up to 1 MiB; beyond, the first 64 KiB
// of every 2 MiB page and the last 64 KiB. A page mapped wrongly, lost or shared shows in its
// window, and inputs that rewrite large objects over and over stay fast (under ASan too). Byte i
// of the pattern depends on i alone, so a window at `off` has the pattern of seed + off / 8.
std::vector<PatternRange> pattern_ranges(DevicePtr base, std::size_t bytes, std::uint64_t seed) {
  constexpr std::size_t kWhole = kMiB, kWindow = 64 * 1024, kPage = 2 * kMiB;
  if (bytes <= kWhole) return {PatternRange{base, bytes, seed}};
  std::vector<PatternRange> out;
  const std::size_t tail = (bytes - kWindow) & ~std::size_t{7};  // windows never overlap it
  for (std::size_t off = 0; off < tail; off += kPage)
    out.push_back({base + off, std::min(kWindow, tail - off), seed + off / 8});
  out.push_back({base + tail, bytes - tail, seed + tail / 8});
  return out;
}

void FuzzRun::fill(Object& o, bool stream_ordered) {
  o.seed = next_seed();
  if (stream_ordered) {
    auto pin = must(heap_->pin(o.h, a_), "stream pin for a fill");
    must(heap_->backend().fill_pattern(pattern_ranges(pin.address(), o.size, o.seed), a_), "fill_pattern");
    must(pin.release(), "StreamPin::release");
    o.unpin_pending = true;
    return;
  }
  auto pin = must(heap_->pin(o.h), "pin for a fill");
  must(heap_->backend().fill_pattern(pattern_ranges(pin.address(), o.size, o.seed), a_), "fill_pattern");
  must(heap_->backend().synchronize_stream(a_), "synchronize_stream");
}

// Checks, on stream a (after every fill queued there), the pattern bytes of an object of
// `filled_size` (how big it was when filled) among its first `bytes`.
std::uint64_t FuzzRun::mismatches(const Object& o, std::size_t bytes, std::size_t filled_size) {
  auto pin = must(heap_->pin(o.h), "pin for a check");
  check(pin.size() == o.size, "pin reports size " + std::to_string(pin.size()) + ", expected " + std::to_string(o.size));
  check(o.fixed_at == 0 || pin.address() == o.fixed_at, "a fixed object moved");
  auto ranges = pattern_ranges(pin.address(), filled_size ? filled_size : o.size, o.seed);
  const DevicePtr end = pin.address() + std::min(bytes, o.size);
  std::erase_if(ranges, [&](const PatternRange& r) { return r.dst >= end; });
  for (auto& r : ranges) r.bytes = std::min<std::size_t>(r.bytes, end - r.dst);
  return must(heap_->backend().verify_pattern(ranges, a_), "verify_pattern");
}

void FuzzRun::op_allocate() {
  const std::size_t bytes = decode_size(in_);
  // Bit 0: fill on a stream; bit 1: a fixed object; bit 2: allocate on stream a (its frees reused).
  const std::uint8_t flags = in_.u8();
  const bool stream_ordered = flags & 1;
  if (live_.size() >= kMaxLive) return;
  DevicePtr fixed_at = 0;
  Result<Handle> h = make_error(Errc::internal, "unset");
  if (flags & 2) {
    auto f = heap_->allocate_fixed(bytes, (flags & 4) ? a_ : Stream{});
    if (f.ok()) {
      check(f->size == bytes && f->address != 0, "allocate_fixed describes another object");
      fixed_at = f->address;
      h = f->handle;
    } else {
      h = f.error();
    }
  } else {
    h = (flags & 4) ? heap_->allocate(bytes, a_) : heap_->allocate(bytes);
  }
  if (bytes == 0 || bytes > (std::size_t{1} << 48))
    return expect(h.code(), {Errc::invalid_argument}, "allocate of an absurd size");
  if (bytes > kCapacity) return expect(h.code(), {Errc::out_of_memory}, "allocate beyond the capacity");
  if (!h.ok()) return expect(h.code(), {Errc::out_of_memory}, "allocate");
  check(must(heap_->size_of(*h), "size_of") == bytes, "size_of disagrees after allocate");
  live_.push_back(Object{*h, bytes});
  live_.back().fixed_at = fixed_at;
  fill(live_.back(), stream_ordered);
}

void FuzzRun::op_free() {
  Object* o = pick();
  if (!o) return;
  if (o->pinned()) return expect(heap_->free(o->h).code(), {Errc::pinned}, "free of a pinned object");
  check(mismatches(*o, o->size) == 0, "contents changed before free");
  // Stream-ordered on a (where the checks run), or at once.
  if (in_.u8() & 1)
    must(heap_->free(o->h, a_), "free on a stream");
  else
    must(heap_->free(o->h), "free");
  freed_.push_back(o->h);
  *o = live_.back();
  live_.pop_back();
}

void FuzzRun::op_resize() {
  Object* o = pick();
  const std::size_t bytes = decode_size(in_);
  if (!o) return;
  const Object before = *o;
  auto st = heap_->resize(o->h, bytes);
  if (bytes == 0 || bytes > (std::size_t{1} << 48)) {
    expect(st.code(), {Errc::invalid_argument}, "resize to an absurd size");
  } else if (o->pinned() || o->fixed_at != 0) {
    expect(st.code(), {Errc::pinned}, "resize of a pinned or fixed object");
  } else if (o->unpin_pending) {
    expect(st.code(), {Errc::ok, Errc::pinned, Errc::out_of_memory}, "resize with an unpin pending");
  } else if (bytes > kCapacity) {
    expect(st.code(), {Errc::out_of_memory}, "resize beyond the capacity");
  } else {
    expect(st.code(), {Errc::ok, Errc::out_of_memory}, "resize");
  }
  if (!st.ok()) {
    check(must(heap_->size_of(o->h), "size_of") == before.size, "a failed resize changed the size");
    check(mismatches(*o, o->size) == 0, "a failed resize changed the contents");
    return;
  }
  o->size = bytes;
  check(mismatches(Object{o->h, bytes, before.seed}, std::min(before.size, bytes), before.size) == 0,
        "resize " + std::to_string(before.size) + " -> " + std::to_string(bytes) + " lost kept bytes");
  fill(*o, in_.u8() & 1);
}

void FuzzRun::op_host_pin() {
  Object* o = pick();
  if (!o) return;
  if (pins_.size() >= kMaxHostPins) return op_host_unpin();
  auto pin = must(heap_->pin(o->h), "pin");
  check(pin.size() == o->size && pin.handle() == o->h && pin.valid(), "pin describes another object");
  ++o->host_pins;
  pins_.emplace_back(o->h, std::move(pin));
}

void FuzzRun::op_host_unpin() {
  if (pins_.empty()) return;
  const std::size_t i = in_.u8() % pins_.size();
  Object* o = find(pins_[i].first);
  check(o != nullptr, "a held pin names no live object");
  --o->host_pins;
  pins_[i] = std::move(pins_.back());
  pins_.pop_back();
}

void FuzzRun::op_stream_rewrite() {
  Object* o = pick();
  if (o) fill(*o, true);
}

void FuzzRun::op_stream_hold() {
  Object* o = pick();
  if (!o || stream_pins_.size() >= kMaxStreamPins) return;
  auto pin = must(heap_->pin(o->h, b_), "stream pin");
  check(pin.size() == o->size && pin.stream() == b_, "stream pin describes another object");
  ++o->stream_pins;
  stream_pins_.push_back(std::move(pin));
}

void FuzzRun::op_stream_release() {
  if (stream_pins_.empty()) return;
  const std::size_t i = in_.u8() % stream_pins_.size();
  Object* o = find(stream_pins_[i].handle());
  check(o != nullptr, "a held stream pin names no live object");
  must(stream_pins_[i].release(), "StreamPin::release");
  --o->stream_pins;
  o->unpin_pending = true;
  stream_pins_[i] = std::move(stream_pins_.back());
  stream_pins_.pop_back();
}

void FuzzRun::op_compact() {
  CompactRequest req;
  req.max_occupancy = (in_.u8() % 100 + 1) / 101.0;
  const std::uint8_t b = in_.u8(), p = in_.u8();
  req.max_bytes = b == 0 ? ~0ull : std::uint64_t{1} << (b % 30);
  req.max_pages = p == 0 ? ~0ull : p % 16;
  // Meshing and evacuation together (the default), meshing alone, or evacuation alone.
  const std::uint8_t mode = in_.u8() % 3;
  req.mesh = mode != 2;
  req.evacuate = mode != 1;
  // A safe point (fixed objects' pages meshed too) only where the caller can vouch for it: no
  // queued work on the streams (the pins of stream b hold their objects anyway).
  req.safe_point = mode == 0 && (b & 1);
  if (req.safe_point) {
    must(heap_->backend().synchronize_stream(a_), "synchronize_stream a");
    must(heap_->backend().synchronize_stream(b_), "synchronize_stream b");
  }
  auto rec = must(heap_->compact(req), "compact");
  check(rec.bytes_moved + rec.bytes_meshed <= req.max_bytes && rec.pages_freed + rec.pages_meshed <= req.max_pages,
        "compact exceeded its budget");
  check((req.mesh || rec.pages_meshed == 0) && (req.evacuate || rec.objects_moved == 0), "compact ran a step it was not asked for");
}

void FuzzRun::op_sync() {
  must(heap_->backend().synchronize_stream(a_), "synchronize_stream a");
  must(heap_->backend().synchronize_stream(b_), "synchronize_stream b");
  for (auto& o : live_) o.unpin_pending = false;
  if (in_.u8() & 1) must(heap_->maintain(), "maintain");
}

void FuzzRun::op_misuse() {
  const std::uint8_t what = in_.u8();
  const std::uint32_t index = in_.u16() % 300, generation = in_.u32();
  switch (what % 5) {
    case 0:
      if (!freed_.empty()) {
        const Handle h = freed_[index % freed_.size()];
        expect(heap_->free(h).code(), {Errc::stale_handle}, "double free");
        expect(heap_->pin(h).code(), {Errc::stale_handle}, "pin of a freed object");
        expect(heap_->pin(h, a_).code(), {Errc::stale_handle}, "stream pin of a freed object");
        expect(heap_->resize(h, 100).code(), {Errc::stale_handle}, "resize of a freed object");
        expect(heap_->size_of(h).code(), {Errc::stale_handle}, "size_of a freed object");
      }
      break;
    case 1: {
      const Handle forged{index, generation, heap_->tag()};
      if (forged.is_null() || find(forged)) break;
      expect(heap_->free(forged).code(), {Errc::invalid_handle, Errc::stale_handle}, "free of a forged handle");
      expect(heap_->pin(forged).code(), {Errc::invalid_handle, Errc::stale_handle}, "pin of a forged handle");
      break;
    }
    case 2: {
      const Handle foreign{index, generation | 1, heap_->tag() + 1 + (what >> 3)};
      expect(heap_->free(foreign).code(), {Errc::foreign_handle}, "free of another heap's handle");
      expect(heap_->resize(foreign, 10).code(), {Errc::foreign_handle}, "resize of another heap's handle");
      break;
    }
    case 3:
      expect(heap_->free(Handle{}).code(), {Errc::invalid_handle}, "free of the null handle");
      break;
    default:
      expect(heap_->compact(CompactRequest{.max_occupancy = (what & 8) ? 1.0 : 0.0}).code(), {Errc::invalid_argument},
             "compact with max_occupancy outside (0, 1)");
      break;
  }
}

void FuzzRun::finish() {
  op_name_ = "finish";
  pins_.clear();
  for (auto& p : stream_pins_) must(p.release(), "StreamPin::release");
  stream_pins_.clear();
  must(heap_->backend().synchronize_stream(a_), "synchronize_stream a");
  must(heap_->backend().synchronize_stream(b_), "synchronize_stream b");
  for (auto& o : live_) {
    o.host_pins = o.stream_pins = 0;
    check(mismatches(o, o.size) == 0, "contents changed (final check)");
  }
  auto stats = heap_->stats();
  check(stats.live_objects == live_.size(), "the heap counts another number of live objects");
  for (auto& o : live_) must(heap_->free(o.h), "final free");
  must(heap_->validate(), "validate after freeing everything");
  must(heap_->backend().destroy_stream(a_), "destroy_stream");
  must(heap_->backend().destroy_stream(b_), "destroy_stream");
  must(heap_->shutdown(), "shutdown");
  check(host_->pages_in_use() == 0, std::to_string(host_->pages_in_use()) + " pages leaked after shutdown");
}

void FuzzRun::run() {
  // The first byte shapes the heap: reserve watermarks, emergency compaction, deferred drops,
  // chunks, background misses, the copying region.
  const std::uint8_t shape = in_.u8();
  Config config;
  config.capacity = kCapacity;
  config.background_reserve = false;
  config.compact_on_oom = shape & 1;
  config.reserve_low_pages = (shape >> 1) & 3;
  config.reserve_high_pages = config.reserve_low_pages + ((shape >> 3) & 7);
  config.chunk_min_pages = (shape & 0x80) ? 2 : 0;  // chunks of any size, or none
  config.chunk_miss_pages = (shape & 0x80) && (shape & 0x08) ? 2 : 0;  // and misses chunked, half the time
  // A quarter of the runs map large misses on the heap's mapper thread (pins wait for pending
  // objects, frees do not). The only thread of the run besides the host streams: the outcome of
  // every check stays the same, only its timing varies.
  config.background_misses = (shape & 0x41) == 0x41;
  // Half of those leave the misses' placement to the mapper (promised pages, no address until
  // placed), half place them on the allocating thread.
  config.mapper_places_misses = (shape & 0x02) != 0;
  // And half of them have pins serve queued misses (the fuzzer's pins make the calls).
  config.pins_serve_misses = (shape & 0x10) != 0;
  // A quarter of the runs place objects over 1 MiB in the copying region (4 MiB chunks, grown on
  // the allocating thread: no keeper thread here), whose holes the compactions close by copies.
  if ((shape & 0x24) == 0x24) {
    config.copy_region_min_bytes = kMiB + 1;
    config.copy_region_chunk_bytes = 4 * kMiB;
  }
  auto backend = std::make_unique<BackendModel<HostBackend>>(HostBackendOptions{.capacity_bytes = kCapacity});
  must(backend->impl().status(), "HostBackend");
  host_ = &backend->impl();
  heap_ = must(Heap::create(std::move(backend), config), "Heap::create");
  if (shape & 0x40) {
    // Alias drops deferred as a keeper's thread defers them, without the thread (the run stays
    // deterministic): they queue until maintain() (op_sync) or an out-of-memory retry unmaps
    // them, and placement takes queued slots meanwhile.
    auto& core = detail::HeapInternals::of(*heap_);
    std::lock_guard lock(core.mu);
    core.pool.set_deferred_drops(true);
  }
  a_ = must(heap_->backend().create_stream(), "create_stream");
  b_ = must(heap_->backend().create_stream(), "create_stream");

  static constexpr const char* kNames[] = {"allocate", "allocate", "free", "resize", "host pin", "host unpin",
                                           "stream rewrite", "stream hold", "stream release", "compact", "sync",
                                           "misuse"};
  for (op_index_ = 0; !in_.done() && op_index_ < kMaxOps; ++op_index_) {
    const std::uint8_t op = in_.u8() % std::size(kNames);
    op_name_ = kNames[op];
    switch (op) {
      case 0:
      case 1: op_allocate(); break;
      case 2: op_free(); break;
      case 3: op_resize(); break;
      case 4: op_host_pin(); break;
      case 5: op_host_unpin(); break;
      case 6: op_stream_rewrite(); break;
      case 7: op_stream_hold(); break;
      case 8: op_stream_release(); break;
      case 9: op_compact(); break;
      case 10: op_sync(); break;
      default: op_misuse(); break;
    }
    must(heap_->validate(), "validate");
  }
  finish();
}

}  // namespace
}  // namespace valet::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  valet::fuzz::FuzzRun(data, size).run();
  return 0;
}
