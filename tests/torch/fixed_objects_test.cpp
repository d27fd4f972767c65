// Fixed addresses survive a safe-point compaction, and frees are stream-ordered: the two promises
// that let PyTorch keep raw pointers in tensors while Valet meshes pages beneath them.
#include <chrono>
#include <future>
#include <vector>

#include "torch_test_util.h"

namespace valet::torch::test {
namespace {

constexpr std::size_t kObject = 64 * 1024;  // a slab class: 32 objects a page

struct Live {
  std::uint64_t* p;
  std::uint64_t seed;
};

void fill(const Live& o) {
  for (std::size_t i = 0; i < kObject / 8; ++i) o.p[i] = o.seed * 0x9E3779B97F4A7C15ull + i;
}

std::size_t mismatches(const Live& o) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < kObject / 8; ++i) bad += o.p[i] != o.seed * 0x9E3779B97F4A7C15ull + i;
  return bad;
}

using FixedObjects = TorchHeapTest;

TEST_F(FixedObjects, AddressesAndBytesSurviveASafePointCompactionThatMeshes) {
  std::vector<Live> all;
  for (std::uint64_t i = 0; i < 8 * 32; ++i) {
    void* p = valet_torch_malloc(kObject, 0, nullptr);
    ASSERT_NE(p, nullptr) << last_error();
    all.push_back({static_cast<std::uint64_t*>(p), i + 1});
    fill(all.back());
  }
  // Free every other object as a checkerboard over (page, slot): neighbouring pages keep
  // complementary slots, so their pages can be meshed onto one physical page.
  std::vector<Live> kept;
  for (const Live& o : all) {
    const auto a = reinterpret_cast<std::uintptr_t>(o.p);
    if ((a / kPageBytes + (a % kPageBytes) / kObject) % 2) valet_torch_free(o.p, kObject, 0, nullptr);
    else kept.push_back(o);
  }
  ASSERT_EQ(kept.size(), all.size() / 2);
  const auto before = stats();
  EXPECT_EQ(before["allocations"], kept.size());
  EXPECT_EQ(before["fixed_objects"], kept.size());

  const auto record = compact();
  EXPECT_EQ(record["active"], true);
  EXPECT_GT(record["pages_meshed"].get<std::uint64_t>(), 0u) << record.dump();
  EXPECT_EQ(record["objects_moved"], 0u) << "a fixed object moved";
  // Each meshed page gave its physical page back (to the reserve, or to the backend above it).
  const auto after = stats();
  EXPECT_EQ(after["heap"]["pages"]["meshed"], record["pages_meshed"]);
  EXPECT_EQ(after["heap"]["pages"]["slab"].get<std::uint64_t>(),
            before["heap"]["pages"]["slab"].get<std::uint64_t>() - record["pages_meshed"].get<std::uint64_t>());

  // Same addresses (the pointers themselves), same bytes.
  for (const Live& o : kept) ASSERT_EQ(mismatches(o), 0u) << "object at " << o.p << " changed";
  std::size_t meshed_slots = 0;
  const auto map = page_map();
  for (const auto& page : map["pages"]) meshed_slots += page["kind"] == "meshed";
  EXPECT_EQ(meshed_slots, record["pages_meshed"].get<std::size_t>());
  EXPECT_EQ(test_hooks::validate(0), "");

  // Writes after meshing land where later reads find them, object by object.
  for (Live& o : kept) {
    o.seed += 1000;
    fill(o);
  }
  for (const Live& o : kept) ASSERT_EQ(mismatches(o), 0u);
  for (const Live& o : kept) valet_torch_free(o.p, kObject, 0, nullptr);
  EXPECT_EQ(stats()["allocated_bytes"], 0u);
}

TEST_F(FixedObjects, CompactionWithoutAHeapSaysSo) {
  const auto record = compact(5);
  EXPECT_EQ(record["active"], false);
  EXPECT_EQ(record["device"], 5);
  EXPECT_EQ(stats(5)["active"], false);
}

// A gate: a host task on a stream that holds the stream until open() (a kernel still running).
class Gate {
 public:
  Gate(int device, std::uintptr_t stream) {
    EXPECT_TRUE(test_hooks::enqueue_host_task(device, stream, [f = open_.get_future().share()] { f.wait(); }))
        << last_error();
  }
  ~Gate() { open(); }
  void open() {
    if (!opened_) open_.set_value();
    opened_ = true;
  }

 private:
  std::promise<void> open_;
  bool opened_ = false;
};

using StreamOrder = TorchHeapTest;

TEST_F(StreamOrder, TheFreeingStreamReusesAtOnceOtherStreamsOnlyAfterItsWorkCompleted) {
  void* first = valet_torch_malloc(kObject, 0, nullptr);  // makes the heap
  ASSERT_NE(first, nullptr) << last_error();
  const std::uintptr_t s = test_hooks::create_stream(0), t = test_hooks::create_stream(0);
  ASSERT_NE(s, 0u) << last_error();
  ASSERT_NE(t, 0u) << last_error();
  {
    Gate gate(0, s);  // S is busy: a kernel queued before the free still runs
    void* p = valet_torch_malloc(kObject, 0, stream_ptr(s));
    ASSERT_NE(p, nullptr);
    valet_torch_free(p, kObject, 0, stream_ptr(s));
    // S itself may take the memory back at once: its later work runs after the earlier work.
    void* again = valet_torch_malloc(kObject, 0, stream_ptr(s));
    EXPECT_EQ(again, p);
    valet_torch_free(again, kObject, 0, stream_ptr(s));
    // T must not: its kernels could run while S's still use the memory.
    std::vector<void*> on_t;
    for (int i = 0; i < 64; ++i) {
      on_t.push_back(valet_torch_malloc(kObject, 0, stream_ptr(t)));
      ASSERT_NE(on_t.back(), nullptr);
      EXPECT_NE(on_t.back(), p) << "stream T got memory whose free on S has not been reached";
    }
    EXPECT_GE(stats()["stream_cached_bytes"].get<std::uint64_t>(), kObject);
    for (void* q : on_t) valet_torch_free(q, kObject, 0, stream_ptr(t));
    gate.open();
  }
  ASSERT_TRUE(test_hooks::synchronize_stream(0, s));
  ASSERT_TRUE(test_hooks::synchronize_stream(0, t));
  // Once S passed the free, the memory goes back to every stream (a safe point collects it).
  (void)compact();
  EXPECT_EQ(stats()["stream_cached_bytes"], 0u);
  EXPECT_EQ(test_hooks::validate(0), "");
  valet_torch_free(first, kObject, 0, nullptr);
  EXPECT_TRUE(test_hooks::destroy_stream(0, s));
  EXPECT_TRUE(test_hooks::destroy_stream(0, t));
}

}  // namespace
}  // namespace valet::torch::test
