// What goes wrong, said clearly and harmlessly: foreign pointers, double frees and wrong sizes get
// one line on stderr and change nothing; out-of-memory and bad settings return NULL (PyTorch then
// raises its out-of-memory error) and never abort the process.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include <gmock/gmock.h>

#include "torch_test_util.h"

namespace valet::torch::test {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::size_t lines(const std::string& s) { return std::size_t(std::count(s.begin(), s.end(), '\n')); }

// The figures a bad free must leave alone.
nlohmann::json figures() {
  const auto s = stats();
  return {s["allocations"], s["allocated_bytes"], s["allocated_rounded_bytes"], s["fixed_objects"], s["fixed_bytes"]};
}

using Errors = TorchHeapTest;

TEST_F(Errors, ForeignPointersDoubleFreesAndWrongSizesAreReportedAndChangeNothing) {
  void* p = valet_torch_malloc(1000, 0, nullptr);
  void* q = valet_torch_malloc(3 << 20, 0, nullptr);
  ASSERT_NE(p, nullptr) << last_error();
  ASSERT_NE(q, nullptr) << last_error();
  const auto before = figures();
  std::uint64_t local[8] = {};

  struct Case {
    void* ptr;
    std::size_t size;
    int device;
    const char* says;
  };
  const Case cases[] = {
      {local, sizeof local, 0, "is not a live allocation of device 0"},
      {static_cast<char*>(p) + 512, 488, 0, "is not a live allocation"},  // inside an object
      {p, 1024, 0, "was allocated with 1000 bytes but freed with 1024"},
      {q, 1000, 0, "was allocated with 3145728 bytes"},
      {p, 1000, 3, "device 3 has no Valet heap"},
  };
  for (const Case& c : cases) {
    ::testing::internal::CaptureStderr();
    valet_torch_free(c.ptr, c.size, c.device, nullptr);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_THAT(err, HasSubstr("valet_torch_free: ")) << c.says;
    EXPECT_THAT(err, HasSubstr(c.says));
    EXPECT_EQ(lines(err), 1u) << err;
    EXPECT_THAT(last_error(), HasSubstr(c.says));
    EXPECT_EQ(figures(), before);
    EXPECT_EQ(test_hooks::validate(0), "");
  }
  // The wrong-device free names the device the pointer belongs to.
  ::testing::internal::CaptureStderr();
  valet_torch_free(p, 1000, 3, nullptr);
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("it is a live allocation of device 0"));

  ::testing::internal::CaptureStderr();
  valet_torch_free(p, 1000, 0, nullptr);  // the right free: silent
  valet_torch_free(nullptr, 123, 0, nullptr);  // NULL: a no-op
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  const auto after_free = figures();

  ::testing::internal::CaptureStderr();
  valet_torch_free(p, 1000, 0, nullptr);  // the double free
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("valet_torch_free: "));
  EXPECT_THAT(err, HasSubstr("freed already"));
  EXPECT_EQ(lines(err), 1u);
  EXPECT_EQ(figures(), after_free);
  EXPECT_EQ(test_hooks::validate(0), "");
  valet_torch_free(q, 3 << 20, 0, nullptr);
  EXPECT_EQ(stats()["allocations"], 0u);
}

TEST_F(Errors, OutOfMemoryReturnsNullAndTheHeapStaysUsable) {
  use_heap("16MiB", "background=false");
  EXPECT_EQ(valet_torch_malloc(0, 0, nullptr), nullptr);  // size 0: NULL, no heap needed
  EXPECT_EQ(valet_torch_malloc(64 << 20, 0, nullptr), nullptr);
  EXPECT_THAT(last_error(), HasSubstr("out_of_memory"));
  std::vector<void*> held;
  for (int i = 0; i < 64; ++i) {  // 16 MiB holds fewer than 16 objects of 1 MiB + 512
    void* p = valet_torch_malloc((1 << 20) + 512, 0, nullptr);
    if (!p) break;
    held.push_back(p);
  }
  EXPECT_GT(held.size(), 0u);
  EXPECT_LT(held.size(), 16u);
  EXPECT_THAT(last_error(), HasSubstr("out_of_memory"));
  EXPECT_GT(stats()["heap"]["ops"]["failed_allocations"].get<std::uint64_t>(), 0u);
  for (void* p : held) valet_torch_free(p, (1 << 20) + 512, 0, nullptr);
  void* again = valet_torch_malloc(8 << 20, 0, nullptr);
  EXPECT_NE(again, nullptr) << last_error();
  valet_torch_free(again, 8 << 20, 0, nullptr);
  EXPECT_EQ(test_hooks::validate(0), "");
}

