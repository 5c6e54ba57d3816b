#include "core/select/random_two.h"

#include <algorithm>

#include "core/select/pick_util.h"

namespace lb::core {

RandomTwoSelector::RandomTwoSelector(std::span<const Candidate> candidates, uint64_t seed)
    : candidates_(candidates), rng_(seed) {
  cumulative_.reserve(candidates.size());
  for (const Candidate& c : candidates) {
    total_weight_ += c.weight;
    cumulative_.push_back(total_weight_);
    if (c.weight != candidates.front().weight) uniform_ = false;
  }
}

size_t RandomTwoSelector::index_of(uint64_t point) const {
  return static_cast<size_t>(std::upper_bound(cumulative_.begin(), cumulative_.end(), point) -
                             cumulative_.begin());
}

Backend* RandomTwoSelector::pick(const PickContext& ctx) {
  using select_detail::usable;
  const size_t n = candidates_.size();
  if (n == 0) return nullptr;
  if (n == 1) return usable(ctx, candidates_[0].backend) ? candidates_[0].backend : nullptr;

  size_t first, second;
  if (uniform_) {
    first = static_cast<size_t>(rng_.below(n));
    second = static_cast<size_t>(rng_.below(n - 1));
    if (second >= first) ++second;
  } else {
    first = index_of(rng_.below(total_weight_));
    // Weighted draw over everyone but `first`: a point in a line of length
    // total - w_first, shifted past first's interval when it lands beyond it.
    const uint32_t w_first = candidates_[first].weight;
    if (w_first == total_weight_) {
      // Everyone else has weight 0 (PoolTable never publishes that, but a
      // second draw would fall off the end).
      return usable(ctx, candidates_[first].backend) ? candidates_[first].backend : scan(ctx);
    }
    uint64_t point = rng_.below(total_weight_ - w_first);
    if (point >= cumulative_[first] - w_first) point += w_first;
    second = index_of(point);
  }

  const Candidate& a = candidates_[first];
  const Candidate& b = candidates_[second];
  const bool a_ok = usable(ctx, a.backend);
  const bool b_ok = usable(ctx, b.backend);
  if (a_ok && b_ok) {
    const bool b_better = select_detail::less_loaded(select_detail::active_of(b.backend), b.weight,
                                                     select_detail::active_of(a.backend), a.weight);
    return b_better ? b.backend : a.backend;
  }
  if (a_ok) return a.backend;
  if (b_ok) return b.backend;
  return scan(ctx);
}

Backend* RandomTwoSelector::scan(const PickContext& ctx) {
  const auto from = static_cast<size_t>(rng_.below(candidates_.size()));
  return select_detail::least_loaded_from(candidates_, from, ctx, 0);
}

}  // namespace lb::core
