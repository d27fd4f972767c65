// The runtime's data-parallel loop. TBB normally; a plain serial loop in ThreadSanitizer builds,
// because Debian's TBB is not TSan-instrumented and its internals would be reported as races.
#pragma once

#include <cstddef>

#if !defined(VALET_TSAN)
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
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

// Runs `f` inside a task arena of at most `threads` workers, so parallel work started from it
// never takes more of the machine (or the service's threads) than that. Serial under TSan.
template <class F>
void in_bounded_arena(int threads, F&& f) {
#if defined(VALET_TSAN)
  (void)threads;
  f();
#else
  static tbb::task_arena arena(threads);  // the planners' own arena, shared by every engine
  arena.execute(f);
#endif
}

}  // namespace valet
