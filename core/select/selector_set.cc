#include "core/select/selector_set.h"

namespace lb::core {

void SelectorSet::update(const BackendTable& table, uint64_t seed) {
  std::vector<Entry> next;
  next.reserve(table.pools.size());
  for (const PoolTablePtr& p : table.pools) {
    Entry* old = nullptr;
    for (auto& e : pools_)
      if (e.table && e.table->name == p->name) old = &e;
    if (old && old->table == p) {
      next.push_back(std::move(*old));  // unchanged pool: same selector, same cursor
      continue;
    }
    // The new selector is built while the old one (and the PoolTable its
    // Backend pointers live in) still exists.
    Entry e;
    e.table = p;
    e.selector = make_selector(*p, seed, old ? old->selector.get() : nullptr);
    next.push_back(std::move(e));
  }
  pools_ = std::move(next);
}

}  // namespace lb::core
