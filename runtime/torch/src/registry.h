// The process's device heaps: one per device index, made on first use, never destroyed (see
// registry.cpp), with the settings of valet_torch_configure() and the last error of the library.
#pragma once

#include <string>

#include "device_heap.h"

namespace valet::torch {

inline constexpr int kMaxDevices = 64;

// The heap of `device` if one was made, else nullptr (also for an out-of-range device). Lock-free.
DeviceHeap* existing_heap(int device);
// The heap of `device`, made now if it is the first use (thread-safe: one thread makes it, the
// others wait for it). A failure is printed on stderr once per distinct message and device, and
// made again on the next call (the environment may have been fixed meanwhile).
Result<DeviceHeap*> heap_for(int device);
// valet_torch_configure(): refused once any heap exists.
Status configure(const char* capacity, const char* policy);

void set_last_error(std::string message);
std::string last_error();

// Tests only (test_hooks.h): destroys every heap (refused while any pointer is live) and forgets
// the configuration, so that the next test starts from a process that allocated nothing.
Status reset_registry();

}  // namespace valet::torch
