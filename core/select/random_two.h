// Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized
// Load Balancing", 2001): draw two distinct candidates at random, each with
// probability proportional to its weight, and keep the one with the lower
// active / weight. Nearly as even as least connections, but O(log n) per pick
// and without the herd effect of every worker chasing the same least-loaded
// backend with slightly stale counts.
//
// Ties keep the first draw, so with no load at all picks follow the weights
// exactly (the first draw is weighted-random). The second draw is made
// without replacement: it is weighted over the candidates other than the
// first. If one draw is full or avoided the other is used; if both are, a
// scan (from a random start) takes the least loaded usable candidate.
//
// Randomness: a per-worker xoshiro256** seeded from make_selector's seed
// (core/hash/prng.h). Cost: two draws and two binary searches over the
// cumulative weights (none when all weights are equal), no allocation.
//
// Thread rules: one instance per worker, used only on that worker's loop.
// The candidates span belongs to the PoolTable, which outlives the selector.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/hash/prng.h"
#include "core/select/selector.h"

namespace lb::core {

class RandomTwoSelector final : public Selector {
 public:
  RandomTwoSelector(std::span<const Candidate> candidates, uint64_t seed);
  Backend* pick(const PickContext& ctx) override;

 private:
  size_t index_of(uint64_t point) const;  // candidate owning cumulative weight `point`
  Backend* scan(const PickContext& ctx);

  std::span<const Candidate> candidates_;
  std::vector<uint64_t> cumulative_;  // cumulative_[i] = weights of candidates 0..i
  uint64_t total_weight_ = 0;
  bool uniform_ = true;  // all weights equal: index draws need no search
  hash::Xoshiro256 rng_;
};

}  // namespace lb::core
