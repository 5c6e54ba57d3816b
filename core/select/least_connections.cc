#include "core/select/least_connections.h"

#include "core/select/pick_util.h"

namespace lb::core {

LeastConnectionsSelector::LeastConnectionsSelector(std::span<const Candidate> candidates, uint64_t seed)
    : candidates_(candidates),
      start_(candidates.empty() ? 0 : static_cast<size_t>(seed % candidates.size())) {}

Backend* LeastConnectionsSelector::pick(const PickContext& ctx) {
  const size_t n = candidates_.size();
  if (n == 0) return nullptr;
  const size_t from = start_;
  if (++start_ == n) start_ = 0;
  // +1 counts the connection being placed, so idle backends rank by weight.
  return select_detail::least_loaded_from(candidates_, from, ctx, 1);
}

}  // namespace lb::core
