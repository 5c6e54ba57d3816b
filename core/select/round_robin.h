// Smooth weighted round robin (nginx's algorithm, ngx_http_upstream_round_robin.c).
//
// Every pick adds each usable candidate's weight to its `current`, takes the
// candidate with the largest `current` and subtracts the total weight from
// it. Over any W consecutive picks (W = sum of weights, candidates unchanged)
// each candidate is chosen exactly `weight` times, and the choices are spread
// out rather than bunched: weights 5,1,1 give a a b a c a a.
//
// Candidates that are full or avoided take no part in a pick (they neither
// gain weight nor count in the total), as nginx does for down peers.
//
// When the candidates or weights change (a slow-start step, drain, health,
// an admin reweight), the new selector takes over the old one's credit per
// backend id instead of starting from zero, as nginx and HAProxy keep their
// current weights: restarting would hand the first picks of every new table
// to the heaviest backend, which at 4 tables a second during slow start is
// most of the traffic at low rates.
//
// Ties go to the first candidate in scan order, and each worker starts its
// scan at seed % n: with equal weights, workers start on different backends
// instead of all sending their first connection to the same one. Only the tie
// order changes, so the per-cycle proportions stay exact.
//
// Cost: O(n) per pick over a compact per-worker array, no allocation. The
// nginx cycle is O(n) too; HAProxy's tree-based fwrr is O(log n) but only
// wins for hundreds of backends.
//
// Thread rules: one instance per worker, used only on that worker's loop.
// The Backend objects belong to the PoolTable, which outlives the selector.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/select/selector.h"

namespace lb::core {

class RoundRobinSelector final : public Selector {
 public:
  // With `previous` (the selector this one replaces after a weight or
  // candidate change; must be alive during the call), the cycle goes on
  // instead of restarting: see take_over().
  RoundRobinSelector(std::span<const Candidate> candidates, uint64_t seed,
                     const RoundRobinSelector* previous = nullptr);
  Backend* pick(const PickContext& ctx) override;

 private:
  void take_over(const RoundRobinSelector& previous);

  // Everything the scan reads, in one array: unlimited backends are never
  // dereferenced unless the pick has backends to avoid.
  struct Entry {
    int64_t current;
    Backend* backend;
    uint32_t weight;
    bool limited;  // max_connections != 0: full() must be checked
  };
  std::vector<Entry> entries_;  // candidates' order
  size_t start_ = 0;            // scan start: tie-break order of this worker
};

}  // namespace lb::core
