// The synthetic LLM-serving workload (see workload.h).
#include "workload.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "workload_random.h"

namespace valet::replay {

namespace {

// Spread of prompt and output lengths around their medians (log-normal sigma): about one request
// in six is more than 2.5 times the median.
constexpr double kLengthSigma = 0.9;
constexpr std::uint64_t kMinTokens = 8;
// Shape of the weights: layers of a 7B-class decoder, each with four attention projections of
// weight 1 and three MLP projections of weight 2.7 (an 11008-wide MLP over a 4096-wide model),
// and the input and output embeddings of weight 4 each. Sizes are proportional to these weights.
constexpr int kLayers = 32;
constexpr std::array<double, 7> kLayerTensors = {1, 1, 1, 1, 2.7, 2.7, 2.7};
constexpr double kEmbeddingWeight = 4;
// Bytes per batch token of the activation tensors: hidden states of 1024, 2048 and 4096 (fp16)
// and an 11008-wide MLP intermediate (fp16).
constexpr std::array<std::uint64_t, 4> kActivationWidths = {2048, 4096, 8192, 22016};
constexpr std::uint64_t kMinActivation = 4096;
// The small per-request objects: sampling state, stop sequences, token ids, block tables, logits
// rows of fp16 and fp32 vocabularies, top-k scratch. With --phase-every, the menus below follow
// one another instead (each a different model or adapter).
constexpr std::array<std::uint64_t, 7> kSmallSizes = {512, 1024, 8192, 16384, 65536, 131072, 262144};
constexpr std::array<std::array<std::uint64_t, 3>, 5> kPhaseSizes = {{{320, 640, 4096},
                                                                      {12288, 49152, 65536},
                                                                      {98304, 163840, 262144},
                                                                      {24576, 81920, 196608},
                                                                      {768, 2048, 10240}}};
constexpr std::uint64_t kSmallJitter = 16;  // sizes vary by up to 15 steps of 16 bytes
constexpr double kReplaceSmall = 0.05;      // chance per step that a request replaces one
constexpr std::uint64_t kMinLinger = 50;

struct Request {
  std::uint64_t kv = 0;         // id of its KV cache
  std::uint64_t kv_tokens = 0;  // tokens the cache has room for
  std::uint64_t tokens = 0;     // prompt plus tokens generated so far
  std::uint64_t target = 0;     // tokens at which it is done
  std::uint64_t final_kv_bytes = 0;
  std::vector<std::uint64_t> smalls;
};

class Workload {
 public:
  Workload(const WorkloadOptions& o, TraceWriter& w) : o_(o), rng_(o.seed), w_(w) {}

  WorkloadSummary run() {
    w_.comment("gpuheap-trace v1 generator=valet-replay seed=" + std::to_string(o_.seed) +
               " steps=" + std::to_string(o_.steps) + " capacity=" + std::to_string(o_.capacity));
    w_.comment("valet-replay generate " + describe_workload_options(o_));
    load_weights();
    for (std::uint64_t step = 0; step < o_.steps; ++step) serve(step);
    drain();
    w_.comment("end");
    return summary_;
  }

 private:
  std::uint64_t allocate(std::uint64_t bytes) {
    const std::uint64_t id = next_id_++;
    live_.emplace(id, bytes);
    live_bytes_ += bytes;
    summary_.peak_live_bytes = std::max(summary_.peak_live_bytes, live_bytes_);
    w_.allocate(id, bytes);
    ++summary_.ops;
    return id;
  }

  void release(std::uint64_t id) {
    const auto it = live_.find(id);
    live_bytes_ -= it->second;
    live_.erase(it);
    w_.free(id);
    ++summary_.ops;
  }

  void load_weights();
  void serve(std::uint64_t step);
  std::uint64_t admit(std::uint64_t step);
  void grow(Request& r);
  void retire(Request& r, std::uint64_t step);
  void drain();
  std::uint64_t small_size(std::uint64_t step);

