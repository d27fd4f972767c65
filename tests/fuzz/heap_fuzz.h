// The heap fuzz harness's entry point, shared by the libFuzzer target (valet-heap-fuzz) and the
// plain replay executable (valet-fuzz-replay).
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
