// How valet-serve touches its objects' memory: it writes a pattern into each object and checks it
// later, so that a compaction that moved an object, or a resize, that lost a byte is caught.
//
// Host backend: host code writes and reads the bytes through a Pin. CUDA backend: the backend's
// fill_pattern/verify_pattern kernels through a StreamPin, queued on the serve stream. Reading
// objects through their handles (device-side handle resolution) is the handle sweep's job
// (handle_sweep.h), which runs on the same stream and checks the same bytes.
//
// Small objects are written whole. Larger ones (over kWholeLimit) get a stripe of kStripeBytes
// every kStripeEvery bytes: every 2 MiB page of a large object is still covered, at a CPU cost a
// serving loop can afford. The layout is handle_check.h's, shared with the sweep's kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "handle_check.h"
#include "valet/heap.h"

namespace serve {

class ObjectAccess {
 public:
  static constexpr std::size_t kWholeLimit = serve::kWholeLimit;
  static constexpr std::size_t kStripeEvery = serve::kStripeEvery;
  static constexpr std::size_t kStripeBytes = serve::kStripeBytes;

  // Picks host code where the backend's memory is host-accessible, kernels otherwise.
  static valet::Result<ObjectAccess> open(valet::Heap& heap);
  ObjectAccess(ObjectAccess&&) noexcept;
  ObjectAccess& operator=(ObjectAccess&&) = delete;
  ~ObjectAccess();

  // Writes the pattern of `seed` for an object of `bytes` into h.
  valet::Status write(valet::Handle h, std::size_t bytes, std::uint64_t seed);
  // Checks the part of that pattern lying in [0, limit) (after a shrink or grow, only the kept
  // prefix is meaningful). Returns the number of bytes that differ.
  valet::Result<std::uint64_t> check(valet::Handle h, std::size_t bytes, std::uint64_t seed, std::size_t limit);

  bool on_host() const { return host_; }
  // Where the accesses are queued (CUDA: a stream of the backend; host: Stream{}).
  valet::Stream stream() const { return stream_; }

 private:
  ObjectAccess(valet::Heap& heap, bool host, valet::Stream stream) : heap_(&heap), host_(host), stream_(stream) {}
  // Pattern ranges at `base` for an object of `bytes`, clipped to [0, limit).
  static std::vector<valet::PatternRange> ranges(valet::DevicePtr base, std::size_t bytes, std::uint64_t seed,
                                                 std::size_t limit);
  valet::Status device_fill(valet::Handle h, std::size_t bytes, std::uint64_t seed);
  valet::Result<std::uint64_t> device_verify(valet::Handle h, std::size_t bytes, std::uint64_t seed, std::size_t limit);

  valet::Heap* heap_;
  bool host_;
  valet::Stream stream_;  // CUDA: the stream the kernels run on
};

}  // namespace serve
