// What the host tests of libvalet_torch.so need beyond the C ABI: the streams of a device heap's
// backend, host tasks queued on them (the host flavour of a kernel), the heap's validation, and a
// reset between tests. Exported from the library for tests/torch only; not part of the public
// ABI (PyTorch never sees these). Plain types only, so that a test links the library alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "valet/torch_allocator.h"

namespace valet::torch::test_hooks {

// A new stream of `device`'s backend (the heap must exist: allocate once first); 0 on failure,
// with valet_torch_last_error() saying why.
VALET_TORCH_API std::uintptr_t create_stream(int device);
VALET_TORCH_API bool destroy_stream(int device, std::uintptr_t stream);
VALET_TORCH_API bool synchronize_stream(int device, std::uintptr_t stream);
// Host backend only: queues `task` on `stream` as a kernel would be (it runs after everything
// queued there before it, on the stream's thread).
VALET_TORCH_API bool enqueue_host_task(int device, std::uintptr_t stream, std::function<void()> task);
// "" when every invariant of `device`'s heap holds, else the first broken one.
VALET_TORCH_API std::string validate(int device);
VALET_TORCH_API std::size_t live_pointers(int device);
// Destroys every heap and forgets valet_torch_configure(); "" on success. Refused while any
// pointer is live. (A process never does this: see registry.cpp.)
VALET_TORCH_API std::string reset();

}  // namespace valet::torch::test_hooks
