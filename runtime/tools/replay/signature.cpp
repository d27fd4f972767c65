// Writing and checking object signatures (see signature.h).
#include "signature.h"

#include <algorithm>
#include <bit>

#include "valet/kernels/pattern.h"

namespace valet::replay {

namespace {

constexpr std::size_t kWord = 8;
constexpr std::size_t kMinStride = 4096;
constexpr std::size_t kMaxStride = std::size_t{1} << 20;
constexpr std::size_t kWordsPerObject = 16;

// Two objects, or two ranges of one object, get unrelated bytes.
std::uint64_t seed_of(std::uint64_t id, std::size_t offset) {
  return kernels::pattern_mix(id ^ 0x5151'7e57'a11e'd0b5ull) + std::uint64_t(offset) * 0x9e37'79b9ull;
}

// The first `n` bytes of the object's first signature range.
std::size_t head_length(std::size_t bytes) { return bytes <= 2 * kWord ? bytes : kWord; }

}  // namespace

Signatures::Signatures(Heap& heap, SignaturePath path) : heap_(heap), path_(path) {}

std::size_t Signatures::stride_of(std::size_t bytes) {
  // A power of two, so that windows never straddle a 2 MiB page: each page holds 2 MiB / stride.
  return std::clamp(std::bit_ceil(bytes / kWordsPerObject), kMinStride, kMaxStride);
}

void Signatures::ranges_of(std::uint64_t id, std::size_t bytes, std::vector<PatternRange>& out) {
  out.clear();
  if (bytes <= 2 * kWord) {
    out.push_back({0, bytes, seed_of(id, 0)});
    return;
  }
  out.push_back({0, kWord, seed_of(id, 0)});
  // One word in each window [w, w + stride) after the first, at an aligned offset drawn from the
  // id and the window, kept clear of the first and the last word.
  const std::size_t stride = stride_of(bytes), last = bytes - kWord;
  for (std::size_t w = stride; w + kWord <= last; w += stride) {
    const std::size_t room = std::min(stride, last - w) / kWord;  // aligned offsets in the window
    const std::size_t at = w + kernels::pattern_mix(id * 0x2545'f491'4f6c'dd1dull + w) % room * kWord;
    out.push_back({at, kWord, seed_of(id, at)});
  }
  out.push_back({last, kWord, seed_of(id, last)});
}

Status Signatures::write(Handle h, std::uint64_t id, std::size_t bytes) {
  auto pin = heap_.pin(h);
  if (!pin.ok()) return pin.error();
  ranges_of(id, bytes, ranges_);
  if (path_ == SignaturePath::host_address) {
    auto* base = pin->as<std::uint8_t>();
    for (const PatternRange& r : ranges_)
      for (std::size_t i = 0; i < r.bytes; ++i) base[r.dst + i] = kernels::pattern_byte(r.seed, i);
    return {};
  }
  for (PatternRange& r : ranges_) r.dst += pin->address();
  // Stream 0 is the one read()/write() are ordered after. The pin is held until the fill has
  // run, so the object cannot move while the fill may still write its old place.
  const Stream default_stream{};
  VALET_TRY(heap_.backend().fill_pattern(ranges_, default_stream));
  return heap_.backend().synchronize_stream(default_stream);
}

Result<std::uint64_t> Signatures::check(Handle h, std::uint64_t id, std::size_t bytes) {
  auto pin = heap_.pin(h);
  if (!pin.ok()) return pin.error();
  ranges_of(id, bytes, ranges_);
  if (path_ == SignaturePath::host_address) {
    const auto* base = pin->as<const std::uint8_t>();
    std::uint64_t differ = 0;
    for (const PatternRange& r : ranges_)
      for (std::size_t i = 0; i < r.bytes; ++i) differ += base[r.dst + i] != kernels::pattern_byte(r.seed, i);
    return differ;
  }
  for (PatternRange& r : ranges_) r.dst += pin->address();
  return heap_.backend().verify_pattern(ranges_, Stream{});
}

std::uint64_t Signatures::check_head(const void* address, std::uint64_t id, std::size_t bytes) {
  const auto* base = static_cast<const std::uint8_t*>(address);
  const std::uint64_t seed = seed_of(id, 0);
  std::uint64_t differ = 0;
  for (std::size_t i = 0; i < head_length(bytes); ++i) differ += base[i] != kernels::pattern_byte(seed, i);
  return differ;
}

}  // namespace valet::replay
