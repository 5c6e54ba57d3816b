// Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
// Network Load Balancer", NSDI 2016, §3.4 "Consistent Hashing").
//
// A lookup table of prime size M; each slot names a backend. Backend i has a
// permutation of the slots,
//
//     offset_i = h1(id_i) % M,  skip_i = h2(id_i) % (M - 1) + 1,
//     permutation_i[j] = (offset_i + j * skip_i) % M,
//
// (every slot exactly once, M being prime), and backends take turns claiming
// the next slot of their permutation that is still empty, until the table is
// full. h1 and h2 are XXH64 of the id with two different seeds.
//
// Weights (as in Envoy's weighted Maglev): every round each backend earns its
// weight in credit and takes a turn for each max-weight of credit it holds,
// so a backend of weight w takes w / w_max turns per round and owns about
// M * w / W slots. With equal weights every backend takes one turn per
// round, which is exactly the paper's algorithm.
//
// Table size: 65537 for up to 655 backends, else the smallest prime of a
// fixed list above 100 * n: with at least 100 slots per backend the share of
// any backend is within about 1% of its weight's, and a removal moves little
// more than the removed backend's own clients (test/unit/core/select).
//
// A client's slot is hash::reduce(flow_hash, M) (the high 64 bits of the
// 128-bit product; uniform like hash % M, without a division). Retries, full
// backends and bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent
// Hashing with Bounded Loads", SODA 2018) walk successive slots to the next
// distinct backend: hash_walk.h.
//
// Thread rules: MaglevTable is immutable after build() and shared by all
// workers without locks. MaglevSelector is per worker (it owns scratch space
// for the walk); the table must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/select/hash_walk.h"
#include "core/select/selector.h"

namespace lb::core {

// One backend's permutation and weight; the input of maglev_populate().
struct MaglevPermutation {
  uint32_t offset;  // < table size
  uint32_t skip;    // 1 .. table size - 1
  uint32_t weight;  // 0 = takes no slot
};

// Fills a table of `table_size` (prime) slots by §3.4's turn-taking, with the
// weighted turns described above. Slot values index `backends`. Returns an
// empty vector when no backend has a weight. Exposed for golden tests.
std::vector<uint32_t> maglev_populate(std::span<const MaglevPermutation> backends, uint32_t table_size);

// 65537 for up to 655 backends, else the smallest listed prime > 100 * n
// (the largest listed prime, 16777259, beyond that).
uint32_t maglev_table_size(size_t backends);

class MaglevTable final : public LookupTable {
 public:
  static constexpr uint64_t kOffsetSeed = 0x6d61676c65763031ULL;  // "maglev01"
  static constexpr uint64_t kSkipSeed = 0x6d61676c65763032ULL;    // "maglev02"

  // Any order of `candidates` gives the same table (sorted by id inside).
  // table_size 0 = maglev_table_size(candidates); otherwise it must be prime
  // (tests use small tables).
  static std::shared_ptr<const MaglevTable> build(std::span<const Candidate> candidates,
                                                  uint32_t table_size = 0);

  uint64_t digest() const override { return digest_; }

  // Candidates sorted by id: what slot values refer to.
  std::span<const Candidate> backends() const { return backends_; }
  uint64_t total_weight() const { return total_weight_; }
  std::span<const uint32_t> slots() const { return slots_; }
  size_t slot_of(uint64_t hash) const;
  // For HashTableSelector: positions are slots.
  size_t positions() const { return slots_.size(); }
  size_t position_of(uint64_t hash) const { return slot_of(hash); }
  uint32_t owner_at(size_t slot) const { return slots_[slot]; }

 private:
  MaglevTable() = default;

  std::vector<Candidate> backends_;
  uint64_t total_weight_ = 0;
  std::vector<uint32_t> slots_;
  uint64_t digest_ = 0;
};

using MaglevSelector = HashTableSelector<MaglevTable>;

}  // namespace lb::core
