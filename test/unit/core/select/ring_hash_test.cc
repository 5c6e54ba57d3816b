// Ring hash (core/select/ring_hash.h).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/hash/hash.h"
#include "core/hash/prng.h"
#include "core/select/ring_hash.h"
#include "fixture.h"

using namespace lb::core;
using lb::core::test::test_key;
using lb::core::test::TestPool;

namespace {

std::vector<int> key_counts(Selector& s, const TestPool& pool, uint64_t keys) {
  std::vector<int> counts(pool.backends.size(), 0);
  for (uint64_t k = 0; k < keys; ++k) {
    PickContext ctx;
    ctx.hash = test_key(k);
    ++counts[pool.index_of(s.pick(ctx))];
  }
  return counts;
}

}  // namespace

TEST_CASE("ring points follow the documented layout", "[ring_hash]") {
  TestPool pool;
  pool.add("beta", 1);
  pool.add("alpha", 3);
  auto t = RingHashTable::build(pool.candidates);
  // T = 4096 * 2 points, split 3:1 by weight.
  REQUIRE(t->points() == 8192);
  REQUIRE(t->backends()[0].backend->id == "alpha");
  size_t alpha = 0;
  for (size_t p = 0; p < t->points(); ++p) {
    alpha += t->owner(p) == 0;
    if (p > 0) REQUIRE(t->point_hash(p - 1) <= t->point_hash(p));
  }
  CHECK(alpha == 6144);
  // Point j of "alpha" is xxh64("alpha#j"): they are all on the ring.
  for (const char* key : {"alpha#0", "alpha#1", "alpha#6143"}) {
    const uint64_t h = lb::hash::xxh64(std::string_view(key));
    const size_t p = t->find(h);
    CHECK(t->point_hash(p) == h);
    CHECK(t->owner(p) == 0);
  }
  const uint64_t beta0 = lb::hash::xxh64(std::string_view("beta#0"));
  CHECK(t->owner(t->find(beta0)) == 1);
  // "alpha#6144" is not a point (alpha has 6144: #0 .. #6143).
  const uint64_t past = lb::hash::xxh64(std::string_view("alpha#6144"));
  CHECK(t->point_hash(t->find(past)) != past);
}

TEST_CASE("ring lookup wraps past the last point", "[ring_hash]") {
  TestPool pool = TestPool::equal(3);
  auto t = RingHashTable::build(pool.candidates);
  CHECK(t->find(0) == 0);
  CHECK(t->find(t->point_hash(t->points() - 1)) == t->points() - 1);
  if (t->point_hash(t->points() - 1) != ~uint64_t{0}) CHECK(t->find(~uint64_t{0}) == 0);
}

TEST_CASE("ring find() equals a binary search over all points", "[ring_hash]") {
  for (size_t n : {size_t{1}, size_t{3}, size_t{17}}) {
    TestPool pool = TestPool::equal(n);
    auto t = RingHashTable::build(pool.candidates);
    std::vector<uint64_t> all(t->points());
    for (size_t p = 0; p < t->points(); ++p) all[p] = t->point_hash(p);
    auto reference = [&all](uint64_t h) {
      const auto it = std::lower_bound(all.begin(), all.end(), h);
      return it == all.end() ? size_t{0} : static_cast<size_t>(it - all.begin());
    };
    std::vector<uint64_t> probes = {0, 1, ~uint64_t{0}, ~uint64_t{0} - 1, uint64_t{1} << 63};
    for (uint64_t k = 0; k < 20000; ++k) probes.push_back(test_key(k));
    for (size_t p = 0; p < all.size(); p += 7) {
      probes.push_back(all[p]);
      probes.push_back(all[p] - 1);
      probes.push_back(all[p] + 1);
    }
    for (uint64_t h : probes) REQUIRE(t->find(h) == reference(h));
  }
}

TEST_CASE("ring size scales with the pool and is capped", "[ring_hash]") {
  CHECK(RingHashTable::build(TestPool::equal(1).candidates)->points() == 4096);
  CHECK(RingHashTable::build(TestPool::equal(10).candidates)->points() == 40960);
  const auto big = RingHashTable::build(TestPool::equal(300).candidates);
  // 2^20 / 300 = 3495.25 -> 3495 points each.
  CHECK(big->points() == 300 * 3495);
  // A tiny weight still gets a point.
  TestPool skewed({1000, 1});
  auto t = RingHashTable::build(skewed.candidates);
  size_t light = 0;
  for (size_t p = 0; p < t->points(); ++p) light += t->owner(p) == 1;
  CHECK(light == 8);  // round(8192 * 1 / 1001)
}

