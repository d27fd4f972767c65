#include "serving_loop.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace serve {

namespace {

// The model's constants: rates, lengths and growth as in the defaults of `valet-replay generate`
// (which describe an 8 GiB device); the small-object menus and the phase and probe cadence are
// this loop's own, chosen so that a short live run goes through several phases and probes.
constexpr double kArrivalsPerStep = 0.6;
constexpr double kPromptMedian = 384, kOutputMedian = 192;
constexpr std::size_t kPromptMax = 8192, kOutputMax = 4096;
constexpr std::size_t kGrowEvery = 16;        // tokens between KV cache growths
constexpr int kSmallObjectsMax = 6;
constexpr std::uint64_t kPhaseEvery = 350;    // steps between shifts of the small-object mix
constexpr std::uint64_t kLingerMin = 50, kLingerMax = 800;
constexpr std::uint64_t kProbeEvery = 100;
constexpr double kProbeFraction = 0.5;
constexpr double kAdmitFraction = 0.70;       // admission keeps the loop's live bytes under this
constexpr std::size_t kModelCapacity = std::size_t{8} << 30;
constexpr std::size_t kModelBytesPerToken = std::size_t{32} << 10;

const std::vector<std::vector<std::size_t>> kMenus{
    {256, 512, 4096}, {16384, 65536}, {131072, 262144}, {24576, 98304, 196608}, {768, 1536, 8192}};
const std::size_t kTempBytesPerToken[] = {2048, 4096, 8192, 11008 * 2};

}  // namespace

ServingLoop::ServingLoop(TracedHeap& heap, ObjectAccess& access, HandleSweep* sweep, std::uint64_t sweep_every,
                         std::size_t capacity, std::uint64_t seed)
    : heap_(heap),
      access_(access),
      sweep_(sweep),
      sweep_every_(sweep_every),
      capacity_(capacity),
      bytes_per_token_(std::max<std::size_t>(256, capacity / (kModelCapacity / kModelBytesPerToken))),
      temp_scale_(double(capacity) / double(kModelCapacity)),
      rng_(seed) {}

ServingLoop::~ServingLoop() { free_all(); }

void ServingLoop::note_error(const valet::Error& e) {
  if (e.code == valet::Errc::out_of_memory) return;
  if (c_.errors++ < 10) std::fprintf(stderr, "\nvalet-serve: heap error: %s\n", e.to_string().c_str());
}

void ServingLoop::write(Tracked& t) {
  t.seed = rng_();
  t.pattern_bytes = t.obj.bytes;
  if (auto st = access_.write(t.obj.handle, t.obj.bytes, t.seed); !st.ok()) note_error(st.error());
}

void ServingLoop::check(const Tracked& t, std::size_t limit) {
  auto bad = access_.check(t.obj.handle, t.pattern_bytes, t.seed, limit);
  ++c_.checks;
  if (!bad.ok()) return note_error(bad.error());
  if (*bad) {
    c_.corrupt_bytes += *bad;
    std::fprintf(stderr, "\nvalet-serve: DATA MISMATCH: %llu bytes of object %llu (%zu bytes) differ from its pattern\n",
                 (unsigned long long)*bad, (unsigned long long)t.obj.id, t.obj.bytes);
  }
}

bool ServingLoop::allocate(std::size_t bytes, Tracked& out) {
  auto o = heap_.allocate(bytes);
  if (!o.ok()) {
    note_error(o.error());
    return false;
  }
  out.obj = *o;
  live_bytes_ += bytes;
  write(out);
  return true;
}

void ServingLoop::release(Tracked& t) {
  if (t.obj.handle.is_null()) return;
  live_bytes_ -= t.obj.bytes;
  if (auto st = heap_.free(t.obj); !st.ok()) note_error(st.error());
  t.obj.handle = {};
}

// Grows a KV cache with resize() where a trace reallocates it (the trace format has no resize):
// the kept prefix must survive.
bool ServingLoop::grow(Tracked& t, std::size_t bytes) {
  const std::size_t old = t.obj.bytes;
  if (auto st = heap_.resize(t.obj, bytes); !st.ok()) {
    note_error(st.error());
    return false;
  }
  live_bytes_ += bytes - old;
  check(t, old);
  write(t);
  return true;
}

std::size_t ServingLoop::lognormal(double median, std::size_t cap) {
  std::normal_distribution<double> n(0.0, 0.9);
  return std::min<std::size_t>(cap, std::max<std::size_t>(8, std::size_t(median * std::exp(n(rng_)))));
}

std::size_t ServingLoop::small_size() {
  const auto& menu = kMenus[(c_.steps / kPhaseEvery) % kMenus.size()];
  return menu[rng_() % menu.size()] + 16 * (rng_() % 16);
}

void ServingLoop::admit() {
  const std::size_t arrivals = std::poisson_distribution<std::size_t>(kArrivalsPerStep)(rng_);
  for (std::size_t k = 0; k < arrivals; ++k) {
    const std::size_t prompt = lognormal(kPromptMedian, kPromptMax);
    const std::size_t target = prompt + lognormal(kOutputMedian, kOutputMax);
    if (double(live_bytes_ + target * bytes_per_token_) > kAdmitFraction * double(capacity_)) continue;
    Request r;
    r.kv_tokens = prompt + kGrowEvery;
    r.tokens = prompt;
    r.target = target;
    bool ok = true;
    const int smalls = 1 + int(rng_() % kSmallObjectsMax);
    for (int i = 0; i < smalls && ok; ++i) ok = allocate(small_size(), r.smalls.emplace_back());
    if (!ok) r.smalls.pop_back();
    ok = ok && allocate(r.kv_tokens * bytes_per_token_, r.kv);
    if (!ok) {
      for (auto& s : r.smalls) release(s);
      release(r.kv);
      ++c_.requests_rejected;
      continue;
    }
    ++c_.requests_admitted;
    requests_.push_back(std::move(r));
  }
}

