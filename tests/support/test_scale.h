// The long random and racing tests take fewer operations under the sanitizers: `.ci/sanitize`
// sets VALET_TEST_SCALE=4, and scaled_ops(n) is then n / 4 (at least 1). Each instrumented
// access costs 5-20x there, most of these tests' time is filling and checking bytes, and the
// operations dropped are more of the same kinds: the sanitizers still see every kind of operation,
// every thread and every background thread. The plain build (`.ci/test`) runs them in full.
#pragma once

#include <cstdlib>

namespace valet::test {

inline int test_scale() {
  const char* v = std::getenv("VALET_TEST_SCALE");
  const long s = v ? std::strtol(v, nullptr, 10) : 1;
  return s > 1 ? int(s) : 1;
}

inline int scaled_ops(int n) { return n / test_scale() > 0 ? n / test_scale() : 1; }

}  // namespace valet::test
