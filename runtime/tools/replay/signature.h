// --verify: a signature derived from each object's trace id, written into the object when it is
// allocated and checked when it is freed (and at the end), so that a compaction that moves an
// object without its bytes, or moves it under a pin, shows as a mismatch.
//
// The signature covers the object's first and last 8 bytes (objects of 16 bytes or less: every
// byte) and one 8-byte word in every window of `stride` bytes in between: 4 KiB for objects up to
// 64 KiB, then bytes / 16 rounded up to a power of two, at most 1 MiB, so that every 2 MiB page
// holds at least 2 words and an object at most about 16 of them below 16 MiB. Each word lies at an
// offset inside its window drawn from the id and the window, so that over many objects every
// part of a page is checked. (A word every 4 KiB of every object spent most of a host replay's
// time on the first write to each 4 KiB page in a virtual machine: 55 % of the samples of a
// --verify run, 187 million words on t1; docs/speed.md, "Session 26". A word every 256 KiB of
// large objects, 3.8 million words on t1, still took 27 % of the samples, 2.4 million of the
// words in objects over 16 MiB; with 1 MiB, 2.0 million words; "Session 35". Then the first
// touches still took about 11 µs a word on the 2-core host: 64 windows an object, 2.9 million
// words, made h11's --verify replay 66 s; 16 windows, 1.3 million words, 48 s; "Session 38".)
// What it catches: a page mapped wrong (its
// words), a copy that is missing, short or from the wrong place (the last word, the words'
// offsets and ids are in their bytes), an object swapped with another (the id).
//
// Each range holds the backend's fill pattern (valet/kernels/pattern.h) with a seed derived from
// the id and the range's offset, so the same bytes can be written and checked either through a
// host pin's address or by the backend's batched fill_pattern/verify_pattern (one launch for all
// the ranges of an object, where per-word synchronous write()/read() transfers would cost one
// driver call a word).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "valet/heap.h"

namespace valet::replay {

// Where the signature's bytes go: through the pin's address (host-accessible backends only), or
// through the backend's pattern fill and verify (any backend).
enum class SignaturePath : std::uint8_t { host_address, backend };

class Signatures {
 public:
  Signatures(Heap& heap, SignaturePath path);

  // Pins the object, writes its signature, and unpins it once the bytes are in place.
  Status write(Handle h, std::uint64_t id, std::size_t bytes);
  // Pins the object and counts the bytes of its signature that differ (0: intact).
  Result<std::uint64_t> check(Handle h, std::uint64_t id, std::size_t bytes);

  // The check a pinner makes through its own pin (host-accessible memory only): the first range
  // of the signature at `address`. Bytes that differ.
  static std::uint64_t check_head(const void* address, std::uint64_t id, std::size_t bytes);

  // The signature's ranges, at offsets from the object's start (PatternRange::dst = offset),
  // in increasing order.
  static void ranges_of(std::uint64_t id, std::size_t bytes, std::vector<PatternRange>& out);
  // The window each in-between word lies in (see above).
  static std::size_t stride_of(std::size_t bytes);

 private:

  Heap& heap_;
  SignaturePath path_;
  std::vector<PatternRange> ranges_;  // reused between calls (one replayer thread uses this)
};

}  // namespace valet::replay
