#include "core/select/selector_set.h"

namespace lb::core {

void SelectorSet::update(const BackendTable& table, uint64_t seed) {
  std::vector<Entry> next;
  next.reserve(table.pools.size());
  for (const PoolTablePtr& p : table.pools) {
    Entry e;
    for (auto& old : pools_) {
      if (old.table == p) {
        e = std::move(old);
        break;
      }
    }
    if (!e.selector) {
      e.table = p;
      e.selector = make_selector(*p, seed);
    }
    next.push_back(std::move(e));
  }
  pools_ = std::move(next);
}

}  // namespace lb::core