TEST_F(Errors, TheThrowingEntryPointRaisesOutOfMemoryAndLosesNothing) {
  use_heap("16MiB", "background=false");
  EXPECT_EQ(valet_torch_malloc_or_throw(0, 0, nullptr), nullptr);  // size 0: NULL, as PyTorch expects
  void* p = valet_torch_malloc_or_throw(4 << 20, 0, nullptr);
  ASSERT_NE(p, nullptr);
  try {
    (void)valet_torch_malloc_or_throw(64 << 20, 0, nullptr);
    ADD_FAILURE() << "64 MiB from a 16 MiB heap did not throw";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), StartsWith("CUDA out of memory. Tried to allocate 67108864 bytes on device 0"));
    EXPECT_THAT(e.what(), HasSubstr("out_of_memory"));
  }
  EXPECT_EQ(stats()["allocations"], 1u);  // the live object is untouched
  valet_torch_free(p, 4 << 20, 0, nullptr);
  void* again = valet_torch_malloc_or_throw(12 << 20, 0, nullptr);
  EXPECT_NE(again, nullptr);
  valet_torch_free(again, 12 << 20, 0, nullptr);
  EXPECT_EQ(test_hooks::validate(0), "");
}

TEST_F(Errors, BadSettingsFailTheAllocationWithALineNamingTheVariable) {
  ASSERT_EQ(test_hooks::reset(), "");
  ::setenv("VALET_TORCH_CAPACITY", "lots", 1);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(valet_torch_malloc(4096, 0, nullptr), nullptr);
  EXPECT_EQ(valet_torch_malloc(4096, 0, nullptr), nullptr);  // the same failure is printed once
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("VALET_TORCH_CAPACITY='lots'"));
  EXPECT_EQ(lines(err), 1u) << err;
  EXPECT_THAT(last_error(), HasSubstr("VALET_TORCH_CAPACITY"));

  ::setenv("VALET_TORCH_CAPACITY", "32MiB", 1);
  ::setenv("VALET_TORCH_POLICY", "background=false,no_such_key=1", 1);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(valet_torch_malloc(4096, 0, nullptr), nullptr);
  err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("VALET_TORCH_POLICY"));
  EXPECT_THAT(err, HasSubstr("no_such_key"));

  ::setenv("VALET_TORCH_POLICY", "background=false", 1);
  ::setenv("VALET_TORCH_BACKEND", "tpu", 1);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(valet_torch_malloc(4096, 0, nullptr), nullptr);
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("VALET_TORCH_BACKEND='tpu'"));

  // Fixed, the environment works on the next call; the heap has the capacity it names.
  ::setenv("VALET_TORCH_BACKEND", "host", 1);
  void* p = valet_torch_malloc(4096, 0, nullptr);
  ASSERT_NE(p, nullptr) << last_error();
  EXPECT_EQ(stats()["capacity_bytes"], 32u << 20);
  valet_torch_free(p, 4096, 0, nullptr);
  EXPECT_EQ(valet_torch_malloc(1, -1, nullptr), nullptr);
  EXPECT_THAT(last_error(), HasSubstr("out of range"));
}

TEST_F(Errors, ConfigureChecksItsValuesAndComesBeforeTheFirstAllocation) {
  ASSERT_EQ(test_hooks::reset(), "");
  EXPECT_EQ(valet_torch_configure("12 parsecs", nullptr), -1);
  EXPECT_THAT(last_error(), HasSubstr("capacity='12 parsecs'"));
  EXPECT_EQ(valet_torch_configure(nullptr, "fragmentation_threshold=7"), -1);
  EXPECT_THAT(last_error(), HasSubstr("fragmentation_threshold"));
  EXPECT_EQ(valet_torch_configure(nullptr, "background"), -1);
  EXPECT_THAT(last_error(), HasSubstr("not key=value"));
  // A fraction of the device: the host backend emulates 2 GiB by default.
  ::unsetenv("VALET_TORCH_CAPACITY");
  ASSERT_EQ(valet_torch_configure("0.25", "background=false, max_occupancy=0.5"), 0) << last_error();
  void* p = valet_torch_malloc(512, 0, nullptr);
  ASSERT_NE(p, nullptr) << last_error();
  EXPECT_EQ(stats()["capacity_bytes"], 512u << 20);
  EXPECT_EQ(valet_torch_configure("1GiB", nullptr), -1);
  EXPECT_THAT(last_error(), HasSubstr("before the first allocation"));
  valet_torch_free(p, 512, 0, nullptr);
}

}  // namespace
}  // namespace valet::torch::test
