#include "test_hooks.h"

#include "registry.h"
#include "valet/host_backend.h"

namespace valet::torch::test_hooks {

namespace {

Heap* heap_of(int device) {
  DeviceHeap* h = existing_heap(device);
  if (!h) set_last_error("test_hooks: no heap on device " + std::to_string(device));
  return h ? &h->heap() : nullptr;
}

bool report(const Status& st, const char* what) {
  if (!st.ok()) set_last_error(std::string("test_hooks: ") + what + ": " + st.error().to_string());
  return st.ok();
}

}  // namespace

std::uintptr_t create_stream(int device) {
  Heap* heap = heap_of(device);
  if (!heap) return 0;
  auto s = heap->backend().create_stream();
  if (!s.ok()) return report(s.error(), "create_stream"), 0;
  return s->id;
}

bool destroy_stream(int device, std::uintptr_t stream) {
  Heap* heap = heap_of(device);
  return heap && report(heap->backend().destroy_stream(Stream{stream}), "destroy_stream");
}

bool synchronize_stream(int device, std::uintptr_t stream) {
  Heap* heap = heap_of(device);
  return heap && report(heap->backend().synchronize_stream(Stream{stream}), "synchronize_stream");
}

bool enqueue_host_task(int device, std::uintptr_t stream, std::function<void()> task) {
  Heap* heap = heap_of(device);
  if (!heap) return false;
  if (heap->backend().kind() != BackendKind::host)
    return report(make_error(Errc::unsupported, "host tasks need the host backend"), "enqueue_host_task");
  auto& host = static_cast<BackendModel<HostBackend>&>(heap->backend()).impl();
  return report(host.enqueue_host_task(Stream{stream}, std::move(task)), "enqueue_host_task");
}

std::string validate(int device) {
  Heap* heap = heap_of(device);
  if (!heap) return "no heap on device " + std::to_string(device);
  Status st = heap->validate();
  return st.ok() ? std::string() : st.error().to_string();
}

std::size_t live_pointers(int device) {
  DeviceHeap* h = existing_heap(device);
  return h ? h->live_pointers() : 0;
}

std::string reset() {
  Status st = reset_registry();
  return st.ok() ? std::string() : st.error().to_string();
}

}  // namespace valet::torch::test_hooks
