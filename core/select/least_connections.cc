#include "core/select/least_connections.h"

#include "core/select/pick_util.h"

namespace lb::core {

LeastConnectionsSelector::LeastConnectionsSelector(std::span<const Candidate> candidates, uint64_t seed)
    : candidates_(candidates),
      start_(candidates.empty() ? 0 : static_cast<size_t>(seed % candidates.size())) {}

Backend* LeastConnectionsSelector::pick(const PickContext& ctx) {
  const size_t n = candidates_.size();
  if (n == 0) return nullptr;
  size_t i = start_;
  if (++start_ == n) start_ = 0;

  Backend* best = nullptr;
  uint64_t best_load = 0;
  uint32_t best_weight = 1;
  for (size_t k = 0; k < n; ++k, ++i) {
    if (i == n) i = 0;
    const Candidate& c = candidates_[i];
    if (!select_detail::usable(ctx, c.backend)) continue;
    const uint64_t load = select_detail::active_of(c.backend) + 1;
    if (best == nullptr || select_detail::less_loaded(load, c.weight, best_load, best_weight)) {
      best = c.backend;
      best_load = load;
      best_weight = c.weight;
    }
  }
  return best;
}

}  // namespace lb::core
