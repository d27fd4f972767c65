// The workload generator's random numbers. Its own generator and distributions rather than the
// standard library's: std::normal_distribution and friends are allowed to differ between library
// implementations, and a trace must be the same bytes for the same seed wherever it is generated.
#pragma once

#include <cmath>
#include <cstdint>

namespace valet::replay {

// xoshiro256** (Blackman and Vigna), seeded through splitmix64 so that nearby seeds give
// unrelated streams.
class WorkloadRandom {
 public:
  explicit WorkloadRandom(std::uint64_t seed) {
    for (auto& word : state_) {
      seed += 0x9e3779b97f4a7c15ull;
      std::uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      word = z ^ (z >> 31);
    }
  }

  std::uint64_t next() {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1), 53 bits.
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }

  // Uniform in [lo, hi] (the modulo's bias is below 2^-40 for the small ranges used here).
  std::uint64_t between(std::uint64_t lo, std::uint64_t hi) { return lo + next() % (hi - lo + 1); }

  // Standard normal (Box-Muller; one value per call keeps the stream simple to follow).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  // Log-normal with the given median: half of the draws fall below it.
  double lognormal(double median, double sigma) { return median * std::exp(sigma * normal()); }

  // Poisson with the given mean (Knuth's product of uniforms; the generator keeps means small).
  std::uint64_t poisson(double mean) {
    const double limit = std::exp(-mean);
    std::uint64_t k = 0;
    for (double p = uniform(); p > limit; p *= uniform()) ++k;
    return k;
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t state_[4];
};

}  // namespace valet::replay