  const WorkloadOptions& o_;
  WorkloadRandom rng_;
  TraceWriter& w_;
  WorkloadSummary summary_;
  std::uint64_t next_id_ = 0;
  std::unordered_map<std::uint64_t, std::uint64_t> live_;  // id -> bytes
  std::uint64_t live_bytes_ = 0;
  std::uint64_t held_bytes_ = 0;      // weights, small objects and lingering ones
  std::uint64_t kv_reserved_ = 0;     // running requests' caches at their largest
  std::vector<std::uint64_t> weights_;
  std::vector<Request> requests_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> lingering_;  // (last step, id)
};

void Workload::load_weights() {
  const double total = o_.weights_fraction * double(o_.capacity);
  if (total <= 0) return;
  double sum = 2 * kEmbeddingWeight;
  for (double t : kLayerTensors) sum += kLayers * t;
  auto tensor = [&](double weight) {
    const auto bytes = std::max<std::uint64_t>(256, std::uint64_t(total * weight / sum) / 256 * 256);
    weights_.push_back(allocate(bytes));
    held_bytes_ += bytes;
  };
  tensor(kEmbeddingWeight);
  for (int layer = 0; layer < kLayers; ++layer)
    for (double t : kLayerTensors) tensor(t);
  tensor(kEmbeddingWeight);
}

std::uint64_t Workload::small_size(std::uint64_t step) {
  std::uint64_t base;
  if (o_.phase_every) {
    const auto& menu = kPhaseSizes[(step / o_.phase_every) % kPhaseSizes.size()];
    base = menu[rng_.between(0, menu.size() - 1)];
  } else {
    base = kSmallSizes[rng_.between(0, kSmallSizes.size() - 1)];
  }
  return base + kSmallJitter * rng_.between(0, 15);
}

// Admits the arrivals that fit; returns the prompt tokens of those admitted (their prefill).
std::uint64_t Workload::admit(std::uint64_t step) {
  const double limit = o_.admit_fraction * double(o_.capacity);
  std::uint64_t prefill = 0;
  for (std::uint64_t n = rng_.poisson(o_.arrivals); n > 0; --n) {
    const auto draw = [&](std::uint64_t median, std::uint64_t most) {
      return std::clamp<std::uint64_t>(std::uint64_t(rng_.lognormal(double(median), kLengthSigma)), kMinTokens, most);
    };
    Request r;
    const std::uint64_t prompt = draw(o_.prompt_median, o_.max_prompt);
    r.target = prompt + draw(o_.output_median, o_.max_output);
    r.tokens = prompt;
    r.kv_tokens = prompt + o_.grow_every;
    // The cache grows each time the tokens reach its room, up to the first multiple past target.
    r.final_kv_bytes = (prompt + o_.grow_every * ((r.target - prompt) / o_.grow_every + 1)) * o_.bytes_per_token;
    std::vector<std::uint64_t> sizes(rng_.between(1, o_.small_objects));
    std::uint64_t small_bytes = 0;
    for (auto& s : sizes) small_bytes += (s = small_size(step));
    // Room for this request at its largest, and for the largest cache to be copied once more.
    std::uint64_t largest = r.final_kv_bytes;
    for (const Request& q : requests_) largest = std::max(largest, q.final_kv_bytes);
    if (double(held_bytes_ + kv_reserved_ + r.final_kv_bytes + small_bytes + largest) > limit) {
      ++summary_.requests_turned_away;
      continue;
    }
    for (std::uint64_t s : sizes) r.smalls.push_back(allocate(s));
    held_bytes_ += small_bytes;
    r.kv = allocate(r.kv_tokens * o_.bytes_per_token);
    kv_reserved_ += r.final_kv_bytes;
    prefill += prompt;
    requests_.push_back(std::move(r));
    ++summary_.requests_admitted;
  }
  return prefill;
}

// Reallocation: the larger cache exists before the old one goes.
void Workload::grow(Request& r) {
  r.kv_tokens += o_.grow_every;
  const std::uint64_t larger = allocate(r.kv_tokens * o_.bytes_per_token);
  release(r.kv);
  r.kv = larger;
}

void Workload::retire(Request& r, std::uint64_t step) {
  release(r.kv);
  kv_reserved_ -= r.final_kv_bytes;
  for (std::size_t i = 1; i < r.smalls.size(); ++i) {
    held_bytes_ -= live_.at(r.smalls[i]);
    release(r.smalls[i]);
  }
  const std::uint64_t last = step + rng_.between(kMinLinger, std::max(kMinLinger, o_.linger));
  lingering_.emplace_back(last, r.smalls[0]);
}

void Workload::serve(std::uint64_t step) {
  const std::uint64_t prefill = admit(step);
  // Activations of this step, sized by the batch; together at most half of the memory above the
  // admission limit, so that they alone never exhaust it.
  const std::uint64_t batch_tokens = requests_.size() + prefill;
  const std::uint64_t count = rng_.between(2, 5);
  const auto budget = std::uint64_t((1.0 - o_.admit_fraction) * double(o_.capacity) / 2 / double(count));
  std::vector<std::uint64_t> activations;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t width = kActivationWidths[rng_.between(0, kActivationWidths.size() - 1)];
    activations.push_back(allocate(std::clamp(batch_tokens * width, kMinActivation, std::max(kMinActivation, budget))));
  }
  // Decode: one token for every running request.
  std::vector<Request> running;
  running.reserve(requests_.size());
  std::vector<Request> done;
  for (Request& r : requests_) {
    if (++r.tokens >= r.kv_tokens) grow(r);
    if (rng_.uniform() < kReplaceSmall) {
      auto& id = r.smalls[rng_.between(0, r.smalls.size() - 1)];
      const std::uint64_t bytes = live_.at(id);
      release(id);
      id = allocate(bytes);
    }
    (r.tokens >= r.target ? done : running).push_back(std::move(r));
  }
  requests_ = std::move(running);
  for (auto it = activations.rbegin(); it != activations.rend(); ++it) release(*it);
  for (Request& r : done) retire(r, step);
  // Leftovers whose time is up.
  std::erase_if(lingering_, [&](const std::pair<std::uint64_t, std::uint64_t>& l) {
    if (l.first > step) return false;
    held_bytes_ -= live_.at(l.second);
    release(l.second);
    return true;
  });
  w_.step();
  ++summary_.ops;
  ++summary_.steps;
  if (o_.probe_every && step % o_.probe_every == o_.probe_every - 1) {
    const auto want = std::uint64_t(double(o_.capacity - std::min<std::uint64_t>(o_.capacity, live_bytes_)) * o_.probe_fraction);
    if (want > 0) {
      w_.probe(want);
      ++summary_.ops;
      ++summary_.probes;
    }
  }
}

void Workload::drain() {
  for (Request& r : requests_) {
    release(r.kv);
    for (std::uint64_t s : r.smalls) release(s);
  }
  requests_.clear();
  for (const auto& l : lingering_) release(l.second);
  lingering_.clear();
  for (std::uint64_t id : weights_) release(id);
  weights_.clear();
}

}  // namespace

