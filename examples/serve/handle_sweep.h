// valet-serve's handle sweep: every object the loop holds, read through its handle.
//
// A sweep pins the heap's handle table for the serve stream (Heap::pin_table), resolves the handle
// of every object it is given through that table, and checks the object's pattern
// (handle_check.h); object_access.h reaches objects through pins instead, so the sweep is what
// proves the handle path. CUDA backend: one launch of valet_serve_check (serve_kernels.cu) on the
// serve stream, after the fills queued there; its argument array is itself a heap object that the
// kernel reaches by handle. Host backend: host code resolves the same handles through the same
// table (the host backend's memory is host-accessible).
//
// The sweep waits for its result, so the table scope has passed before the loop goes on: while a
// scope is pending the heap moves nothing, and a resize that must move an object would fail.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "handle_check.h"
#include "valet/cuda_backend.h"
#include "valet/heap.h"

namespace serve {

class HandleSweep {
 public:
  // The kernel on the CUDA backend (Errc::unsupported when this valet-serve was built without
  // nvcc, or the driver cannot load the kernel), host code on the host backend. `stream`: where
  // the object accesses are queued (ObjectAccess::stream()); `device`: the CUDA device the heap's
  // backend was opened on (BackendOptions::device), where the kernel is loaded.
  static valet::Result<std::unique_ptr<HandleSweep>> open(valet::Heap& heap, valet::Stream stream, int device);
  ~HandleSweep();  // close()
  HandleSweep(const HandleSweep&) = delete;
  HandleSweep& operator=(const HandleSweep&) = delete;

  // Checks every item; items with a null handle must not be passed. out_of_memory when the
  // argument object cannot be made or grown (the sweep did not run); other heap and driver
  // errors as they come.
  valet::Result<CheckTotals> run(std::span<const CheckItem> items);
  // Frees the argument object, so that the heap can be shut down with nothing live.
  valet::Status close();

  bool on_gpu() const { return module_ != nullptr; }

 private:
  HandleSweep(valet::Heap& heap, valet::Stream stream) : heap_(heap), stream_(stream) {}
  valet::Result<CheckTotals> run_on_host(std::span<const CheckItem> items);
  valet::Result<CheckTotals> run_kernel(std::span<const CheckItem> items);
  // Makes the argument object hold at least `bytes` (allocated on first use, then grown).
  valet::Status reserve_args(std::size_t bytes);

  valet::Heap& heap_;
  valet::Stream stream_;
  std::unique_ptr<valet::CudaModule> module_;
  valet::CudaModule::Kernel kernel_{};
  unsigned max_blocks_ = 1;
  valet::Handle args_{};  // CheckTotals, then the items: the kernel's argument object
  std::size_t args_bytes_ = 0;
  std::vector<unsigned char> staged_;  // the argument object's contents, written in one call
};

}  // namespace serve
