#include "traced_heap.h"

namespace serve {

valet::Result<Object> TracedHeap::allocate(std::size_t bytes) {
  auto h = heap_.allocate(bytes);
  if (!h.ok()) return h.error();
  Object o{*h, next_id_.fetch_add(1, std::memory_order_relaxed), bytes};
  trace_.on_allocate(o.id, bytes);
  return o;
}

valet::Status TracedHeap::free(Object& o) {
  VALET_TRY(heap_.free(o.handle));
  trace_.on_free(o.id);
  o.handle = {};
  return {};
}

valet::Status TracedHeap::resize(Object& o, std::size_t bytes) {
  VALET_TRY(heap_.resize(o.handle, bytes));
  trace_.on_resize(o.id, bytes);
  o.bytes = bytes;
  return {};
}

bool TracedHeap::probe(std::size_t bytes) {
  trace_.on_probe(bytes);
  auto h = heap_.allocate(bytes);
  if (!h.ok()) return false;
  (void)heap_.free(*h);
  return true;
}

}  // namespace serve
