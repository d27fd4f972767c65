#include "device_heap.h"

#include <cinttypes>
#include <cstdio>
#include <limits>

#include "control/page_map.h"
#include "valet/runtime.h"
#include "valet/stats_json.h"

namespace valet::torch {

namespace {

// Safe-point compaction runs cycles until one changes nothing, at most this many: a cycle's
// budget (CompactRequest's defaults) bounds each, and this bounds the call.
constexpr int kMaxSafePointCycles = 8;

std::string hex(std::uintptr_t p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIxPTR, p);
  return buf;
}

Result<std::unique_ptr<Backend>> open_device_backend(int device, const DeviceSettings& s, Config& config) {
  BackendOptions options;
  options.choice = s.backend;
  options.device = device;
  if (s.capacity.bytes) options.host_capacity = s.capacity.bytes;
  auto backend = open_backend(options);
  if (!backend.ok()) return backend.error();
  config.capacity = s.capacity.bytes;
  if (s.capacity.fraction > 0) {
    auto info = (*backend)->memory_info();
    if (!info.ok()) return info.error();
    config.capacity = std::size_t(s.capacity.fraction * double(info->total_bytes));
    if (config.capacity < kPageBytes)
      return make_error(Errc::invalid_argument, "capacity fraction " + std::to_string(s.capacity.fraction) + " of " +
                                                    std::to_string(info->total_bytes) + " bytes is less than one page");
  }
  return backend;
}

}  // namespace

DeviceHeap::DeviceHeap(int device, std::unique_ptr<Heap> heap) : device_(device), heap_(std::move(heap)) {}

DeviceHeap::~DeviceHeap() {
  if (server_) server_->stop();
  server_.reset();
  compactor_.reset();
  if (heap_) (void)heap_->shutdown();
}

Result<std::unique_ptr<DeviceHeap>> DeviceHeap::create(int device, const DeviceSettings& s) {
  Config config;
  auto backend = open_device_backend(device, s, config);
  if (!backend.ok()) return backend.error();
  auto heap = Heap::create(std::move(backend).value(), config);
  if (!heap.ok()) return heap.error();
  std::unique_ptr<DeviceHeap> d(new DeviceHeap(device, std::move(heap).value()));
  auto compactor = Compactor::start(*d->heap_, s.policy);
  if (!compactor.ok()) return compactor.error();
  d->compactor_ = std::move(compactor).value();
  if (s.control_socket) {
    ControlServerOptions options;
    options.socket_path = *s.control_socket;
    options.log = [device](const std::string& m) { std::fprintf(stderr, "valet_torch: control server of device %d: %s\n", device, m.c_str()); };
    auto server = ControlServer::start(*d->heap_, *d->compactor_, options);
    if (!server.ok())
      return make_error(server.code(), "VALET_TORCH_CONTROL: control socket " + *s.control_socket + ": " + server.error().message);
    d->server_ = std::move(server).value();
  }
  return d;
}

Result<void*> DeviceHeap::allocate(std::size_t size, Stream stream) {
  if (size > std::numeric_limits<std::size_t>::max() - kTorchAlignment)
    return make_error(Errc::invalid_argument, std::to_string(size) + " bytes is more than any device holds");
  const std::size_t rounded = (size + kTorchAlignment - 1) / kTorchAlignment * kTorchAlignment;
  auto obj = heap_->allocate_fixed(rounded, stream);
  if (!obj.ok()) return obj.error();
  const std::uintptr_t p = obj->address;
  if (p % kTorchAlignment != 0 || !pointers_.insert(p, Allocation{obj->handle, size, rounded})) {
    (void)heap_->free(obj->handle);
    return make_error(Errc::internal, "the heap returned " + hex(p) + (p % kTorchAlignment ? ", not 512-byte aligned" : ", which is live already"));
  }
  count_allocation(size, rounded);
  return reinterpret_cast<void*>(p);
}

