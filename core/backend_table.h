// BackendTable: the immutable snapshot of every pool's usable backends that
// workers select from.
//
// Built by the control plane (core/control.h) whenever health, admin state,
// weights or the configuration change, then published to every worker through
// a latest-wins mailbox. Nothing in a table changes after it is built, so
// workers read it without locks; a worker keeps the table (and through it the
// Backend objects) alive with a shared_ptr while it uses it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "conf/config.h"
#include "core/backend.h"
#include "core/select/lookup_table.h"

namespace lb::tls {
struct Contexts;
}

namespace lb::core {

// One backend as a selector sees it: usable now, with its effective weight
// (configured weight, or the admin API's, scaled down during slow start).
struct Candidate {
  Backend* backend;
  uint32_t weight;  // > 0
  // The backend's max_connections when the table was built: a reload changes
  // it in place on the same Backend, and a changed limit must make a new
  // table so selectors that cache "has a limit" see it.
  uint64_t max_connections = 0;
};

// One pool's part of a BackendTable. The control plane builds a new one only
// when the pool's selection input changes (backends, candidates and their
// effective weights, selector settings); otherwise successive BackendTables
// share the same object, so identity means "unchanged" to workers.
struct PoolTable {
  std::string name;
  uint64_t version = 0;  // of the BackendTable it was built for
  conf::SelectorKind selector = conf::SelectorKind::RoundRobin;
  conf::HashKey hash_key = conf::HashKey::SourceIp;
  unsigned hash_balance_factor = 0;

  // Every backend of the pool (keeps them alive), sorted by id.
  std::vector<BackendPtr> backends;
  // What selectors choose from: the usable primaries (up, active, weight > 0),
  // or, when there is none, the usable backups. Sorted by backend id.
  std::vector<Candidate> candidates;
  bool using_backups = false;

  // Prebuilt lookup table for hash selectors; null for the others.
  std::shared_ptr<const LookupTable> lookup;
  // Digest of the lookup table (hash selectors), 0 otherwise.
  uint64_t digest = 0;
};

using PoolTablePtr = std::shared_ptr<const PoolTable>;

// True when the pool has candidates and every one is at its max_connections.
inline bool all_full(const PoolTable& p) {
  if (p.candidates.empty()) return false;
  for (const auto& c : p.candidates)
    if (!c.backend->full()) return false;
  return true;
}

struct BackendTable {
  uint64_t version = 0;             // increases with every publish
  std::vector<PoolTablePtr> pools;  // same order as Config::pools of its generation
  // The TLS contexts of the configuration these pools are of: a connection
  // to a backend picked from this table takes its pool's [pool.tls] from
  // here, so a reload that turns re-encryption on or off applies to every
  // connect from the moment its pools do, whatever listener generation
  // accepted the client. Null without TLS.
  std::shared_ptr<const tls::Contexts> tls;

  const PoolTable* find(const std::string& name) const { return find_ptr(name).get(); }
  PoolTablePtr find_ptr(const std::string& name) const {
    for (auto& p : pools)
      if (p->name == name) return p;
    return nullptr;
  }
};

using BackendTablePtr = std::shared_ptr<const BackendTable>;

}  // namespace lb::core
