#include "core/select/round_robin.h"

#include "core/select/pick_util.h"

namespace lb::core {

RoundRobinSelector::RoundRobinSelector(std::span<const Candidate> candidates, uint64_t seed)
    : start_(candidates.empty() ? 0 : static_cast<size_t>(seed % candidates.size())) {
  entries_.reserve(candidates.size());
  for (const Candidate& c : candidates)
    entries_.push_back({0, c.backend, c.weight, c.backend->max_connections != 0});
}

Backend* RoundRobinSelector::pick(const PickContext& ctx) {
  const size_t n = entries_.size();
  const bool avoiding = !ctx.avoid.empty();
  int64_t total = 0;
  size_t best = n;
  int64_t best_current = 0;
  size_t i = start_;
  for (size_t k = 0; k < n; ++k, ++i) {
    if (i == n) i = 0;
    Entry& e = entries_[i];
    if ((e.limited && e.backend->full()) || (avoiding && select_detail::avoided(ctx, e.backend)))
      continue;
    e.current += e.weight;
    total += e.weight;
    if (best == n || e.current > best_current) {
      best = i;
      best_current = e.current;
    }
  }
  if (best == n) return nullptr;
  entries_[best].current -= total;
  return entries_[best].backend;
}

}  // namespace lb::core
