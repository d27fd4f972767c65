// The runtime's data-parallel loop. TBB normally; a plain serial loop in ThreadSanitizer builds,
// because Debian's TBB is not TSan-instrumented and its internals would be reported as races.
#pragma once

#include <cstddef>

#if !defined(VALET_TSAN)
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#endif

namespace valet {

// Calls body(begin, end) over [0, n) in chunks of about `grain` items.
template <class Body>
void parallel_chunks(std::size_t n, std::size_t grain, Body&& body) {
#if defined(VALET_TSAN)
  (void)grain;
  if (n) body(std::size_t{0}, n);
#else
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, grain ? grain : 1),
                    [&](const tbb::blocked_range<std::size_t>& r) { body(r.begin(), r.end()); });
#endif
}

}  // namespace valet
