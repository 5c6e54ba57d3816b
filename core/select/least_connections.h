// Weighted least connections: the candidate with the smallest
// (active + 1) / weight, counting the connections of all workers
// (Backend::active, relaxed atomics). The +1 is the connection being placed:
// with every backend idle it prefers the heaviest, and a weight-2 backend
// holds twice the connections of a weight-1 backend at equilibrium.
//
// Ratios are compared by cross multiplication, no floating point. Ties go to
// the first candidate in scan order, and the scan start advances by one on
// every pick (starting at seed % n per worker): equally loaded backends are
// taken in turn instead of the first one always winning, which matters most
// at start-up, when every count is 0 and every worker would otherwise pile
// onto backend 0 before any count moves.
//
// Cost: O(n) relaxed loads per pick, no allocation.
//
// Thread rules: one instance per worker, used only on that worker's loop.
// The candidates span belongs to the PoolTable, which outlives the selector.
#pragma once

#include <cstdint>
#include <span>

#include "core/select/selector.h"

namespace lb::core {

class LeastConnectionsSelector final : public Selector {
 public:
  LeastConnectionsSelector(std::span<const Candidate> candidates, uint64_t seed);
  Backend* pick(const PickContext& ctx) override;

 private:
  std::span<const Candidate> candidates_;
  size_t start_ = 0;  // where the next scan begins
};

}  // namespace lb::core
