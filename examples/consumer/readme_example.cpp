#include <cstdio>
#include <vector>

#include <valet/compactor.h>
#include <valet/runtime.h>

int fail(const char* call, const valet::Error& e) {
  std::fprintf(stderr, "%s: %s\n", call, e.to_string().c_str());  // e.g. "out_of_memory: ..."
  return 1;
}

int main() {
  valet::Config config;                            // the heap's settings, defaults here
  auto heap_or = valet::open_heap(config);         // on CUDA where usable, else the host backend
  if (!heap_or) return fail("open_heap", heap_or.error());
  valet::Heap& heap = *heap_or.value();            // value(): known to be ok here
  auto compactor = valet::Compactor::start(heap);  // background compaction
  if (!compactor) return fail("Compactor::start", compactor.error());

  auto h = heap.allocate(1 << 20);                 // a handle, not an address
  if (!h) return fail("allocate", h.error());
  {
    auto pin = heap.pin(*h);                       // the address is stable while the pin lives
    if (!pin) return fail("pin", pin.error());
    std::vector<float> ones(pin->size() / sizeof(float), 1.0f);
    if (auto st = heap.backend().write(pin->address(), ones.data(), pin->size()); !st)
      return fail("write", st.error());
    // launch_my_kernel(pin->address(), ...): kernels may use the address here (as<T>()
    // gives typed host pointers, only where the backend's memory is host-accessible)
  }
  if (auto st = heap.resize(*h, 8 << 20); !st)   // same handle; large objects grow by remapping
    return fail("resize", st.error());
  float first = 0;
  {
    auto pin = heap.pin(*h);                       // the object may have moved: pin it again
    if (!pin) return fail("pin", pin.error());
    if (auto st = heap.backend().read(&first, pin->address(), sizeof first); !st)
      return fail("read", st.error());
  }
  if (auto st = heap.free(*h); !st) return fail("free", st.error());
  std::printf("%s: grew 1 MiB to 8 MiB, first float still %g\n", heap.backend().name().c_str(), first);
  return first == 1.0f ? 0 : 1;
}
