// Pin::as<T>() hands out host pointers only where the backend's memory is host-accessible.
#include <cstring>

#include "heap_test_util.h"
#include "valet/host_backend.h"

namespace valet::test {
namespace {

// The host emulation reporting host_accessible = false, as CUDA device memory does: the memory
// is still the host's, so the test can tell that as<T>() refused rather than faulted.
class DeviceOnlyHost : public HostBackend {
 public:
  using HostBackend::HostBackend;
  Capabilities capabilities() const {
    Capabilities c = HostBackend::capabilities();
    c.host_accessible = false;
    return c;
  }
};

TEST(PinAccess, HostBackendGivesTypedHostPointers) {
  auto heap = make_heap();
  auto h = heap->allocate(4096);
  ASSERT_TRUE(h.ok());
  auto pin = heap->pin(*h);
  ASSERT_TRUE(pin.ok());
  EXPECT_TRUE(pin->host_accessible());
  ASSERT_NE(pin->as<std::uint32_t>(), nullptr);
  EXPECT_EQ(reinterpret_cast<DevicePtr>(pin->as<std::uint32_t>()), pin->address());
  EXPECT_EQ(pin->span<std::uint32_t>().size(), 4096 / sizeof(std::uint32_t));
  std::memset(pin->as<void>(), 0x5a, pin->size());
  EXPECT_EQ(pin->span<std::uint8_t>()[4095], 0x5a);
  pin->reset();
  EXPECT_FALSE(pin->host_accessible());
  EXPECT_EQ(pin->as<std::uint32_t>(), nullptr);
  EXPECT_TRUE(pin->span<std::uint32_t>().empty());
  EXPECT_TRUE(heap->free(*h).ok());
}

TEST(PinAccess, BackendWithoutHostAccessGivesNoHostPointer) {
  auto backend = std::make_unique<BackendModel<DeviceOnlyHost>>(HostBackendOptions{.capacity_bytes = 64 * kMiB});
  ASSERT_TRUE(backend->impl().status().ok());
  ASSERT_FALSE(backend->capabilities().host_accessible);
  auto heap = Heap::create(std::move(backend), host_config(64 * kMiB));
  ASSERT_TRUE(heap.ok()) << heap.error().to_string();
  for (std::size_t bytes : {std::size_t{256}, 3 * kPage}) {  // a slab object and a large one
    auto h = (*heap)->allocate(bytes);
    ASSERT_TRUE(h.ok());
    auto pin = (*heap)->pin(*h);
    ASSERT_TRUE(pin.ok());
    EXPECT_NE(pin->address(), DevicePtr{0});  // the address is there for device code
    EXPECT_FALSE(pin->host_accessible());
    EXPECT_EQ(pin->as<float>(), nullptr);
    EXPECT_EQ(pin->as<void>(), nullptr);
    EXPECT_TRUE(pin->span<float>().empty());
    pin->reset();
    EXPECT_TRUE((*heap)->free(*h).ok());
  }
  EXPECT_TRUE((*heap)->validate().ok());
}

}  // namespace
}  // namespace valet::test
