// CopyRegion (copy_region.h): places, holes, the mapped extent, and compaction rounds.
#include "copy_region.h"

#include <string>

namespace valet::detail {

namespace {
Error region_broken(const std::string& what) { return make_error(Errc::internal, "copy region: " + what); }
Error region_refusal(const std::string& what) { return make_error(Errc::invalid_argument, "copy region: " + what); }
std::string num(std::uint64_t v) { return std::to_string(v); }
bool power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
}  // namespace

Result<CopyRegion> CopyRegion::create(const Shape& shape) {
  if (!power_of_two(shape.align) || shape.chunk == 0 || shape.chunk % shape.align != 0)
    return region_refusal("the chunk must be a non-zero multiple of the alignment, a power of two");
  if (shape.capacity % shape.chunk != 0) return region_refusal("the capacity must be a whole number of chunks");
  return CopyRegion(shape);
}

// --- placement ---

std::optional<CopyRegion::Offset> CopyRegion::place(std::uint64_t bytes, std::uint32_t owner) {
  if (bytes == 0) return std::nullopt;
  const std::uint64_t size = footprint(bytes);
  Offset at;
  if (auto it = by_size_.lower_bound({size, 0}); it != by_size_.end()) {
    at = it->second;
    take_hole(at, it->first, size);
  } else if (size <= mapped_ - top_) {
    at = top_;
    top_ += size;
  } else {
    return std::nullopt;
  }
  objects_.emplace(at, Object{size, owner, Use::placed});
  object_bytes_ += size;
  return at;
}

std::optional<std::uint64_t> CopyRegion::growth_for(std::uint64_t bytes) const {
  const std::uint64_t size = footprint(bytes);
  if (largest_hole() >= size || size <= mapped_ - top_) return 0;
  if (size > shape_.capacity - top_) return std::nullopt;
  const std::uint64_t end = (top_ + size + shape_.chunk - 1) / shape_.chunk * shape_.chunk;
  return end - mapped_;
}

Status CopyRegion::free(Offset at) {
  auto it = objects_.find(at);
  if (it == objects_.end() || it->second.use == Use::arriving)
    return region_refusal("no object starts at offset " + num(at));
  if (it->second.use == Use::leaving) objects_.at(it->second.partner).partner = kNoPartner;  // its move is orphaned
  const std::uint64_t size = it->second.bytes;
  objects_.erase(it);
  object_bytes_ -= size;
  add_hole(at, size);
  return ok_status();
}

Status CopyRegion::set_owner(Offset at, std::uint32_t owner) {
  auto it = objects_.find(at);
  if (it == objects_.end() || it->second.use != Use::placed)
    return region_refusal("no placed object starts at offset " + num(at));
  it->second.owner = owner;
  return ok_status();
}

std::optional<std::pair<std::uint64_t, std::uint32_t>> CopyRegion::object_at(Offset at) const {
  auto it = objects_.find(at);
  if (it == objects_.end()) return std::nullopt;
  return std::pair{it->second.bytes, it->second.owner};
}

void CopyRegion::add_hole(Offset at, std::uint64_t bytes) {
  auto next = holes_.lower_bound(at);
  if (next != holes_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == at) {  // merge with the hole below
      at = prev->first;
      bytes += prev->second;
      by_size_.erase({prev->second, prev->first});
      hole_bytes_ -= prev->second;
      holes_.erase(prev);
    }
  }
  if (next != holes_.end() && next->first == at + bytes) {  // and with the hole above
    bytes += next->second;
    by_size_.erase({next->second, next->first});
    hole_bytes_ -= next->second;
    holes_.erase(next);
  }
  if (at + bytes == top_) {  // the top comes down instead
    top_ = at;
    return;
  }
  holes_.emplace(at, bytes);
  by_size_.emplace(bytes, at);
  hole_bytes_ += bytes;
}

void CopyRegion::take_hole(Offset at, std::uint64_t size, std::uint64_t bytes) {
  holes_.erase(at);
  by_size_.erase({size, at});
  hole_bytes_ -= size;
  if (size > bytes) {
    holes_.emplace(at + bytes, size - bytes);
    by_size_.emplace(size - bytes, at + bytes);
    hole_bytes_ += size - bytes;
  }
}

// --- the mapped extent ---

Status CopyRegion::grow(std::uint64_t bytes) {
  if (bytes % shape_.chunk != 0) return region_refusal("growth of " + num(bytes) + " bytes is not whole chunks");
  if (bytes > shape_.capacity - mapped_) return region_refusal("growth of " + num(bytes) + " bytes passes the capacity");
  mapped_ += bytes;
  return ok_status();
}

std::uint64_t CopyRegion::surplus(std::uint64_t headroom, std::uint32_t hysteresis) const {
  const std::uint64_t want_end = top_ + std::min(headroom, shape_.capacity - top_);
  const std::uint64_t want = std::min(shape_.capacity, (want_end + shape_.chunk - 1) / shape_.chunk * shape_.chunk);
  if (mapped_ <= want || mapped_ - want < std::uint64_t(hysteresis) * shape_.chunk) return 0;
  return mapped_ - want;
}

