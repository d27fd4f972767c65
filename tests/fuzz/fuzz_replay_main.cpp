// valet-fuzz-replay: runs the heap fuzz harness without libFuzzer, over a deterministic set of
// random inputs and over files (a corpus directory, or a crash file libFuzzer wrote), so that the
// decoder and every check run in each CI build with any compiler. A failing input aborts with the
// harness's message; the line before it names the input.
//
//   valet-fuzz-replay [--random N] [--seed S] [FILE|DIR]...
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "heap_fuzz.h"

namespace {

void run_one(const std::vector<std::uint8_t>& input, const std::string& name) {
  std::fprintf(stderr, "replay: %s (%zu bytes)\n", name.c_str(), input.size());
  LLVMFuzzerTestOneInput(input.data(), input.size());
}

std::vector<std::uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t random_inputs = 200;
  std::uint64_t seed = 20261127;
  std::vector<std::filesystem::path> paths;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--random") && i + 1 < argc) {
      random_inputs = std::strtoull(argv[++i], nullptr, 10);
    } else if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (!std::strcmp(argv[i], "--help")) {
      std::printf("usage: %s [--random N] [--seed S] [FILE|DIR]...\n", argv[0]);
      return 0;
    } else {
      paths.emplace_back(argv[i]);
    }
  }
  std::size_t runs = 0;
  for (const auto& p : paths) {
    if (std::filesystem::is_directory(p)) {
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) run_one(read_file(f), f.string()), ++runs;
    } else {
      run_one(read_file(p), p.string());
      ++runs;
    }
  }
  // Random inputs of growing length: short ones exercise setup and teardown, long ones reach
  // hundreds of operations. The same seed always gives the same inputs.
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < random_inputs; ++i) {
    std::vector<std::uint8_t> input(1 + rng() % (16 + 8 * i));
    for (auto& b : input) b = std::uint8_t(rng());
    run_one(input, "random input " + std::to_string(i) + " of seed " + std::to_string(seed));
    ++runs;
  }
  std::printf("valet-fuzz-replay: %zu inputs passed\n", runs);
  return 0;
}
