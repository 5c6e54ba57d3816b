#include "core/select/maglev.h"

#include <algorithm>
#include <iterator>
#include <limits>

#include "core/hash/hash.h"

namespace lb::core {
namespace {

constexpr uint64_t kDigestSeed = 0x6d61676c65763030ULL;  // "maglev00"
constexpr uint32_t kEmpty = std::numeric_limits<uint32_t>::max();

// Smallest prime above 2^16 .. 2^24. Maglev needs M prime (so every skip
// generates a full permutation) and M >> n (for balance).
constexpr uint32_t kTableSizes[] = {65537,   131101,  262147,  524309,  1048583,
                                    2097169, 4194319, 8388617, 16777259};

}  // namespace

uint32_t maglev_table_size(size_t backends) {
  if (backends <= 655) return kTableSizes[0];
  const uint64_t want = uint64_t{100} * backends;
  for (uint32_t m : kTableSizes)
    if (m > want) return m;
  return kTableSizes[std::size(kTableSizes) - 1];
}

std::vector<uint32_t> maglev_populate(std::span<const MaglevPermutation> backends, uint32_t table_size) {
  const size_t n = backends.size();
  uint32_t max_weight = 0;
  for (const auto& b : backends) max_weight = std::max(max_weight, b.weight);
  if (n == 0 || max_weight == 0 || table_size == 0) return {};

  std::vector<uint32_t> table(table_size, kEmpty);
  std::vector<uint32_t> next(n);  // next slot of each permutation to try
  std::vector<uint32_t> skip(n);
  std::vector<uint64_t> credit(n, 0);
  for (size_t i = 0; i < n; ++i) {
    next[i] = backends[i].offset % table_size;
    // Out-of-range input would break the permutation walk below; build()
    // never produces it.
    skip[i] = backends[i].skip % table_size;
    if (skip[i] == 0) skip[i] = 1;
  }

  uint32_t filled = 0;
  for (;;) {
    for (size_t i = 0; i < n; ++i) {
      credit[i] += backends[i].weight;
      if (credit[i] < max_weight) continue;
      credit[i] -= max_weight;
      // The backend's turn: its next preferred slot that is still empty.
      // Terminates because the permutation covers every slot and at least
      // one is empty.
      uint32_t slot = next[i];
      while (table[slot] != kEmpty) {
        slot += skip[i];
        if (slot >= table_size) slot -= table_size;
      }
      table[slot] = static_cast<uint32_t>(i);
      slot += skip[i];
      if (slot >= table_size) slot -= table_size;
      next[i] = slot;
      if (++filled == table_size) return table;
    }
  }
}

std::shared_ptr<const MaglevTable> MaglevTable::build(std::span<const Candidate> candidates,
                                                      uint32_t table_size) {
  std::shared_ptr<MaglevTable> t(new MaglevTable());
  t->backends_ = select_detail::sorted_by_id(candidates);
  t->total_weight_ = select_detail::total_weight_of(t->backends_);
  const size_t n = t->backends_.size();
  const uint32_t m = table_size != 0 ? table_size : maglev_table_size(n);

  std::vector<MaglevPermutation> perms(n);
  std::vector<uint64_t> id_hash(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& id = t->backends_[i].backend->id;
    perms[i].offset = static_cast<uint32_t>(hash::xxh64(id, kOffsetSeed) % m);
    perms[i].skip = m > 1 ? static_cast<uint32_t>(hash::xxh64(id, kSkipSeed) % (m - 1) + 1) : 1;
    perms[i].weight = t->backends_[i].weight;
    id_hash[i] = hash::xxh64(id);
  }
  t->slots_ = maglev_populate(perms, m);

  // Placement in ids: the table is its sequence of owner ids.
  hash::Xxh64 d(kDigestSeed);
  d.update_u64(t->slots_.size());
  for (uint32_t owner : t->slots_) d.update_u64(id_hash[owner]);
  t->digest_ = d.digest();
  return t;
}

size_t MaglevTable::slot_of(uint64_t hash) const {
  return static_cast<size_t>(hash::reduce(hash, slots_.size()));
}

}  // namespace lb::core
