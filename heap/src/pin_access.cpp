// Pin::host_accessible (valet/heap.h): whether Pin::as<T>() may hand out a host pointer. Asked of
// the backend at each call rather than recorded in the pin, so that the pin's fields and moves
// stay as they are.
#include "heap_core.h"
#include "valet/heap.h"

namespace valet {

bool Pin::host_accessible() const { return core_ != nullptr && core_->backend->capabilities().host_accessible; }

}  // namespace valet
