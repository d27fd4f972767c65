#include "handle_sweep.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <utility>

#if defined(VALET_SERVE_KERNELS)
// serve_kernels.cu, built and embedded by examples/serve/CMakeLists.txt (valet_embed_fatbin).
extern const unsigned char valet_serve_kernels_fatbin[];
#endif

namespace serve {

namespace {

constexpr unsigned kBlockThreads = 256;  // a multiple of 32: the kernel sums per warp
constexpr std::size_t kMinArgsBytes = std::size_t{64} << 10;

valet::kernels::DeviceHandle device_handle(valet::Handle h) { return {h.index, h.generation, h.heap}; }

}  // namespace

valet::Result<std::unique_ptr<HandleSweep>> HandleSweep::open(valet::Heap& heap, valet::Stream stream, int device) {
  std::unique_ptr<HandleSweep> sweep(new HandleSweep(heap, stream));
  if (heap.backend().capabilities().host_accessible) return sweep;
#if defined(VALET_SERVE_KERNELS)
  auto module = valet::CudaModule::load(valet_serve_kernels_fatbin, device);
  if (!module.ok()) return module.error();
  auto kernel = (*module)->kernel("valet_serve_check");
  if (!kernel.ok()) return kernel.error();
  auto blocks = (*module)->max_resident_blocks(*kernel, kBlockThreads);
  if (!blocks.ok()) return blocks.error();
  sweep->module_ = std::move(module).value();
  sweep->kernel_ = *kernel;
  sweep->max_blocks_ = *blocks;
  return sweep;
#else
  return valet::make_error(valet::Errc::unsupported,
                           "this valet-serve was built without nvcc: no kernel to read objects through their handles");
#endif
}

HandleSweep::~HandleSweep() { (void)close(); }

valet::Status HandleSweep::close() {
  if (args_.is_null()) return {};
  const valet::Handle h = std::exchange(args_, valet::Handle{});
  args_bytes_ = 0;
  return heap_.free(h);
}

valet::Result<CheckTotals> HandleSweep::run(std::span<const CheckItem> items) {
  if (items.empty()) return CheckTotals{};
  return on_gpu() ? run_kernel(items) : run_on_host(items);
}

valet::Result<CheckTotals> HandleSweep::run_on_host(std::span<const CheckItem> items) {
  auto scope = heap_.pin_table(stream_);
  if (!scope.ok()) return scope.error();
  const valet::kernels::DeviceHandleTable& table = scope->table();
  CheckTotals totals;
  for (const CheckItem& item : items) {
    const auto* p = static_cast<const unsigned char*>(valet::kernels::resolve(table, item.handle));
    if (!p || valet::kernels::resolved_size(table, item.handle) < item.bytes) {
      ++totals.unresolved;
      continue;
    }
    for (std::uint64_t u = 0, n = check_units(item); u < n; ++u)
      totals.mismatched_bytes += check_unit(p, item, u, &totals.bytes_checked);
    ++totals.objects;
  }
  VALET_TRY(scope->release());
  // The release is stream-ordered even here: wait until the stream has passed it.
  VALET_TRY(heap_.backend().synchronize_stream(stream_));
  return totals;
}

valet::Status HandleSweep::reserve_args(std::size_t bytes) {
  if (!args_.is_null() && args_bytes_ >= bytes) return {};
  const std::size_t want = std::bit_ceil(std::max(bytes, kMinArgsBytes));
  if (args_.is_null()) {
    auto h = heap_.allocate(want);
    if (!h.ok()) return h.error();
    args_ = *h;
  } else {
    VALET_TRY(heap_.resize(args_, want));
  }
  args_bytes_ = want;
  return {};
}

valet::Result<CheckTotals> HandleSweep::run_kernel(std::span<const CheckItem> items) {
  const std::size_t bytes = sizeof(CheckTotals) + items.size() * sizeof(CheckItem);
  // Before the table is pinned: the argument object must be in the table, and growing it may
  // move it.
  VALET_TRY(reserve_args(bytes));
  staged_.resize(bytes);
  const CheckTotals zero;
  std::memcpy(staged_.data(), &zero, sizeof zero);
  std::memcpy(staged_.data() + sizeof zero, items.data(), items.size() * sizeof(CheckItem));

  auto scope = heap_.pin_table(stream_);
  if (!scope.ok()) return scope.error();
  // The host's own way in, to write the arguments and read the totals back.
  auto pin = heap_.pin(args_);
  if (!pin.ok()) return pin.error();
  VALET_TRY(heap_.backend().write(pin->address(), staged_.data(), bytes));
  // That write and pin_table's upload of the table are synchronous copies on the legacy default
  // stream, which the (non-blocking) serve stream does not wait for, and a copy from pageable
  // memory may return before its data has landed: the legacy stream is waited for before the
  // kernel reads either.
  VALET_TRY(heap_.backend().synchronize_stream(valet::Stream{}));
  const auto n = static_cast<unsigned int>(items.size());
  const valet::LaunchShape shape{.grid = std::min(n, max_blocks_), .block = kBlockThreads};
  const valet::Status launched =
      module_->launch(kernel_, shape, stream_, scope->table(), device_handle(args_), n);
  // The scope ends at the current end of the stream: nothing moves until the kernel is done.
  const valet::Status released = scope->release();
  VALET_TRY(launched);
  VALET_TRY(released);
  VALET_TRY(heap_.backend().synchronize_stream(stream_));
  CheckTotals totals;
  VALET_TRY(heap_.backend().read(&totals, pin->address(), sizeof totals));
  return totals;
}

}  // namespace serve
