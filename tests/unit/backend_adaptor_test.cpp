// BackendAdaptor and the fault injector built on it: every door call reaches the hook once, under
// its own DriverOp; a hook's error fails the call without forwarding it; the tools pass unhooked.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "valet/backend_adaptor.h"
#include "valet/driver_op.h"
#include "valet/fault_injection.h"
#include "valet/host_backend.h"

namespace valet {
namespace {

using HostModel = BackendModel<HostBackend>;

std::unique_ptr<HostModel> make_host_model(std::size_t pages = 8) {
  auto b = std::make_unique<HostModel>(HostBackendOptions{.capacity_bytes = pages * kPageBytes});
  EXPECT_TRUE(b->impl().status().ok());
  return b;
}

// Records every hook call; refuses the ops in `refused` with invalid_state.
class RecordingAdaptor final : public BackendAdaptor {
 public:
  using BackendAdaptor::BackendAdaptor;
  std::vector<DriverOp> seen;
  std::set<DriverOp> refused;

 protected:
  Status before(DriverOp op) override {
    seen.push_back(op);
    if (refused.count(op)) return make_error(Errc::invalid_state, std::string("refused ") + driver_op_name(op));
    return {};
  }
};

TEST(DriverOp, EveryOperationHasItsOwnName) {
  std::set<std::string> names;
  for (std::size_t i = 0; i < kDriverOpCount; ++i) {
    const std::string name = driver_op_name(DriverOp(i));
    EXPECT_NE(name, "?") << i;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), kDriverOpCount);
  EXPECT_STREQ(driver_op_name(DriverOp::count), "?");
}

// One call of each door operation, in DriverOp order: the hook sees each under its own value.
TEST(BackendAdaptor, EachDoorCallReachesTheHookOnceUnderItsOwnOp) {
  RecordingAdaptor a(make_host_model());
  ASSERT_TRUE(a.memory_info().ok());
  auto va = a.reserve(2 * kPageBytes);
  ASSERT_TRUE(va.ok());
  ASSERT_TRUE(a.unreserve(*va, 2 * kPageBytes).ok());
  va = a.inner().reserve(kPageBytes);  // not through the adaptor: unseen
  ASSERT_TRUE(va.ok());
  auto page = a.create_page();
  ASSERT_TRUE(page.ok());
  auto spare = a.inner().create_page();
  ASSERT_TRUE(a.release_page(*spare).ok());
  ASSERT_TRUE(a.map(*va, *page).ok());
  ASSERT_TRUE(a.unmap(*va, kPageBytes).ok());
  ASSERT_TRUE(a.inner().map(*va, *page).ok());
  ASSERT_TRUE(a.set_access(*va, kPageBytes).ok());
  auto s = a.create_stream();
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(a.destroy_stream(*s).ok());
  ASSERT_TRUE(a.synchronize_stream(Stream{}).ok());
  auto e = a.create_event();
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE(a.destroy_event(*e).ok());
  e = a.inner().create_event();
  ASSERT_TRUE(a.record_event(*e, Stream{}).ok());
  ASSERT_TRUE(a.query_event(*e).ok());
  ASSERT_TRUE(a.synchronize_event(*e).ok());
  CopyRange c{*va, *va + kPageBytes / 2, 64};
  ASSERT_TRUE(a.copy({&c, 1}, Stream{}).ok());
  const std::uint64_t word = 42;
  ASSERT_TRUE(a.write(*va, &word, 8).ok());

  std::vector<DriverOp> expected;
  for (std::size_t i = 0; i < kDriverOpCount; ++i) expected.push_back(DriverOp(i));
  EXPECT_EQ(a.seen, expected);

  // Properties and tools are not driver calls of the door: no hook.
  a.seen.clear();
  EXPECT_EQ(a.granularity(), kPageBytes);
  EXPECT_TRUE(a.capabilities().host_accessible);
  EXPECT_EQ(a.kind(), BackendKind::host);
  EXPECT_EQ(a.name(), a.inner().name());
  PatternRange r{*va, kPageBytes, 5};
  ASSERT_TRUE(a.fill_pattern({&r, 1}, Stream{}).ok());
  EXPECT_EQ(*a.verify_pattern({&r, 1}, Stream{}), 0u);
  std::uint64_t back = 0;
  ASSERT_TRUE(a.read(&back, *va, 8).ok());
  ASSERT_TRUE(a.stream_wait_event(Stream{}, *e).ok());
  EXPECT_TRUE(a.seen.empty());

  ASSERT_TRUE(a.inner().destroy_event(*e).ok());
  ASSERT_TRUE(a.inner().unmap(*va, kPageBytes).ok());
  ASSERT_TRUE(a.inner().release_page(*page).ok());
  ASSERT_TRUE(a.inner().unreserve(*va, kPageBytes).ok());
}

TEST(BackendAdaptor, HookErrorFailsTheCallWithoutForwardingIt) {
  auto host = make_host_model();
  HostBackend& raw = host->impl();
  RecordingAdaptor a(std::move(host));
  a.refused = {DriverOp::create_page, DriverOp::reserve, DriverOp::map};

  auto page = a.create_page();
  ASSERT_FALSE(page.ok());
  EXPECT_EQ(page.code(), Errc::invalid_state);
  EXPECT_EQ(page.error().message, "refused create_page");
  EXPECT_EQ(raw.pages_in_use(), 0u) << "the refused call reached the backend";
  EXPECT_EQ(a.reserve(kPageBytes).code(), Errc::invalid_state);

  auto va = raw.reserve(kPageBytes);
  auto p = raw.create_page();
  ASSERT_TRUE(va.ok() && p.ok());
  EXPECT_EQ(a.map(*va, *p).code(), Errc::invalid_state);
  // Not mapped: the inner backend refuses set_access, and unmap, on an unmapped page.
  EXPECT_EQ(raw.set_access(*va, kPageBytes).code(), Errc::invalid_state);
  a.refused.clear();
  ASSERT_TRUE(a.map(*va, *p).ok());
  ASSERT_TRUE(a.unmap(*va, kPageBytes).ok());
  ASSERT_TRUE(a.release_page(*p).ok());
  ASSERT_TRUE(a.unreserve(*va, kPageBytes).ok());
  EXPECT_EQ(raw.pages_in_use(), 0u);
}

TEST(FaultInjectingBackend, FailNthFailsExactlyThatCallOfThatOp) {
  FaultInjectingBackend f(make_host_model());
  EXPECT_EQ(f.name().rfind("fault-injecting host", 0), 0u) << f.name();
  f.fail_nth(FaultOp::create_page, 3);
  std::vector<PhysicalPage> pages;
  std::vector<Errc> results;
  for (int i = 0; i < 5; ++i) {
    auto p = f.create_page();
    results.push_back(p.code());
    if (p.ok()) pages.push_back(*p);
  }
  EXPECT_EQ(results, (std::vector<Errc>{Errc::ok, Errc::ok, Errc::driver_error, Errc::ok, Errc::ok}));
  EXPECT_EQ(f.calls(FaultOp::create_page), 5u);
  EXPECT_EQ(f.faults(FaultOp::create_page), 1u);
  EXPECT_EQ(f.total_faults(), 1u);
  EXPECT_EQ(f.calls(FaultOp::release_page), 0u);
  for (auto p : pages) ASSERT_TRUE(f.release_page(p).ok());
  EXPECT_EQ(f.calls(FaultOp::release_page), 4u);
  EXPECT_EQ(static_cast<HostModel&>(f.inner()).impl().pages_in_use(), 0u);
}

// Every door operation can be failed, not only the ones the heap's fault tests sweep.
TEST(FaultInjectingBackend, AnyDoorOperationCanBeFailed) {
  FaultInjectingBackend f(make_host_model());
  auto e = f.create_event();
  ASSERT_TRUE(e.ok());
  f.fail_nth(FaultOp::synchronize_event, 1);
  auto st = f.synchronize_event(*e);
  EXPECT_EQ(st.code(), Errc::driver_error);
  EXPECT_NE(st.error().message.find("injected fault in synchronize_event (call 1)"), std::string::npos)
      << st.error().message;
  EXPECT_TRUE(f.synchronize_event(*e).ok()) << "one armed fault fires once";
  f.fail_nth(FaultOp::write, 1);
  EXPECT_EQ(f.write(0, nullptr, 0).code(), Errc::driver_error);
  EXPECT_EQ(f.total_faults(), 2u);
  ASSERT_TRUE(f.destroy_event(*e).ok());
}

TEST(FaultInjectingBackend, RandomFaultsRepeatWithTheSeedAndDisarm) {
  auto pattern = [](std::uint64_t seed) {
    FaultInjectingBackend f(make_host_model());
    f.fail_randomly(FaultOp::memory_info, 0.5, seed);
    std::string outcome;
    for (int i = 0; i < 64; ++i) outcome += f.memory_info().ok() ? '.' : 'x';
    f.disarm_all();
    for (int i = 0; i < 16; ++i) EXPECT_TRUE(f.memory_info().ok());
    EXPECT_EQ(f.calls(FaultOp::memory_info), 80u);
    return outcome;
  };
  const std::string a = pattern(7), b = pattern(7);
  EXPECT_EQ(a, b);
  EXPECT_NE(a.find('x'), std::string::npos);
  EXPECT_NE(a.find('.'), std::string::npos);
}

TEST(FaultInjectingBackend, DelayedCallsWaitBeforeForwarding) {
  FaultInjectingBackend f(make_host_model());
  // Long enough that a loaded machine's scheduling noise cannot stand in for it.
  constexpr auto kDelay = std::chrono::milliseconds(200);
  f.delay_calls(FaultOp::query_event, kDelay);
  auto e = f.create_event();
  ASSERT_TRUE(e.ok());
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(f.query_event(*e).ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, kDelay);
  f.disarm_all();
  start = std::chrono::steady_clock::now();
  ASSERT_TRUE(f.query_event(*e).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, kDelay);
  ASSERT_TRUE(f.destroy_event(*e).ok());
}

}  // namespace
}  // namespace valet
