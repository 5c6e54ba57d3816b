// Helpers shared by the selector implementations (not a public interface).
//
// Thread rules: stateless inline functions; they read Backend counters with
// relaxed loads, which is all selection needs (a slightly stale count only
// makes one choice slightly less optimal).
#pragma once

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstdint>
#include <span>
#include <vector>

#include "core/backend.h"
#include "core/select/selector.h"

namespace lb::core::select_detail {

inline bool avoided(const PickContext& ctx, const Backend* b) {
  // Holds at most retries + 1 entries: a linear scan beats any set.
  for (const Backend* a : ctx.avoid)
    if (a == b) return true;
  return false;
}

inline bool usable(const PickContext& ctx, const Backend* b) { return !b->full() && !avoided(ctx, b); }

// Active connections, clamped at 0: decrements racing increments on other
// workers may make the counter transiently negative.
inline uint64_t active_of(const Backend* b) {
  int64_t a = b->active.load(std::memory_order_relaxed);
  return a > 0 ? static_cast<uint64_t>(a) : 0;
}

// a_load / a_weight < b_load / b_weight without division. Loads are
// connection counts and weights at most a few thousand, far from overflow.
inline bool less_loaded(uint64_t a_load, uint32_t a_weight, uint64_t b_load, uint32_t b_weight) {
  return a_load * b_weight < b_load * a_weight;
}

// The usable candidate with the lowest (active + load_bias) / weight, scanning
// from index `start` and wrapping, so ties go to the first after `start`;
// null when none is usable.
inline Backend* least_loaded_from(std::span<const Candidate> candidates, size_t start, const PickContext& ctx,
                                  uint64_t load_bias) {
  const size_t n = candidates.size();
  Backend* best = nullptr;
  uint64_t best_load = 0;
  uint32_t best_weight = 1;
  for (size_t k = 0, i = start; k < n; ++k, ++i) {
    if (i == n) i = 0;
    const Candidate& c = candidates[i];
    if (!usable(ctx, c.backend)) continue;
    const uint64_t load = active_of(c.backend) + load_bias;
    if (best == nullptr || less_loaded(load, c.weight, best_load, best_weight)) {
      best = c.backend;
      best_load = load;
      best_weight = c.weight;
    }
  }
  return best;
}

// The input of a hash table build: candidates sorted by id, weight-0 entries
// dropped. PoolTable already sorts by id; sorting a copy again costs
// microseconds and makes placement independent of any caller's order, which
// is the property the spec promises (same ids and weights -> same table).
inline std::vector<Candidate> sorted_by_id(std::span<const Candidate> candidates) {
  std::vector<Candidate> out;
  out.reserve(candidates.size());
  for (const Candidate& c : candidates)
    if (c.weight > 0) out.push_back(c);
  std::sort(out.begin(), out.end(),
            [](const Candidate& a, const Candidate& b) { return a.backend->id < b.backend->id; });
  // Ids are unique within a pool (conf validates it); equal ids would make
  // the order, and so the table, depend on the input order.
  assert(std::adjacent_find(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) {
           return a.backend->id == b.backend->id;
         }) == out.end());
  return out;
}

inline uint64_t total_weight_of(std::span<const Candidate> candidates) {
  uint64_t w = 0;
  for (const Candidate& c : candidates) w += c.weight;
  return w;
}

}  // namespace lb::core::select_detail
