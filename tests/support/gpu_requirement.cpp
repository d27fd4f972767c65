// Linked into gtest binaries whose CTest entries need a GPU: when CTest sets VALET_REQUIRES_GPU
// and no GPU is usable, prints "skipped: ..." (CTest's skip pattern, tests/CMakeLists.txt) so the
// entry reports Skipped rather than Passed with every test inside it skipped.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "valet/runtime.h"

namespace {

class GpuRequirement : public ::testing::Environment {
 public:
  void SetUp() override {
    if (!std::getenv("VALET_REQUIRES_GPU") || valet::cuda_usable()) return;
    std::printf("skipped: no usable GPU: %s\n", valet::cuda_unusable_reason().c_str());
    std::fflush(stdout);
  }
};

[[maybe_unused]] ::testing::Environment* const registered = ::testing::AddGlobalTestEnvironment(new GpuRequirement);

}  // namespace
