// The pick shared by the hash selectors (ring_hash, maglev): look up the
// client's position, then walk forward (ring order / successive table slots)
// to the first distinct backend that may take the connection.
//
// A backend is passed over when it is full, in ctx.avoid (a retry after a
// failed connect then lands on the next backend in ring/table order, the same
// one on every worker and every lb instance), or, with bounded loads, at or
// above its load ceiling.
//
// Bounded loads: Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
// Bounded Loads", SODA 2018 (arXiv:1608.01350). With balance factor c > 1 no
// backend may hold more than ceil(c * m / n) of the m connections; a client
// whose backend is at its ceiling goes to the next backend in ring order that
// is below it. We count the connection being placed (m = active + 1) and
// weight the ceiling, backend i's share being w_i / W instead of 1 / n:
//
//     ceiling_i = ceil(factor/100 * (A + 1) * w_i / W),  A = sum of active
//
// Because sum_i ceiling_i >= factor/100 * (A + 1) > A, some backend is always
// below its ceiling. Only when every backend below its ceiling is full or
// avoided does the walk settle for the first usable backend above it: bounded
// loads are a balance preference, never a reason to refuse a client.
//
// Thread rules: VisitSet is per-worker scratch owned by a selector.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "core/select/pick_util.h"

namespace lb::core::select_detail {

class LoadCeiling {
 public:
  LoadCeiling(std::span<const Candidate> candidates, unsigned factor, uint64_t total_weight)
      : factor_(factor), total_weight_(total_weight) {
    for (const Candidate& c : candidates) total_active_ += active_of(c.backend);
  }
  uint64_t ceiling(uint32_t weight) const {
    __extension__ using u128 = unsigned __int128;
    const u128 num = static_cast<u128>(factor_) * (total_active_ + 1) * weight;
    const u128 den = static_cast<u128>(100) * total_weight_;
    return static_cast<uint64_t>((num + den - 1) / den);
  }
  bool over(const Candidate& c) const { return active_of(c.backend) >= ceiling(c.weight); }

 private:
  uint64_t factor_;
  uint64_t total_weight_;
  uint64_t total_active_ = 0;
};

// Which candidates this walk has already looked at, without clearing an
// array per pick: a slot is "seen" when it holds the current epoch.
class VisitSet {
 public:
  explicit VisitSet(size_t n) : stamp_(n, 0) {}
  void reset() {
    if (++epoch_ == 0) {
      std::fill(stamp_.begin(), stamp_.end(), 0);
      epoch_ = 1;
    }
  }
  bool insert(uint32_t i) {
    if (stamp_[i] == epoch_) return false;
    stamp_[i] = epoch_;
    return true;
  }

 private:
  std::vector<uint32_t> stamp_;
  uint32_t epoch_ = 0;
};

// owner_at(pos) gives the candidate index at position pos in [0, positions).
template <class OwnerAt>
Backend* hash_walk(std::span<const Candidate> candidates, size_t positions, size_t start, OwnerAt owner_at,
                   const PickContext& ctx, unsigned balance_factor, uint64_t total_weight, VisitSet& seen) {
  if (positions == 0) return nullptr;
  uint32_t owner = owner_at(start);
  const Candidate* c = &candidates[owner];
  const bool bounded = balance_factor > 100;
  bool ok = usable(ctx, c->backend);
  if (ok && !bounded) return c->backend;  // the common case: no walk at all

  const LoadCeiling ceiling =
      bounded ? LoadCeiling(candidates, balance_factor, total_weight) : LoadCeiling({}, 0, 1);
  if (ok && !ceiling.over(*c)) return c->backend;
  Backend* fallback = ok ? c->backend : nullptr;  // usable but above its ceiling

  seen.reset();
  seen.insert(owner);
  size_t distinct = 1;
  size_t pos = start;
  for (size_t step = 1; step < positions && distinct < candidates.size(); ++step) {
    if (++pos == positions) pos = 0;
    owner = owner_at(pos);
    if (!seen.insert(owner)) continue;
    ++distinct;
    c = &candidates[owner];
    if (!usable(ctx, c->backend)) continue;
    if (bounded && ceiling.over(*c)) {
      if (fallback == nullptr) fallback = c->backend;
      continue;
    }
    return c->backend;
  }
  return fallback;
}

}  // namespace lb::core::select_detail

namespace lb::core {

// The selector of a hash lookup table (MaglevTable, RingHashTable): the
// table's position for the flow hash, then hash_walk() from there. A Table
// provides backends(), total_weight(), positions() (0 when empty),
// position_of(hash) and owner_at(position) (an index into backends()).
template <class Table>
class HashTableSelector final : public Selector {
 public:
  // `balance_factor` > 100 enables bounded loads (see hash_walk above).
  HashTableSelector(const Table& table, unsigned balance_factor)
      : table_(table), balance_factor_(balance_factor), seen_(table.backends().size()) {}

  Backend* pick(const PickContext& ctx) override {
    const size_t positions = table_.positions();
    if (positions == 0) return nullptr;
    return select_detail::hash_walk(
        table_.backends(), positions, table_.position_of(ctx.hash),
        [this](size_t p) { return table_.owner_at(p); }, ctx, balance_factor_, table_.total_weight(), seen_);
  }

 private:
  const Table& table_;
  unsigned balance_factor_;
  select_detail::VisitSet seen_;
};

}  // namespace lb::core