Status check_workload_options(const WorkloadOptions& o) {
  auto bad = [](std::string message) -> Status { return make_error(Errc::invalid_argument, std::move(message)); };
  if (o.steps == 0) return bad("--steps must be at least 1");
  if (o.bytes_per_token == 0) return bad("--bytes-per-token must be at least 1");
  if (o.grow_every == 0) return bad("--grow-every must be at least 1 token");
  if (o.small_objects == 0) return bad("--small-objects must be at least 1");
  if (o.prompt_median == 0 || o.output_median == 0) return bad("--prompt-median and --output-median must be at least 1");
  if (!(o.arrivals > 0 && o.arrivals <= 64)) return bad("--arrivals must be in (0, 64]");
  if (!(o.admit_fraction > 0 && o.admit_fraction < 1)) return bad("--admit-fraction must be in (0, 1)");
  if (!(o.weights_fraction >= 0 && o.weights_fraction < o.admit_fraction))
    return bad("--weights-fraction must be at least 0 and below --admit-fraction (" +
               std::to_string(o.admit_fraction) + "): requests need room too");
  if (!(o.probe_fraction > 0 && o.probe_fraction <= 1)) return bad("--probe-fraction must be in (0, 1]");
  // The smallest request at its largest must fit, or every request is turned away.
  const std::uint64_t smallest = (2 * kMinTokens + o.grow_every) * o.bytes_per_token;
  if (double(2 * smallest) > o.admit_fraction * double(o.capacity))
    return bad("--capacity " + std::to_string(o.capacity) + " bytes cannot hold even the smallest request (" +
               std::to_string(smallest) + " bytes of KV cache, twice while it grows) under --admit-fraction");
  return {};
}

std::string describe_workload_options(const WorkloadOptions& o) {
  char text[640];
  std::snprintf(text, sizeof text,
                "--seed %llu --steps %llu --capacity %llu --weights-fraction %g --admit-fraction %g "
                "--bytes-per-token %llu --arrivals %g --prompt-median %llu --output-median %llu --max-prompt %llu "
                "--max-output %llu --grow-every %llu --small-objects %llu --phase-every %llu --linger %llu "
                "--probe-every %llu --probe-fraction %g",
                (unsigned long long)o.seed, (unsigned long long)o.steps, (unsigned long long)o.capacity,
                o.weights_fraction, o.admit_fraction, (unsigned long long)o.bytes_per_token, o.arrivals,
                (unsigned long long)o.prompt_median, (unsigned long long)o.output_median,
                (unsigned long long)o.max_prompt, (unsigned long long)o.max_output, (unsigned long long)o.grow_every,
                (unsigned long long)o.small_objects, (unsigned long long)o.phase_every, (unsigned long long)o.linger,
                (unsigned long long)o.probe_every, o.probe_fraction);
  return text;
}

Result<WorkloadSummary> generate_workload(const WorkloadOptions& options, TraceWriter& writer) {
  VALET_TRY(check_workload_options(options));
  VALET_TRY(writer.status());
  WorkloadSummary summary = Workload(options, writer).run();
  VALET_TRY(writer.status());
  return summary;
}

}  // namespace valet::replay
