// SelectorSet: one worker's selectors, one per pool of its current
// BackendTable.
//
// A publish hands the worker a new BackendTable. update() matches its pools
// to the current selectors by PoolTable identity: the control plane shares
// the PoolTable object of every pool it did not change (core/control.h), so
// such a pool keeps its selector as it is, cursor included. Only a pool whose
// table changed gets a new selector, which takes over the state of the one
// it replaces where that state still means something (make_selector's
// `previous`): smooth round robin keeps each remaining backend's credit.
//
// Thread rules: owned by one worker and used only on its loop. Each entry
// holds its PoolTable, which outlives the selector built on it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend_table.h"
#include "core/select/selector.h"

namespace lb::core {

class SelectorSet {
 public:
  struct Entry {
    PoolTablePtr table;
    std::unique_ptr<Selector> selector;
  };

  // Takes the pools of `table`: a pool whose PoolTable is the same object as
  // before keeps its selector untouched; a changed pool gets a new selector
  // built over the old one (make_selector's `previous`); a new pool a fresh
  // one. `seed` varies the new selectors between workers and tables.
  void update(const BackendTable& table, uint64_t seed);
  void clear() { pools_.clear(); }

  // The entry of pool `name`, or null.
  Entry* find(const std::string& name) {
    for (auto& e : pools_)
      if (e.table->name == name) return &e;
    return nullptr;
  }
  const Entry* find(const std::string& name) const { return const_cast<SelectorSet*>(this)->find(name); }

 private:
  std::vector<Entry> pools_;  // parallel to the current table's pools
};

}  // namespace lb::core
