#include "object_patterns.h"

#include <algorithm>

namespace valet::stress {

Status fill_object(Heap& heap, Stream stream, const TrackedObject& o, bool stream_ordered) {
  if (stream_ordered) {
    auto pin = heap.pin(o.handle, stream);
    if (!pin.ok()) return pin.error();
    const PatternRange r{pin->address(), o.size, o.seed};
    Status st = heap.backend().fill_pattern({&r, 1}, stream);
    Status released = pin->release();
    if (!st.ok()) return st;
    return released;
  }
  auto pin = heap.pin(o.handle);
  if (!pin.ok()) return pin.error();
  const PatternRange r{pin->address(), o.size, o.seed};
  VALET_TRY(heap.backend().fill_pattern({&r, 1}, stream));
  // A host pin protects only until it is dropped: the queued fill must be done by then.
  return heap.backend().synchronize_stream(stream);
}

Result<std::uint64_t> count_mismatches(Heap& heap, Stream stream, Handle h, std::size_t expected_size,
                                       std::uint64_t seed, std::size_t bytes) {
  auto pin = heap.pin(h);
  if (!pin.ok()) return pin.error();
  if (pin->size() != expected_size) return std::uint64_t(std::max(expected_size, pin->size()));
  const PatternRange r{pin->address(), std::min(bytes, expected_size), seed};
  return heap.backend().verify_pattern({&r, 1}, stream);
}

bool verify_object(Heap& heap, Stream stream, const TrackedObject& o, const char* context, StressCounters& counters,
                   ErrorSink& errors) {
  auto bad = count_mismatches(heap, stream, o.handle, o.size, o.seed, o.size);
  if (!bad.ok()) {
    errors.report(std::string(context) + ": cannot check " + describe(o), bad.error());
    return false;
  }
  counters.add(counters.bytes_verified, o.size);
  counters.add(counters.objects_verified);
  if (*bad != 0) {
    auto size = heap.size_of(o.handle);
    errors.report(std::string(context) + ": " + std::to_string(*bad) + " bytes differ in " + describe(o) +
                  (size.ok() ? " (heap says size " + std::to_string(*size) + ")" : ""));
    return false;
  }
  return true;
}

bool verify_windows(Heap& heap, Stream stream, const TrackedObject& o, std::size_t window, Rng& rng,
                    const char* context, StressCounters& counters, ErrorSink& errors) {
  if (o.size <= 3 * window) return verify_object(heap, stream, o, context, counters, errors);
  auto pin = heap.pin(o.handle);
  if (pin.ok() && o.fixed_at != 0 && pin->address() != o.fixed_at)
    errors.report(std::string(context) + ": fixed object " + describe(o) + " moved");
  if (!pin.ok() || pin->size() != o.size) {
    errors.report(std::string(context) + ": cannot pin " + describe(o) +
                  (pin.ok() ? " (pin reports size " + std::to_string(pin->size()) + ")" : ": " + pin.error().to_string()));
    return false;
  }
  // Byte i of a range is a function of i alone, so a window at offset `off` (a multiple of 8) of
  // a pattern with seed s is the pattern of seed s + off / 8.
  auto at = [&](std::size_t off) { return PatternRange{pin->address() + off, window, o.seed + off / 8}; };
  const std::size_t last = (o.size - window) & ~std::size_t{7};
  const std::size_t middle = std::uniform_int_distribution<std::size_t>(0, last)(rng) & ~std::size_t{7};
  const PatternRange ranges[] = {at(0), at(middle), at(last)};
  auto bad = heap.backend().verify_pattern(ranges, stream);
  if (!bad.ok() || *bad != 0) {
    errors.report(std::string(context) + ": windows at 0, " + std::to_string(middle) + ", " + std::to_string(last) +
                  " of " + describe(o) + ": " +
                  (bad.ok() ? std::to_string(*bad) + " bytes differ" : bad.error().to_string()));
    return false;
  }
  counters.add(counters.bytes_verified, 3 * window);
  counters.add(counters.objects_verified);
  return true;
}

std::size_t verify_objects(Heap& heap, Stream stream, std::span<const TrackedObject> objects, const char* context,
                           StressCounters& counters, ErrorSink& errors) {
  // Batches bounded in objects and bytes, so that pins stay few and a batch's failure is cheap
  // to narrow down object by object.
  constexpr std::size_t kBatchObjects = 512;
  constexpr std::size_t kBatchBytes = std::size_t{256} << 20;
  std::size_t failed = 0;
  std::vector<Pin> pins;
  std::vector<PatternRange> ranges;
  std::size_t begin = 0;
  while (begin < objects.size()) {
    pins.clear();
    ranges.clear();
    std::size_t end = begin, bytes = 0;
    bool pin_failed = false;
    while (end < objects.size() && ranges.size() < kBatchObjects && (ranges.empty() || bytes < kBatchBytes)) {
      const TrackedObject& o = objects[end++];
      auto pin = heap.pin(o.handle);
      if (!pin.ok() || pin->size() != o.size) {
        pin_failed = true;  // narrowed down below, with a precise message
        break;
      }
      ranges.push_back({pin->address(), o.size, o.seed});
      pins.push_back(std::move(pin).value());
      bytes += o.size;
    }
    auto bad = pin_failed ? Result<std::uint64_t>(make_error(Errc::internal, "pin failed"))
                          : heap.backend().verify_pattern(ranges, stream);
    pins.clear();
    if (bad.ok() && *bad == 0) {
      counters.add(counters.bytes_verified, bytes);
      counters.add(counters.objects_verified, end - begin);
    } else {
      for (std::size_t i = begin; i < end; ++i)
        if (!verify_object(heap, stream, objects[i], context, counters, errors)) ++failed;
    }
    begin = end;
  }
  return failed;
}

}  // namespace valet::stress
