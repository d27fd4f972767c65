// Executable invariants, in three tiers (the split of mimalloc's internal.h: cheap checks always,
// internal invariants in debug builds, whole-structure walks only where time does not matter).
//
//   VALET_CHECK(cond, msg)     always on, every build. For checks costing a compare or two on
//                              paths that are not hot, where going on would corrupt memory or
//                              hand out a wrong address. `msg` (a const char* or std::string) is
//                              built only on failure.
//   VALET_ASSERT(cond)         preconditions and cheap internal invariants (a bit test, a count).
//                              On in Debug builds (no NDEBUG) and wherever expensive checks are
//                              on; compiled out otherwise (`cond` is not evaluated).
//   VALET_EXPENSIVE_ASSERT(cond)
//                              checks that walk a structure (a free list, a bitmap, a
//                              validate()). On in Debug builds and in builds with the compile
//                              definition VALET_EXPENSIVE_CHECKS=1 (CMake option
//                              VALET_EXPENSIVE_CHECKS, on by default in the libFuzzer build:
//                              tests/fuzz, .ci/fuzz); compiled out otherwise.
//
// The tiers nest: expensive checks on implies assertions on. The lock-order and lock-held checks
// (lock_order.h) follow the expensive tier: they cost a thread-local lookup on every lock.
//
// A failed check prints "valet: invariant failed at FILE:LINE: COND (MSG)" to stderr and aborts:
// these are broken rules of the heap's own code, never bad input (bad input is an Error value).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#if !defined(NDEBUG) || (defined(VALET_EXPENSIVE_CHECKS) && VALET_EXPENSIVE_CHECKS)
#define VALET_EXPENSIVE_CHECKS_ON 1
#else
#define VALET_EXPENSIVE_CHECKS_ON 0
#endif
#define VALET_ASSERTIONS_ON VALET_EXPENSIVE_CHECKS_ON

namespace valet::detail {

inline constexpr bool kAssertions = VALET_ASSERTIONS_ON;
inline constexpr bool kExpensiveChecks = VALET_EXPENSIVE_CHECKS_ON;

[[noreturn, gnu::cold, gnu::noinline]] inline void invariant_failed(const char* file, int line, const char* cond,
                                                                   const char* msg) {
  std::fprintf(stderr, "valet: invariant failed at %s:%d: %s (%s)\n", file, line, cond, msg);
  std::fflush(stderr);
  std::abort();
}

[[noreturn, gnu::cold, gnu::noinline]] inline void invariant_failed(const char* file, int line, const char* cond,
                                                                   const std::string& msg) {
  invariant_failed(file, line, cond, msg.c_str());
}

}  // namespace valet::detail

#define VALET_CHECK(cond, msg)                                                   \
  do {                                                                           \
    if (!(cond)) [[unlikely]]                                                    \
      ::valet::detail::invariant_failed(__FILE__, __LINE__, #cond, (msg));       \
  } while (0)

// Off: `cond` stays an unevaluated operand, so its variables still count as used.
#define VALET_CHECK_OFF_(cond) ((void)sizeof(!(cond)))

#if VALET_ASSERTIONS_ON
#define VALET_ASSERT(cond) VALET_CHECK(cond, "assertion")
#else
#define VALET_ASSERT(cond) VALET_CHECK_OFF_(cond)
#endif

#if VALET_EXPENSIVE_CHECKS_ON
#define VALET_EXPENSIVE_ASSERT(cond) VALET_CHECK(cond, "expensive assertion")
#else
#define VALET_EXPENSIVE_ASSERT(cond) VALET_CHECK_OFF_(cond)
#endif
