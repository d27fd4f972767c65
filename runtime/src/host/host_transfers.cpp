// The host backend's queued and synchronous transfers: the batched copy, the pattern fill and
// verify (valet/kernels/pattern.h, as the GPU kernels write them), read and write.
#include "host/host_backend_state.h"

#include "parallel.h"
#include "valet/kernels/pattern.h"

namespace valet {

Status HostBackend::copy(std::span<const CopyRange> ranges, Stream s) {
  auto st = s_->stream(s);
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
  auto st = s_->stream(s);
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
  auto st = s_->stream(s);
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

}  // namespace valet
