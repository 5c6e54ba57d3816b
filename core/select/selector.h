// Selectors: which backend gets the next connection or UDP session.
//
// Two halves, kept apart (Envoy, Katran):
//  * build_lookup_table(): for ring_hash and maglev, built once per PoolTable
//    from candidates sorted by backend id; immutable and shared by all workers,
//    lookups take no lock. Placement depends only on ids and weights.
//  * make_selector(): one Selector per worker per PoolTable (successive
//    tables of a pool hand state on, see selector_set.h). Cursor-based
//    selectors (round_robin, least_connections, random_two) keep their cursor
//    or PRNG state here. Not thread-safe: used only on its worker's loop.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "core/backend_table.h"
#include "core/select/lookup_table.h"

namespace lb::core {

struct PickContext {
  uint64_t hash = 0;     // flow hash of the client (see core/hash/flow_hash.h)
  unsigned attempt = 0;  // 0 first try, 1.. retries after connect failures
  // Backends already tried for this connection: never returned again.
  std::span<const Backend* const> avoid;
};

class Selector {
 public:
  virtual ~Selector() = default;
  // A candidate that is not full (Backend::full()) and not in ctx.avoid, or
  // nullptr when there is none. Never throws.
  virtual Backend* pick(const PickContext& ctx) = 0;
};

// Null for selectors that have no shared table. `candidates` sorted by id.
std::shared_ptr<const LookupTable> build_lookup_table(conf::SelectorKind kind,
                                                      std::span<const Candidate> candidates);

// Per-worker selector over `table` (which must outlive it). `seed` varies the
// per-worker PRNG of random_two and the starting point of round_robin.
// `previous`, when given, is the selector of the same pool's previous table
// (still alive during the call): a selector of the same kind takes over the
// state that still means something with the new candidates (round_robin:
// each remaining backend's credit); the others ignore it.
std::unique_ptr<Selector> make_selector(const PoolTable& table, uint64_t seed,
                                        const Selector* previous = nullptr);

}  // namespace lb::core
