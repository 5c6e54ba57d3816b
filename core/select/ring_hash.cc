#include "core/select/ring_hash.h"

#include <algorithm>
#include <charconv>
#include <string>
#include <vector>

#include "core/hash/hash.h"

namespace lb::core {
namespace {

// Seeds the digest, so a ring and a Maglev table never share a digest.
constexpr uint64_t kDigestSeed = 0x72696e6768617368ULL;  // "ringhash"

// Top `bits` bits of a hash (0 when bits == 0).
inline size_t bucket_of(uint64_t hash, unsigned bits) {
  return bits == 0 ? 0 : static_cast<size_t>(hash >> (64 - bits));
}

struct Point {
  uint64_t hash;
  uint32_t owner;
};

}  // namespace

std::shared_ptr<const RingHashTable> RingHashTable::build(std::span<const Candidate> candidates) {
  std::shared_ptr<RingHashTable> t(new RingHashTable());
  t->backends_ = select_detail::sorted_by_id(candidates);
  t->total_weight_ = select_detail::total_weight_of(t->backends_);
  const size_t n = t->backends_.size();

  std::vector<Point> points;
  if (n > 0) {
    const uint64_t target = std::min<uint64_t>(kPointsPerBackend * n, kMaxPoints);
    std::vector<uint64_t> counts(n);
    uint64_t total_points = 0;
    for (size_t i = 0; i < n; ++i) {
      // Integer rounding keeps the counts identical on every platform.
      const uint64_t w = t->backends_[i].weight;
      counts[i] = std::max<uint64_t>(1, (target * w + t->total_weight_ / 2) / t->total_weight_);
      total_points += counts[i];
    }
    points.reserve(total_points);
    std::vector<char> key;
    for (size_t i = 0; i < n; ++i) {
      // key = id '#' decimal(j); only the digits are rewritten per point.
      const std::string& id = t->backends_[i].backend->id;
      key.assign(id.begin(), id.end());
      key.push_back('#');
      const size_t prefix = key.size();
      key.resize(prefix + 24);
      for (uint64_t j = 0; j < counts[i]; ++j) {
        const auto res = std::to_chars(key.data() + prefix, key.data() + key.size(), j);
        const size_t len = static_cast<size_t>(res.ptr - key.data());
        points.push_back({hash::xxh64(key.data(), len), static_cast<uint32_t>(i)});
      }
    }
    // Equal hashes (improbable, but possible) are ordered by backend id, so
    // the ring never depends on the sort's handling of ties.
    std::sort(points.begin(), points.end(), [](const Point& x, const Point& y) {
      return x.hash != y.hash ? x.hash < y.hash : x.owner < y.owner;
    });
  }

  t->hashes_.reserve(points.size());
  t->owners_.reserve(points.size());
  for (const Point& p : points) {
    t->hashes_.push_back(p.hash);
    t->owners_.push_back(p.owner);
  }

  // Bucket index: bits = floor(log2(points)) - 1, so ~2-4 points a bucket.
  const size_t np = t->hashes_.size();
  if (np > 0) {
    unsigned bits = 0;
    while (bits < 24 && (size_t{4} << bits) <= np) ++bits;
    t->bucket_bits_ = bits;
    const size_t buckets = size_t{1} << bits;
    t->bucket_.assign(buckets + 1, static_cast<uint32_t>(np));
    // Walk buckets and points together: bucket k starts at the first point
    // whose top bits are >= k.
    size_t p = 0;
    for (size_t k = 0; k < buckets; ++k) {
      while (p < np && bucket_of(t->hashes_[p], bits) < k) ++p;
      t->bucket_[k] = static_cast<uint32_t>(p);
    }
  }

  // Placement in ids: the ring is its (point hash, owner id) sequence.
  std::vector<uint64_t> id_hash(n);
  for (size_t i = 0; i < n; ++i) id_hash[i] = hash::xxh64(t->backends_[i].backend->id);
  hash::Xxh64 d(kDigestSeed);
  d.update_u64(points.size());
  for (const Point& p : points) {
    d.update_u64(p.hash);
    d.update_u64(id_hash[p.owner]);
  }
  t->digest_ = d.digest();
  return t;
}

size_t RingHashTable::find(uint64_t hash) const {
  // Points of earlier buckets are below `hash`, those of later buckets above
  // it: the answer is in this bucket, or is the next bucket's first point.
  const size_t k = bucket_of(hash, bucket_bits_);
  const auto first = hashes_.begin() + bucket_[k];
  const auto last = hashes_.begin() + bucket_[k + 1];
  const auto it = std::lower_bound(first, last, hash);
  return it == hashes_.end() ? 0 : static_cast<size_t>(it - hashes_.begin());
}

}  // namespace lb::core