// A finished request frees its KV cache and all but one small object, which lingers (a cache of
// results): the long-lived stragglers that pin sparse pages.
void ServingLoop::finish(Request& r) {
  release(r.kv);
  for (std::size_t i = 1; i < r.smalls.size(); ++i) release(r.smalls[i]);
  if (!r.smalls.empty()) {
    const std::uint64_t linger = kLingerMin + rng_() % (kLingerMax - kLingerMin + 1);
    lingering_.push_back({c_.steps + linger, r.smalls[0]});
  }
  r.smalls.clear();
}

void ServingLoop::step() {
  admit();

  // Temporaries of this step, sized by the batch.
  const std::size_t batch_tokens = requests_.size() + std::size_t(kPromptMedian);
  std::vector<Tracked> temps(2 + rng_() % 4);
  for (auto& t : temps) {
    const double want = double(batch_tokens * kTempBytesPerToken[rng_() % 4]) * temp_scale_;
    if (!allocate(std::max<std::size_t>(4096, std::size_t(want)), t)) t.obj.handle = {};
  }

  // Decode one token per request; grow KV caches; replace a small object now and then.
  for (auto& r : requests_) {
    ++r.tokens;
    if (r.tokens >= r.kv_tokens) {
      r.kv_tokens += kGrowEvery;
      if (!grow(r.kv, r.kv_tokens * bytes_per_token_)) {
        r.target = r.tokens;  // out of memory: the request ends early, as a server would cut it
        ++c_.requests_cut;
      }
    }
    if (!r.smalls.empty() && rng_() % 20 == 0) {
      Tracked& s = r.smalls[rng_() % r.smalls.size()];
      const std::size_t bytes = s.obj.bytes;
      check(s, s.pattern_bytes);
      release(s);
      if (!allocate(bytes, s)) s.obj.handle = {};
    }
  }

  // Check a few objects: whatever moved since they were written must have kept its bytes.
  for (int k = 0; k < 2 && !requests_.empty(); ++k) {
    const Request& r = requests_[rng_() % requests_.size()];
    check(r.kv, r.kv.pattern_bytes);
    for (const auto& s : r.smalls)
      if (!s.obj.handle.is_null()) check(s, s.pattern_bytes);
  }
  if (!lingering_.empty()) {
    const auto& l = lingering_[rng_() % lingering_.size()];
    check(l.obj, l.obj.pattern_bytes);
  }
  if (sweep_ && sweep_every_ && c_.steps % sweep_every_ == 0) sweep(temps);

  for (auto it = temps.rbegin(); it != temps.rend(); ++it) release(*it);
  for (auto it = requests_.begin(); it != requests_.end();) {
    if (it->tokens >= it->target) {
      finish(*it);
      ++c_.requests_finished;
      it = requests_.erase(it);
    } else {
      ++it;
    }
  }
  // Lingering objects expire out of order.
  for (auto& l : lingering_)
    if (l.until_step <= c_.steps) release(l.obj);
  std::erase_if(lingering_, [](const Lingering& l) { return l.obj.obj.handle.is_null(); });

  heap_.step();
  ++c_.steps;
  if (c_.steps % kProbeEvery == 0) {
    const std::size_t free_bytes = capacity_ > live_bytes_ ? capacity_ - live_bytes_ : 0;
    const auto want = std::size_t(double(free_bytes) * kProbeFraction);
    if (want > 0) {
      ++c_.probes;
      if (!heap_.probe(want)) ++c_.probes_failed;
    }
  }
  c_.running = requests_.size();
}

void ServingLoop::sweep(const std::vector<Tracked>& temps) {
  sweep_items_.clear();
  auto add = [&](const Tracked& t) {
    if (t.obj.handle.is_null()) return;
    const valet::Handle h = t.obj.handle;
    sweep_items_.push_back({{h.index, h.generation, h.heap}, t.pattern_bytes > kWholeLimit ? 1u : 0u, t.seed,
                            t.pattern_bytes});
  };
  for (const auto& r : requests_) {
    add(r.kv);
    for (const auto& s : r.smalls) add(s);
  }
  for (const auto& l : lingering_) add(l.obj);
  for (const auto& t : temps) add(t);

  auto totals = sweep_->run(sweep_items_);
  if (!totals.ok()) {
    // A full heap has no room for the sweep's argument object: a skipped sweep, not a failure.
    if (totals.code() == valet::Errc::out_of_memory) ++c_.sweeps_skipped;
    return note_error(totals.error());
  }
  ++c_.sweeps;
  c_.swept_objects += totals->objects;
  c_.swept_bytes += totals->bytes_checked;
  c_.swept_corrupt_bytes += totals->mismatched_bytes;
  // Items the checker never reached (its argument object did not resolve) count as unresolved.
  const std::uint64_t unresolved = sweep_items_.size() - std::min<std::uint64_t>(sweep_items_.size(), totals->objects);
  c_.swept_unresolved += unresolved;
  if (totals->mismatched_bytes || unresolved)
    std::fprintf(stderr,
                 "\nvalet-serve: HANDLE SWEEP MISMATCH: of %zu objects read through their handles, %llu did not "
                 "resolve and %llu bytes differ from their patterns\n",
                 sweep_items_.size(), (unsigned long long)unresolved, (unsigned long long)totals->mismatched_bytes);
}

void ServingLoop::free_all() {
  for (auto& r : requests_) {
    release(r.kv);
    for (auto& s : r.smalls) release(s);
  }
  requests_.clear();
  for (auto& l : lingering_) release(l.obj);
  lingering_.clear();
  c_.running = 0;
}

}  // namespace serve
