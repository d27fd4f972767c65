// --verify's signatures (signature.h) on the host backend: what they must catch. An intact object
// checks clean through both paths; a page of a large object overwritten (a page mapped wrong),
// its last bytes lost (a short copy), or another object's signature in its place (a swap) are
// each found; every 2 MiB page holds words, and a large object's words stay few.
#include "signature.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "valet/runtime.h"

namespace valet::replay {
namespace {

constexpr std::size_t kPage = std::size_t{2} << 20;

class SignatureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BackendOptions b;
    b.choice = BackendChoice::host;
    Config c;
    c.capacity = std::size_t{256} << 20;
    auto h = open_heap(b, c);
    ASSERT_TRUE(h.ok()) << h.error().to_string();
    heap_ = std::move(*h);
  }
  void TearDown() override { ASSERT_TRUE(heap_->validate().ok()); }

  Handle make(std::size_t bytes) {
    auto h = heap_->allocate(bytes);
    EXPECT_TRUE(h.ok());
    return *h;
  }
  // The object's bytes through a pin, for the test to damage.
  template <class F>
  void touch(Handle h, F&& f) {
    auto pin = heap_->pin(h);
    ASSERT_TRUE(pin.ok());
    f(pin->as<std::uint8_t>());
  }
  std::uint64_t differ(Signatures& s, Handle h, std::uint64_t id, std::size_t bytes) {
    auto d = s.check(h, id, bytes);
    EXPECT_TRUE(d.ok());
    return d.ok() ? *d : 0;
  }

  std::unique_ptr<Heap> heap_;
};

TEST_F(SignatureTest, AnIntactObjectChecksCleanThroughEitherPath) {
  Signatures host(*heap_, SignaturePath::host_address), backend(*heap_, SignaturePath::backend);
  for (const std::size_t bytes : {std::size_t{1}, std::size_t{16}, std::size_t{17}, std::size_t{4100}, std::size_t{3} << 20,
                                  (std::size_t{40} << 20) + 12345}) {
    const Handle h = make(bytes);
    ASSERT_TRUE(host.write(h, 7, bytes).ok());
    EXPECT_EQ(differ(host, h, 7, bytes), 0u) << bytes;
    EXPECT_EQ(differ(backend, h, 7, bytes), 0u) << bytes;  // the same bytes, whichever wrote them
    ASSERT_TRUE(heap_->free(h).ok());
  }
}

TEST_F(SignatureTest, EveryPageOfALargeObjectIsChecked) {
  const std::size_t bytes = (std::size_t{40} << 20) + 4000;
  Signatures s(*heap_, SignaturePath::host_address);
  const Handle h = make(bytes);
  ASSERT_TRUE(s.write(h, 11, bytes).ok());
  std::vector<std::uint8_t> saved;
  for (std::size_t page = 0; page * kPage < bytes; ++page) {
    const std::size_t at = page * kPage, n = std::min(kPage, bytes - at);
    // A wrong page mapped there: other bytes in all of it.
    touch(h, [&](std::uint8_t* p) {
      saved.assign(p + at, p + at + n);
      std::memset(p + at, 0xa5, n);
    });
    EXPECT_GT(differ(s, h, 11, bytes), 0u) << "page " << page;
    touch(h, [&](std::uint8_t* p) { std::memcpy(p + at, saved.data(), n); });
    EXPECT_EQ(differ(s, h, 11, bytes), 0u) << "page " << page;
  }
  ASSERT_TRUE(heap_->free(h).ok());
}

TEST_F(SignatureTest, AShortCopyAndASwappedObjectAreFound) {
  const std::size_t bytes = std::size_t{9} << 20;
  Signatures s(*heap_, SignaturePath::host_address);
  const Handle a = make(bytes), b = make(bytes);
  ASSERT_TRUE(s.write(a, 1, bytes).ok());
  ASSERT_TRUE(s.write(b, 2, bytes).ok());
  EXPECT_GT(differ(s, a, 2, bytes), 0u);  // b's signature where a's should be
  touch(a, [&](std::uint8_t* p) { std::memset(p + bytes - 8, 0, 8); });  // the copy stopped 8 bytes short
  EXPECT_GT(differ(s, a, 1, bytes), 0u);
  EXPECT_EQ(differ(s, b, 2, bytes), 0u);
  ASSERT_TRUE(heap_->free(a).ok());
  ASSERT_TRUE(heap_->free(b).ok());
}

TEST(SignatureLayout, WordsCoverEveryPageAndStayFew) {
  std::vector<PatternRange> r;
  for (const std::size_t bytes : {std::size_t{100}, std::size_t{256} << 10, std::size_t{1} << 20, (std::size_t{2} << 20) + 1,
                                  std::size_t{15} << 20, std::size_t{63} << 20, std::size_t{1} << 30}) {
    Signatures::ranges_of(99, bytes, r);
    ASSERT_GE(r.size(), 2u);
    EXPECT_EQ(r.front().dst, 0u);
    EXPECT_EQ(r.back().dst + r.back().bytes, bytes);
    std::vector<int> words_in_page(bytes / kPage + 1, 0);
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (i > 0) {
        EXPECT_GE(r[i].dst, r[i - 1].dst + r[i - 1].bytes) << "ranges overlap or go back";
      }
      ++words_in_page[r[i].dst / kPage];
    }
    for (std::size_t page = 0; page + 1 < words_in_page.size(); ++page)
      EXPECT_GE(words_in_page[page], 2) << bytes << " bytes, page " << page;
    if (bytes <= (std::size_t{64} << 10)) {
      EXPECT_LE(Signatures::stride_of(bytes), 4096u);  // a word every 4 KiB
    }
    // Few words (each first write to a 4 KiB page costs a host replay): 16 windows, or 2 a page.
    if (bytes <= (std::size_t{16} << 20)) {
      EXPECT_LE(r.size(), 20u) << bytes;
    } else if (bytes < (std::size_t{64} << 20)) {
      EXPECT_LE(r.size(), bytes / (std::size_t{1} << 20) + 2) << bytes;
    }
    // Large objects: a word a MiB (the first write to each 4 KiB page costs a host replay).
    if (bytes >= (std::size_t{64} << 20)) {
      EXPECT_LE(r.size(), bytes / (std::size_t{1} << 20) + 2) << bytes;
    }
  }
}

}  // namespace
}  // namespace valet::replay
