// What every driver call of the CUDA backend (and of user modules, cuda_module.cpp) goes through:
// the primary context made current for the call, and errors that name the call.
#pragma once

#include <string>

#include "cuda/cuda_driver.h"

namespace valet::cuda {

inline Error cu_error(const char* call, CUresult r) { return driver_error(call, r); }

// As cu_error, but CUDA_ERROR_OUT_OF_MEMORY becomes `oom_code` with a message that says what ran out.
inline Error cu_error_oom(const char* call, CUresult r, Errc oom_code, const std::string& what) {
  if (r == CUDA_ERROR_OUT_OF_MEMORY) return make_error(oom_code, what + " (" + call + ": " + result_name(r) + ")");
  return driver_error(call, r);
}

// Makes `ctx` current on the calling thread for the scope: nothing to do when it already is,
// otherwise it is pushed and popped again at the end, so the thread's own context (or none) is
// left as it was.
class ContextScope {
 public:
  ContextScope(const Driver& d, CUcontext ctx) : d_(d) {
    CUcontext current = nullptr;
    CUresult r = d_.cuCtxGetCurrent(&current);
    if (r != CUDA_SUCCESS) {
      status_ = cu_error("cuCtxGetCurrent", r);
      return;
    }
    if (current == ctx) return;
    r = d_.cuCtxPushCurrent(ctx);
    if (r != CUDA_SUCCESS) {
      status_ = cu_error("cuCtxPushCurrent", r);
      return;
    }
    pushed_ = true;
  }
  ~ContextScope() {
    if (pushed_) {
      CUcontext popped = nullptr;
      (void)d_.cuCtxPopCurrent(&popped);
    }
  }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

  const Status& status() const { return status_; }

 private:
  const Driver& d_;
  Status status_;
  bool pushed_ = false;
};

// True for the cuInit results that mean "no usable device here" rather than a failure.
bool means_no_usable_device(CUresult r);

}  // namespace valet::cuda

// Inside a member of a class whose state `s_` has a driver `d` and a context `ctx`: makes the
// primary context current for the rest of the calling function, or returns its error.
#define VALET_CUDA_SCOPE()                                      \
  ::valet::cuda::ContextScope valet_scope_(*s_->d, s_->ctx);    \
  VALET_TRY(valet_scope_.status())