void DeviceHeap::count_allocation(std::size_t requested, std::size_t rounded) {
  raise_peak(peak_requested_, requested_.fetch_add(requested, std::memory_order_relaxed) + requested);
  raise_peak(peak_rounded_, rounded_.fetch_add(rounded, std::memory_order_relaxed) + rounded);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::string DeviceHeap::free(void* ptr, std::size_t size, Stream stream) {
  const auto p = reinterpret_cast<std::uintptr_t>(ptr);
  Allocation a;
  switch (pointers_.take(p, size, a)) {
    case PointerMap::Take::unknown:
      return hex(p) + " (" + std::to_string(size) + " bytes) is not a live allocation of device " +
             std::to_string(device_) + "'s Valet heap (a foreign pointer, or freed already); ignored";
    case PointerMap::Take::size_mismatch:
      return hex(p) + " was allocated with " + std::to_string(a.requested) + " bytes but freed with " +
             std::to_string(size) + "; ignored";
    case PointerMap::Take::taken: break;
  }
  if (Status st = heap_->free(a.handle, stream); !st.ok()) {
    (void)pointers_.insert(p, a);  // the object is still live in the heap: keep it freeable
    return "the heap refused to free " + hex(p) + " on stream " + hex(stream.id) + ": " + st.error().to_string() +
           "; ignored";
  }
  requested_.fetch_sub(a.requested, std::memory_order_relaxed);
  rounded_.fetch_sub(a.rounded, std::memory_order_relaxed);
  count_.fetch_sub(1, std::memory_order_relaxed);
  return {};
}

Result<nlohmann::json> DeviceHeap::compact_at_safe_point() {
  std::lock_guard lock(compact_mutex_);
  const std::size_t before = heap_->stats().mapped_bytes;
  CompactionRecord sum;
  int cycles = 0;
  auto cycle = [&]() -> Result<bool> {
    CompactRequest request;
    request.safe_point = true;  // the caller synchronized: pages of fixed objects may be meshed
    auto record = heap_->compact(request);
    if (!record.ok()) return record.error();
    sum += *record;
    ++cycles;
    return record->pages_meshed > 0 || record->pages_freed > 0 || record->objects_moved > 0;
  };
  // Each safe-point cycle first waits for the events of stream-ordered frees (the streams are
  // idle, so they complete at once), so those slots keep no page out of meshing.
  while (cycles < kMaxSafePointCycles) {
    auto progressed = cycle();
    if (!progressed.ok()) return progressed.error();
    if (!*progressed) break;
  }
  VALET_TRY(heap_->maintain());  // gives the pages compaction emptied back, down to the reserve's watermark
  nlohmann::json j = to_json(sum);
  j["active"] = true;
  j["device"] = device_;
  j["cycles"] = cycles;
  j["mapped_bytes_before"] = before;
  j["mapped_bytes_after"] = heap_->stats().mapped_bytes;
  return j;
}

nlohmann::json DeviceHeap::stats_json() {
  const HeapStats s = heap_->stats();
  return {
      {"active", true},
      {"device", device_},
      {"backend", s.backend},
      {"allocations", count_.load(std::memory_order_relaxed)},
      {"allocated_bytes", requested_.load(std::memory_order_relaxed)},
      {"allocated_rounded_bytes", rounded_.load(std::memory_order_relaxed)},
      {"peak_allocated_bytes", peak_requested_.load(std::memory_order_relaxed)},
      {"peak_allocated_rounded_bytes", peak_rounded_.load(std::memory_order_relaxed)},
      {"mapped_bytes", s.mapped_bytes},
      {"peak_mapped_bytes", s.peak_mapped_bytes},  // the heap's own peak: every page creation counts
      {"reserved_address_bytes", s.reserved_bytes},
      {"capacity_bytes", s.capacity_bytes},
      {"fragmentation", s.fragmentation},
      {"largest_allocatable_bytes", s.largest_allocatable_bytes},
      {"fixed_objects", s.fixed_objects},
      {"fixed_bytes", s.fixed_bytes},
      {"stream_cached_bytes", s.stream_cached_bytes + s.stream_deferred_bytes},
      {"heap", to_json(s)},
  };
}

nlohmann::json DeviceHeap::page_map_json() const {
  nlohmann::json j = control::page_map_json(heap_->stats(), heap_->page_map(), kPageBytes);
  j["active"] = true;
  j["device"] = device_;
  return j;
}

}  // namespace valet::torch
