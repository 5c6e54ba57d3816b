// LookupTable: the immutable, shared lookup structure of a hash selector
// (ring_hash, maglev), built once per PoolTable by build_lookup_table()
// (core/select/selector.h) and held by the PoolTable (core/backend_table.h).
// Its own header so that backend_table.h and selector.h do not need each other.
//
// Thread rules: immutable once built; read by every worker without a lock.
#pragma once

#include <cstdint>

namespace lb::core {

class LookupTable {
 public:
  virtual ~LookupTable() = default;
  // Short digest of the table's contents: equal digests mean equal placement.
  virtual uint64_t digest() const = 0;
};

}  // namespace lb::core