TEST_CASE("ring shares are within a few percent of fair", "[ring_hash]") {
  TestPool pool = TestPool::equal(10);
  auto t = RingHashTable::build(pool.candidates);
  RingHashSelector s(*t, 0);
  const auto counts = key_counts(s, pool, 100000);
  for (size_t i = 0; i < counts.size(); ++i) {
    INFO("backend " << i << " keys " << counts[i]);
    CHECK(counts[i] > 10000 * 0.95);
    CHECK(counts[i] < 10000 * 1.05);
  }
}

TEST_CASE("ring honours weights", "[ring_hash]") {
  TestPool pool({2, 1});
  auto t = RingHashTable::build(pool.candidates);
  RingHashSelector s(*t, 0);
  const auto counts = key_counts(s, pool, 100000);
  INFO("heavy " << counts[0] << " light " << counts[1]);
  CHECK(counts[0] > 66667 * 0.97);
  CHECK(counts[0] < 66667 * 1.03);

  TestPool mix({1, 2, 3, 4});
  auto tm = RingHashTable::build(mix.candidates);
  RingHashSelector sm(*tm, 0);
  const auto cm = key_counts(sm, mix, 100000);
  for (size_t i = 0; i < 4; ++i) {
    const double want = 100000.0 * (i + 1) / 10;
    INFO("backend " << i << " keys " << cm[i]);
    CHECK(std::abs(cm[i] - want) < want * 0.06);
  }
}

TEST_CASE("ring placement does not depend on input order", "[ring_hash]") {
  TestPool pool({3, 1, 1, 2, 5, 1, 1, 4, 1, 2});
  auto ref = RingHashTable::build(pool.candidates);
  RingHashSelector ref_sel(*ref, 0);
  lb::hash::Xoshiro256 rng(5);
  for (int trial = 0; trial < 3; ++trial) {
    TestPool other;
    std::vector<size_t> order(pool.backends.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
    for (size_t i : order) other.add(pool.backends[i]->id, pool.candidates[i].weight);
    auto t = RingHashTable::build(other.candidates);
    CHECK(t->digest() == ref->digest());
    RingHashSelector sel(*t, 0);
    int mismatches = 0;
    for (uint64_t k = 0; k < 10000; ++k) {
      PickContext ctx;
      ctx.hash = test_key(k);
      mismatches += sel.pick(ctx)->id != ref_sel.pick(ctx)->id;
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("ring digest reflects placement", "[ring_hash]") {
  const uint64_t d = RingHashTable::build(TestPool::equal(5).candidates)->digest();
  CHECK(d == RingHashTable::build(TestPool::equal(5).candidates)->digest());
  CHECK(d != RingHashTable::build(TestPool({1, 1, 2, 1, 1}).candidates)->digest());
  CHECK(d != RingHashTable::build(TestPool::equal(5, "c").candidates)->digest());
  CHECK(d != RingHashTable::build(TestPool::equal(4).candidates)->digest());
}

TEST_CASE("ring disruption: only the removed backend's keys move", "[ring_hash]") {
  const size_t n = 10;
  const uint64_t keys = 10000;
  TestPool all = TestPool::equal(n);
  TestPool without;
  for (size_t i = 0; i < n; ++i)
    if (i != 6) without.add(all.backends[i]->id);
  auto before = RingHashTable::build(all.candidates);
  auto after = RingHashTable::build(without.candidates);
  RingHashSelector sb(*before, 0), sa(*after, 0);
  uint64_t moved = 0;
  for (uint64_t k = 0; k < keys; ++k) {
    PickContext ctx;
    ctx.hash = test_key(k);
    const std::string& was = sb.pick(ctx)->id;
    const std::string& now = sa.pick(ctx)->id;
    if (was == "b06") {
      ++moved;
      CHECK(now != "b06");
    } else {
      CHECK(now == was);  // nobody else moves
    }
  }
  // Note: the ring has the same T per backend before and after (4096 * n
  // points), so the other backends' points are unchanged.
  CHECK(moved > keys / n * 0.9);
  CHECK(moved < keys / n * 1.1);
}
