// Test helpers for the selector tests: a pool of Backend objects and its
// candidate list, built without lb_conf's loader.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/backend_table.h"
#include "core/select/selector.h"

namespace lb::core::test {

inline BackendPtr make_backend(const std::string& id, unsigned weight = 1, uint64_t max_connections = 0) {
  conf::Backend c;
  c.id = id;
  c.weight = weight;
  c.max_connections = max_connections;
  return std::make_shared<Backend>("pool", c);
}

// Backends "b00", "b01", ... (ids sort in creation order) with the given
// weights; candidates in the same order.
struct TestPool {
  std::vector<BackendPtr> backends;
  std::vector<Candidate> candidates;

  TestPool() = default;
  explicit TestPool(const std::vector<unsigned>& weights, const std::string& prefix = "b") {
    for (size_t i = 0; i < weights.size(); ++i) {
      std::string id = prefix;
      if (i < 10) id.push_back('0');
      id.append(std::to_string(i));
      add(id, weights[i]);
    }
  }
  static TestPool equal(size_t n, const std::string& prefix = "b") {
    return TestPool(std::vector<unsigned>(n, 1), prefix);
  }
  Backend* add(const std::string& id, unsigned weight = 1, uint64_t max_connections = 0) {
    backends.push_back(make_backend(id, weight, max_connections));
    candidates.push_back({backends.back().get(), weight, max_connections});
    return backends.back().get();
  }
  size_t index_of(const Backend* b) const {
    for (size_t i = 0; i < backends.size(); ++i)
      if (backends[i].get() == b) return i;
    return backends.size();
  }
  // A PoolTable as the control plane would publish it.
  PoolTable table(conf::SelectorKind kind, unsigned balance_factor = 0) const {
    PoolTable t;
    t.name = "pool";
    t.selector = kind;
    t.hash_balance_factor = balance_factor;
    t.backends = backends;
    t.candidates = candidates;
    t.lookup = build_lookup_table(kind, candidates);
    t.digest = t.lookup ? t.lookup->digest() : 0;
    return t;
  }
};

// Deterministic key stream for statistical tests (not a placement hash).
inline uint64_t test_key(uint64_t i) {
  uint64_t z = i * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace lb::core::test
