// Opening the heap valet-stress runs on: the chosen backend, wrapped in the fault-injecting
// adaptor with --faults, with direct access to the host backend for the page-leak check.
#pragma once

#include <memory>
#include <string>

#include "stress_options.h"
#include "valet/fault_injection.h"
#include "valet/heap.h"
#include "valet/host_backend.h"

namespace valet::stress {

struct StressHeap {
  std::unique_ptr<Heap> heap;
  HostBackend* host = nullptr;              // the host backend under the heap, if that is the one
  FaultInjectingBackend* faults = nullptr;  // the adaptor, with --faults
  std::string skipped;                      // non-empty: CUDA was asked for and is not usable
};

Result<StressHeap> open_stress_heap(const StressOptions& options);

// Arms random faults on the calls whose failures the heap must survive mid-operation.
void arm_random_faults(FaultInjectingBackend& faults, double rate, std::uint64_t seed);

// Total injected faults so far (0 without the adaptor).
std::uint64_t faults_injected(const StressHeap& h);

}  // namespace valet::stress