Status CopyRegion::shrink(std::uint64_t bytes) {
  if (bytes % shape_.chunk != 0) return region_refusal("a trim of " + num(bytes) + " bytes is not whole chunks");
  if (bytes > mapped_ - top_) return region_refusal("a trim of " + num(bytes) + " bytes reaches below the top");
  mapped_ -= bytes;
  return ok_status();
}

// --- compaction ---

CopyRegion::Move CopyRegion::begin(Offset from, Offset to) {
  Object& o = objects_.at(from);
  o.use = Use::leaving;
  o.partner = to;
  objects_.emplace(to, Object{o.bytes, o.owner, Use::arriving, from});
  ++moves_in_flight_;
  return Move{from, to, o.bytes, o.owner};
}

std::optional<CopyRegion::Offset> CopyRegion::best_hole(std::uint64_t bytes, Offset below, std::size_t scan) const {
  std::size_t looked = 0;
  for (auto it = by_size_.lower_bound({bytes, 0}); it != by_size_.end() && looked < scan; ++it, ++looked)
    if (it->second + bytes <= below) return it->second;
  return std::nullopt;
}

std::optional<std::pair<std::vector<CopyRegion::Offset>, std::uint64_t>> CopyRegion::cheapest_run(
    std::size_t scan, std::uint64_t budget, const std::function<bool(std::uint32_t)>& may_move) const {
  std::optional<std::pair<std::vector<Offset>, std::uint64_t>> best;
  std::size_t looked = 0;
  for (auto h = holes_.begin(); h != holes_.end() && looked < scan; ++h, ++looked) {
    auto next = std::next(h);
    const Offset end = next == holes_.end() ? top_ : next->first;
    std::vector<Offset> run;
    std::uint64_t bytes = 0;
    bool movable = true;
    for (auto o = objects_.lower_bound(h->first + h->second); o != objects_.end() && o->first < end; ++o) {
      bytes += o->second.bytes;
      if (o->second.use != Use::placed || bytes > budget || (best && bytes >= best->second) ||
          !may_move(o->second.owner)) {
        movable = false;
        break;
      }
      run.push_back(o->first);
    }
    if (movable && !run.empty()) best = std::pair{std::move(run), bytes};
  }
  return best;
}

CopyRegion::Round CopyRegion::plan_round(const RoundLimits& limits, const std::function<bool(std::uint32_t)>& may_move) {
  Round round;
  std::uint64_t spent = 0;
  // The highest movable placed objects, each into the best-fitting hole below it.
  auto o = objects_.end();
  std::size_t looked = 0;
  while (hole_bytes_ > limits.target_hole_bytes && spent < limits.budget_bytes && o != objects_.begin() &&
         looked < limits.scan) {
    --o;
    ++looked;
    const Object& obj = o->second;
    if (obj.use != Use::placed || obj.bytes > limits.max_move_bytes || !may_move(obj.owner)) continue;
    const std::optional<Offset> to = best_hole(obj.bytes, o->first, limits.hole_scan);
    if (!to) {
      if (!round.moves.empty()) return round;  // the rest after these moves' commits
      break;
    }
    // `o` stays valid: the arriving copy is inserted below it and no entry is erased.
    const auto hole = holes_.find(*to);
    take_hole(*to, hole->second, obj.bytes);
    round.moves.push_back(begin(o->first, *to));
    spent += obj.bytes;
  }
  if (!round.moves.empty() || hole_bytes_ <= limits.target_hole_bytes || spent >= limits.budget_bytes) return round;
  // None fits below the highest: the cheapest run between two holes goes to the top.
  auto run = cheapest_run(limits.scan, limits.max_move_bytes, may_move);
  if (!run) return round;
  if (run->second <= mapped_ - top_) {
    for (Offset from : run->first) {
      const Offset to = top_;
      top_ += objects_.at(from).bytes;
      round.moves.push_back(begin(from, to));
    }
    return round;
  }
  const std::uint64_t end = (top_ + run->second + shape_.chunk - 1) / shape_.chunk * shape_.chunk;
  if (end <= shape_.capacity) {
    round.growth_wanted = end - mapped_;
    return round;
  }
  // At the capacity: into holes elsewhere, each object the best fit, or not at all. The holes
  // around the run stay out, so that its space joins them.
  const Offset skip_low = std::prev(holes_.upper_bound(run->first.front()))->first;
  const Offset run_end = run->first.back() + objects_.at(run->first.back()).bytes;
  for (Offset from : run->first) {
    const std::uint64_t bytes = objects_.at(from).bytes;
    std::optional<Offset> to;
    for (auto it = by_size_.lower_bound({bytes, 0}); it != by_size_.end(); ++it)
      if (it->second != skip_low && it->second != run_end) {
        to = it->second;
        break;
      }
    if (!to) {  // the run cannot go whole: none of it goes
      for (const Move& m : round.moves) (void)cancel(m);
      round.moves.clear();
      return round;
    }
    take_hole(*to, holes_.at(*to), bytes);
    round.moves.push_back(begin(from, *to));
  }
  return round;
}

