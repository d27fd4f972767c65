// The CUDA backend's staging buffers: pinned host memory and a device buffer of the same size, in
// which batched copy/fill/verify stage their items (cuda_batched.cpp) before one kernel reads them.
//
// A small pool, reused once an event recorded after the work that read a buffer has completed. It
// grows up to kMaxStagingBuffers buffers; past that, and when memory is short, callers wait for the
// oldest work. A few buffers are made when the backend opens, so that batches keep working once
// the heap has taken (almost) all device memory.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda/cuda_driver.h"

namespace valet::cuda {

// A staging buffer holds a 16-byte header (the verify kernel's mismatch counter, then padding)
// followed by the items of one launch.
inline constexpr std::size_t kHeaderBytes = 16;
inline constexpr std::size_t kMinStagingBytes = std::size_t{64} << 10;
inline constexpr std::size_t kInitialStagingBytes = std::size_t{1} << 20;
inline constexpr std::size_t kMaxStagingBytes = std::size_t{8} << 20;  // 349525 copy items, 262143 pattern items
inline constexpr std::size_t kInitialStagingBuffers = 2;
inline constexpr std::size_t kMaxStagingBuffers = 16;

// Pinned host memory and a device buffer of the same size, with the events that say when the
// upload has completed and when all work reading them has.
struct Staging {
  void* host = nullptr;
  CUdeviceptr dev = 0;
  std::size_t capacity = 0;
  CUevent uploaded = nullptr;
  CUevent done = nullptr;
  bool in_use = false;   // owned by a caller (guarded by the pool's mutex)
  bool pending = false;  // `done` was recorded after work that reads the buffer, not yet seen complete
};

// Every call needs the backend's context current on the calling thread.
class StagingPool {
 public:
  StagingPool() = default;
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // Makes the first kInitialStagingBuffers buffers of kInitialStagingBytes.
  Status open(const Driver& d);
  // Waits for the work still reading each buffer, then frees them all. Nothing may use the pool
  // afterwards (the backend is closing).
  void close();

  // Takes a staging buffer of at least `want` bytes (<= kMaxStagingBytes), or, when memory is
  // short, one of at least `need` bytes. The caller owns it until release(). Idle buffers whose
  // work has completed are reused; the pool grows up to kMaxStagingBuffers; past that the call
  // waits for the oldest work it finds.
  Result<Staging*> acquire(std::size_t want, std::size_t need);
  void release(Staging* b);

 private:
  Result<std::unique_ptr<Staging>> make(std::size_t capacity);
  // Precondition: no work reads the buffer any more.
  void free(Staging& b);

  const Driver* d_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Staging>> pool_;
};

}  // namespace valet::cuda
