// Ring hash (consistent hashing, Karger et al., STOC 1997), in the ketama
// style: every backend owns many points on a 64-bit ring, in proportion to
// its weight; a client goes to the owner of the first point at or after its
// flow hash (wrapping). Removing a backend moves only the clients that were
// on it; adding one takes clients only from others' arcs.
//
// Points: backend i gets round(T * w_i / W) points (at least 1), where
// T = min(4096 * n, 2^20). With k points a backend's share has a relative
// standard deviation of about 1/sqrt(k), so 4096 points per mean-weight
// backend keep shares within a few percent (1.6% sd) for pools of up to 256
// backends, and the cap keeps larger rings at 12 MB (about 1000 points each
// for 1000 backends). Point j of backend "id" sits at xxh64("id#j"), j in
// decimal, seed 0; equal hashes are ordered by backend id.
//
// Retries, full backends and bounded loads (Mirrokni, Thorup, Zadimoghaddam,
// "Consistent Hashing with Bounded Loads", SODA 2018) walk the ring
// clockwise to the next distinct backend: hash_walk.h.
//
// (Measured over 200 random 10-backend pools: the largest share deviation
// averages 2.8% at 4096 points, 3.9% at 2048, 5.7% at 1024.)
//
// Build: O(T log T) once per PoolTable version, off the data path (about
// 0.1 s for 100 backends on a busy 2-core box; Maglev builds in ~5 ms). Pick: a
// bucket index on the top hash bits, then a search among the ~2 points of
// the bucket (no allocation); hash_walk.h handles full/avoid/bounded loads.
//
// Thread rules: RingHashTable is immutable after build() and shared by all
// workers without locks. RingHashSelector is per worker (it owns scratch
// space for the walk); the table must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/select/hash_walk.h"
#include "core/select/selector.h"

namespace lb::core {

class RingHashTable final : public LookupTable {
 public:
  static constexpr uint64_t kPointsPerBackend = 4096;
  static constexpr uint64_t kMaxPoints = uint64_t{1} << 20;

  // Any order of `candidates` gives the same table (sorted by id inside).
  static std::shared_ptr<const RingHashTable> build(std::span<const Candidate> candidates);

  uint64_t digest() const override { return digest_; }

  // Candidates sorted by id: what owner indices refer to.
  std::span<const Candidate> backends() const { return backends_; }
  uint64_t total_weight() const { return total_weight_; }
  size_t points() const { return hashes_.size(); }
  uint64_t point_hash(size_t point) const { return hashes_[point]; }
  uint32_t owner(size_t point) const { return owners_[point]; }
  // First point whose hash is >= `hash`, wrapping to point 0. points() > 0.
  size_t find(uint64_t hash) const;
  // For HashTableSelector: positions are points.
  size_t positions() const { return points(); }
  size_t position_of(uint64_t hash) const { return find(hash); }
  uint32_t owner_at(size_t point) const { return owner(point); }

 private:
  RingHashTable() = default;

  std::vector<Candidate> backends_;
  uint64_t total_weight_ = 0;
  // Struct of arrays: the search touches only hashes_.
  std::vector<uint64_t> hashes_;  // ascending
  std::vector<uint32_t> owners_;  // parallel to hashes_: index into backends_
  // bucket_[k] = first point whose top `bucket_bits_` hash bits are >= k
  // (2^bits + 1 entries). About two points per bucket, so a lookup costs a
  // couple of cache misses instead of a ~20-step binary search over
  // megabytes.
  std::vector<uint32_t> bucket_;
  unsigned bucket_bits_ = 0;
  uint64_t digest_ = 0;
};

using RingHashSelector = HashTableSelector<RingHashTable>;

}  // namespace lb::core
