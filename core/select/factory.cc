// build_lookup_table() and make_selector() (selector.h): the only place that
// maps conf::SelectorKind to an implementation.
#include <memory>

#include "core/select/least_connections.h"
#include "core/select/maglev.h"
#include "core/select/random_two.h"
#include "core/select/ring_hash.h"
#include "core/select/round_robin.h"
#include "core/select/selector.h"

namespace lb::core {
namespace {

// A hash selector normally borrows PoolTable::lookup. If the table came
// without one (or with one of another kind), it builds its own, so a
// mis-wired caller gets correct, if slower to create, placement instead of
// a crash; the placement is identical because build is deterministic.
template <class Table, class Sel>
class OwningHashSelector final : public Selector {
 public:
  OwningHashSelector(std::shared_ptr<const Table> table, unsigned balance_factor)
      : table_(std::move(table)), selector_(*table_, balance_factor) {}
  Backend* pick(const PickContext& ctx) override { return selector_.pick(ctx); }

 private:
  std::shared_ptr<const Table> table_;
  Sel selector_;
};

template <class Table, class Sel>
std::unique_ptr<Selector> make_hash_selector(const PoolTable& table) {
  if (const auto* t = dynamic_cast<const Table*>(table.lookup.get()))
    return std::make_unique<Sel>(*t, table.hash_balance_factor);
  return std::make_unique<OwningHashSelector<Table, Sel>>(Table::build(table.candidates),
                                                          table.hash_balance_factor);
}

}  // namespace

std::shared_ptr<const LookupTable> build_lookup_table(conf::SelectorKind kind,
                                                      std::span<const Candidate> candidates) {
  switch (kind) {
    case conf::SelectorKind::RingHash:
      return RingHashTable::build(candidates);
    case conf::SelectorKind::Maglev:
      return MaglevTable::build(candidates);
    case conf::SelectorKind::RoundRobin:
    case conf::SelectorKind::LeastConnections:
    case conf::SelectorKind::RandomTwo:
      break;
  }
  return nullptr;
}

std::unique_ptr<Selector> make_selector(const PoolTable& table, uint64_t seed, const Selector* previous) {
  switch (table.selector) {
    case conf::SelectorKind::RoundRobin:
      return std::make_unique<RoundRobinSelector>(table.candidates, seed,
                                                  dynamic_cast<const RoundRobinSelector*>(previous));
    case conf::SelectorKind::LeastConnections:
      return std::make_unique<LeastConnectionsSelector>(table.candidates, seed);
    case conf::SelectorKind::RandomTwo:
      return std::make_unique<RandomTwoSelector>(table.candidates, seed);
    case conf::SelectorKind::RingHash:
      return make_hash_selector<RingHashTable, RingHashSelector>(table);
    case conf::SelectorKind::Maglev:
      return make_hash_selector<MaglevTable, MaglevSelector>(table);
  }
  return std::make_unique<RoundRobinSelector>(table.candidates, seed);
}

}  // namespace lb::core