std::optional<std::pair<std::map<CopyRegion::Offset, CopyRegion::Object>::iterator,
                        std::map<CopyRegion::Offset, CopyRegion::Object>::iterator>>
CopyRegion::in_flight(const Move& m) {
  auto to = objects_.find(m.to);
  if (to == objects_.end() || to->second.use != Use::arriving || to->second.owner != m.owner ||
      to->second.bytes != m.bytes)
    return std::nullopt;
  if (to->second.partner == kNoPartner) return std::pair{to, objects_.end()};
  if (to->second.partner != m.from) return std::nullopt;
  return std::pair{to, objects_.find(m.from)};
}

Status CopyRegion::commit(const Move& m) {
  const auto found = in_flight(m);
  if (!found || found->second == objects_.end())
    return region_refusal("no move of a live object from " + num(m.from) + " to " + num(m.to) + " in flight");
  auto [to, from] = *found;
  to->second.use = Use::placed;
  to->second.partner = kNoPartner;
  objects_.erase(from);
  --moves_in_flight_;
  add_hole(m.from, m.bytes);
  return ok_status();
}

Status CopyRegion::cancel(const Move& m) {
  const auto found = in_flight(m);
  if (!found) return region_refusal("no move from " + num(m.from) + " to " + num(m.to) + " in flight");
  auto [to, from] = *found;
  if (from != objects_.end()) {
    from->second.use = Use::placed;
    from->second.partner = kNoPartner;
  }
  objects_.erase(to);
  --moves_in_flight_;
  add_hole(m.to, m.bytes);
  return ok_status();
}

// --- validate ---

Status CopyRegion::validate() const {
  if (mapped_ % shape_.chunk != 0 || mapped_ > shape_.capacity) return region_broken("mapped " + num(mapped_) + " is not whole chunks within the capacity");
  if (top_ > mapped_) return region_broken("top " + num(top_) + " above the mapped " + num(mapped_));
  if (by_size_.size() != holes_.size()) return region_broken("the size index has " + num(by_size_.size()) + " holes, not " + num(holes_.size()));
  std::uint64_t at = 0, holes = 0, objects = 0;
  std::size_t arriving = 0;
  auto o = objects_.begin();
  auto h = holes_.begin();
  bool last_was_hole = false;
  while (o != objects_.end() || h != holes_.end()) {
    const bool take_hole = h != holes_.end() && (o == objects_.end() || h->first < o->first);
    const Offset start = take_hole ? h->first : o->first;
    const std::uint64_t size = take_hole ? h->second : o->second.bytes;
    if (start != at) return region_broken((take_hole ? "hole at " : "object at ") + num(start) + " where " + num(at) + " was expected");
    if (size == 0 || start % shape_.align != 0 || size % shape_.align != 0)
      return region_broken("range at " + num(start) + " of " + num(size) + " bytes is empty or unaligned");
    if (take_hole) {
      if (last_was_hole) return region_broken("holes at " + num(start) + " and below it are not merged");
      if (!by_size_.count({size, start})) return region_broken("hole at " + num(start) + " missing from the size index");
      holes += size;
      ++h;
    } else {
      const Object& obj = o->second;
      if (obj.use != Use::placed && obj.partner != kNoPartner) {  // the other end must name this one
        auto p = objects_.find(obj.partner);
        const Use other = obj.use == Use::leaving ? Use::arriving : Use::leaving;
        if (p == objects_.end() || p->second.use != other || p->second.partner != start ||
            p->second.owner != obj.owner || p->second.bytes != obj.bytes)
          return region_broken("the move of the object at " + num(start) + " has no matching other end");
      }
      if (obj.use == Use::leaving && obj.partner == kNoPartner) return region_broken("a leaving object at " + num(start) + " has no destination");
      if (obj.use == Use::placed && obj.partner != kNoPartner) return region_broken("a placed object at " + num(start) + " names a move");
      if (obj.use == Use::arriving) ++arriving;
      if (obj.use != Use::arriving) objects += size;
      ++o;
    }
    last_was_hole = take_hole;
    at = start + size;
  }
  if (at != top_) return region_broken("objects and holes end at " + num(at) + ", not at the top " + num(top_));
  if (last_was_hole) return region_broken("a hole reaches the top " + num(top_));
  if (holes != hole_bytes_) return region_broken("holes total " + num(holes) + ", counted " + num(hole_bytes_));
  if (objects != object_bytes_) return region_broken("objects total " + num(objects) + ", counted " + num(object_bytes_));
  if (arriving != moves_in_flight_)
    return region_broken(num(arriving) + " arriving objects for " + num(moves_in_flight_) + " moves");
  return ok_status();
}

}  // namespace valet::detail
