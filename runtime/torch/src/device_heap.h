// One device's Valet heap as PyTorch sees it: the heap of fixed objects, its background
// compactor, the optional control server, the pointer map that frees by raw pointer, and the
// figures PyTorch users look for (requested and rounded bytes with their peaks, peak mapped).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "pointer_map.h"
#include "settings.h"
#include "valet/compactor.h"
#include "valet/control_server.h"
#include "valet/heap.h"

namespace valet::torch {

// Every pointer handed to PyTorch is aligned to this, as PyTorch's own allocator guarantees
// (vectorised kernels and cuBLAS rely on it): requests are rounded up to a multiple of it, and
// the heap places every such size on a 512-aligned address (valet/heap.h, allocate_fixed).
inline constexpr std::size_t kTorchAlignment = 512;

class DeviceHeap {
 public:
  // Opens the backend, makes the heap, starts the compactor (and the control server where the
  // settings ask for one).
  static Result<std::unique_ptr<DeviceHeap>> create(int device, const DeviceSettings& settings);
  // Stops the server and the compactor, then shuts the heap down. Only tests destroy a
  // DeviceHeap (see registry.cpp for why a process never does).
  ~DeviceHeap();

  // The fixed object's address, 512-aligned; errors as Heap::allocate_fixed.
  Result<void*> allocate(std::size_t size, Stream stream);
  // Frees a pointer of this heap (stream-ordered). Returns what was wrong (empty when nothing):
  // an unknown pointer, a size that does not match, a free the heap refused. Whatever was wrong
  // left the heap and the pointer map as they were.
  std::string free(void* ptr, std::size_t size, Stream stream);
  // True where `ptr` is a live allocation of this heap (for messages about other devices).
  bool owns(void* ptr) const { return pointers_.find(reinterpret_cast<std::uintptr_t>(ptr)).has_value(); }

  Result<nlohmann::json> compact_at_safe_point();
  nlohmann::json stats_json();
  nlohmann::json page_map_json() const;
  // Where tests reach the backend's streams (torch_testing.h).
  Heap& heap() { return *heap_; }

  int device() const { return device_; }
  std::size_t live_pointers() const { return pointers_.size(); }

 private:
  DeviceHeap(int device, std::unique_ptr<Heap> heap);
  void count_allocation(std::size_t requested, std::size_t rounded);

  const int device_;
  std::unique_ptr<Heap> heap_;
  std::unique_ptr<Compactor> compactor_;
  std::unique_ptr<ControlServer> server_;
  PointerMap pointers_;
  std::mutex compact_mutex_;  // one safe-point compaction at a time

  std::atomic<std::uint64_t> requested_{0}, rounded_{0}, count_{0};
  std::atomic<std::uint64_t> peak_requested_{0}, peak_rounded_{0};
};

// Raises `peak` to at least `value`.
inline void raise_peak(std::atomic<std::uint64_t>& peak, std::uint64_t value) {
  std::uint64_t seen = peak.load(std::memory_order_relaxed);
  while (value > seen && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

}  // namespace valet::torch
