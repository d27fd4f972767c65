#include "object_access.h"

#include <algorithm>
#include <cstring>

#include "valet/kernels/pattern.h"

namespace serve {

using valet::DevicePtr;
using valet::Handle;
using valet::PatternRange;
using valet::kernels::pattern_byte;
using valet::kernels::pattern_word;

namespace {

void host_fill(const PatternRange& r) {
  auto* p = reinterpret_cast<std::uint8_t*>(r.dst);
  std::size_t i = 0;
  for (; i + 8 <= r.bytes; i += 8) {
    const std::uint64_t w = pattern_word(r.seed, i / 8);  // little-endian: byte k of the word is byte i+k
    std::memcpy(p + i, &w, 8);
  }
  for (; i < r.bytes; ++i) p[i] = pattern_byte(r.seed, i);
}

std::uint64_t host_verify(const PatternRange& r) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(r.dst);
  std::uint64_t bad = 0;
  std::size_t i = 0;
  for (; i + 8 <= r.bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w != pattern_word(r.seed, i / 8))
      for (std::size_t k = 0; k < 8; ++k) bad += p[i + k] != pattern_byte(r.seed, i + k);
  }
  for (; i < r.bytes; ++i) bad += p[i] != pattern_byte(r.seed, i);
  return bad;
}

}  // namespace

valet::Result<ObjectAccess> ObjectAccess::open(valet::Heap& heap) {
  if (heap.backend().capabilities().host_accessible) return ObjectAccess(heap, true, valet::Stream{});
  auto stream = heap.backend().create_stream();
  if (!stream.ok()) return stream.error();
  return ObjectAccess(heap, false, *stream);
}

ObjectAccess::ObjectAccess(ObjectAccess&& o) noexcept : heap_(o.heap_), host_(o.host_), stream_(o.stream_) {
  o.heap_ = nullptr;
}

ObjectAccess::~ObjectAccess() {
  if (heap_ && !host_) (void)heap_->backend().destroy_stream(stream_);
}

std::vector<PatternRange> ObjectAccess::ranges(DevicePtr base, std::size_t bytes, std::uint64_t seed, std::size_t limit) {
  limit = std::min(limit, bytes);
  if (bytes <= kWholeLimit) return limit ? std::vector<PatternRange>{{base, limit, seed}} : std::vector<PatternRange>{};
  // Byte i of the object is pattern_byte(seed, i) in both cases: a stripe at offset o (a multiple
  // of 8) starts word o/8 of the pattern, which is word 0 of seed + o/8.
  std::vector<PatternRange> out;
  for (std::size_t o = 0; o < limit; o += kStripeEvery)
    out.push_back({base + o, std::min(kStripeBytes, limit - o), seed + o / 8});
  return out;
}

valet::Status ObjectAccess::write(Handle h, std::size_t bytes, std::uint64_t seed) {
  if (!host_) return device_fill(h, bytes, seed);
  auto pin = heap_->pin(h);
  if (!pin.ok()) return pin.error();
  for (const auto& r : ranges(pin->address(), bytes, seed, bytes)) host_fill(r);
  return {};
}

valet::Result<std::uint64_t> ObjectAccess::check(Handle h, std::size_t bytes, std::uint64_t seed, std::size_t limit) {
  if (!host_) return device_verify(h, bytes, seed, limit);
  auto pin = heap_->pin(h);
  if (!pin.ok()) return pin.error();
  std::uint64_t bad = 0;
  for (const auto& r : ranges(pin->address(), bytes, seed, limit)) bad += host_verify(r);
  return bad;
}

// The GPU path: kernels through a stream pin, which keeps the object in place until the queued
// work has passed (the pin's release is stream-ordered).
valet::Status ObjectAccess::device_fill(Handle h, std::size_t bytes, std::uint64_t seed) {
  auto pin = heap_->pin(h, stream_);
  if (!pin.ok()) return pin.error();
  const auto rs = ranges(pin->address(), bytes, seed, bytes);
  VALET_TRY(heap_->backend().fill_pattern(rs, stream_));
  return pin->release();
}

valet::Result<std::uint64_t> ObjectAccess::device_verify(Handle h, std::size_t bytes, std::uint64_t seed,
                                                         std::size_t limit) {
  auto pin = heap_->pin(h, stream_);
  if (!pin.ok()) return pin.error();
  const auto rs = ranges(pin->address(), bytes, seed, limit);
  auto bad = heap_->backend().verify_pattern(rs, stream_);
  VALET_TRY(pin->release());
  return bad;
}

}  // namespace serve
