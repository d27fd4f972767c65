// Shared pieces of the host tests of libvalet_torch.so: every test goes through the C ABI, on the
// host backend, with a heap made for it and destroyed after it (test_hooks::reset()).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "test_hooks.h"
#include "valet/torch_allocator.h"
#include "valet/types.h"

namespace valet::torch::test {

inline std::string take_string(char* s) {
  std::string out = s ? s : "";
  valet_torch_free_string(s);
  return out;
}

inline std::string last_error() { return take_string(valet_torch_last_error()); }

inline nlohmann::json stats(int device = 0) {
  char* s = valet_torch_stats(device);
  EXPECT_NE(s, nullptr) << last_error();
  return nlohmann::json::parse(take_string(s));
}

inline nlohmann::json compact(int device = 0) {
  char* s = valet_torch_compact(device);
  EXPECT_NE(s, nullptr) << last_error();
  return nlohmann::json::parse(take_string(s));
}

inline nlohmann::json page_map(int device = 0) {
  char* s = valet_torch_page_map(device);
  EXPECT_NE(s, nullptr) << last_error();
  return nlohmann::json::parse(take_string(s));
}

inline void* stream_ptr(std::uintptr_t id) { return reinterpret_cast<void*>(id); }

// A heap of `capacity` on the host backend with the background compactor off (the tests decide
// when compaction runs), and a clean process afterwards.
class TorchHeapTest : public ::testing::Test {
 protected:
  void SetUp() override { use_heap("64MiB", "background=false"); }
  void TearDown() override { EXPECT_EQ(test_hooks::reset(), "") << "a test left allocations live"; }

  void use_heap(const char* capacity, const char* policy) {
    ASSERT_EQ(test_hooks::reset(), "");
    ::setenv("VALET_TORCH_BACKEND", "host", 1);
    ::unsetenv("VALET_TORCH_CAPACITY");
    ::unsetenv("VALET_TORCH_POLICY");
    ::unsetenv("VALET_TORCH_CONTROL");
    ASSERT_EQ(valet_torch_configure(capacity, policy), 0) << last_error();
  }
};

}  // namespace valet::torch::test
