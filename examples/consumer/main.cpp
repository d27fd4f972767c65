// Allocates, writes, compacts and frees through an installed Valet; exits 0 when all went well.
#include <cstdio>
#include <cstring>
#include <vector>

#include <valet/runtime.h>

int main() {
  valet::BackendOptions backend;
  backend.choice = valet::BackendChoice::host;  // runs anywhere
  valet::Config config;
  config.capacity = std::size_t{256} << 20;
  auto heap = valet::open_heap(backend, config);
  if (!heap.ok()) {
    std::fprintf(stderr, "valet-consumer: %s\n", heap.error().to_string().c_str());
    return 1;
  }
  std::vector<valet::Handle> objects;
  for (int i = 0; i < 1000; ++i) objects.push_back((*heap)->allocate(4096 + i).value());
  for (std::size_t i = 0; i < objects.size(); ++i) {
    auto pin = (*heap)->pin(objects[i]).value();
    std::memset(pin.as<void>(), int(i & 0xff), pin.size());
  }
  for (std::size_t i = 0; i < objects.size(); i += 2) (void)(*heap)->free(objects[i]);
  auto cycle = (*heap)->compact().value();
  for (std::size_t i = 1; i < objects.size(); i += 2) {
    auto pin = (*heap)->pin(objects[i]).value();
    for (std::size_t b = 0; b < pin.size(); ++b)
      if (pin.as<unsigned char>()[b] != (i & 0xff)) return 1;
  }
  std::printf("valet-consumer: %s, moved %llu objects, contents intact\n", (*heap)->backend().name().c_str(),
              (unsigned long long)cycle.objects_moved);
  return (*heap)->validate().ok() ? 0 : 1;
}
