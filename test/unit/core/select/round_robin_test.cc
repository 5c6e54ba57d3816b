// Smooth weighted round robin (core/select/round_robin.h).
#include <catch2/catch.hpp>

#include <map>
#include <string>
#include <vector>

#include "core/hash/prng.h"
#include "core/select/round_robin.h"
#include "fixture.h"

using namespace lb::core;
using lb::core::test::TestPool;

namespace {

std::string sequence(Selector& s, size_t picks, const TestPool& pool,
                     const std::string& names = "abcdefghij") {
  std::string out;
  for (size_t i = 0; i < picks; ++i) {
    Backend* b = s.pick({});
    out.push_back(b ? names[pool.index_of(b)] : '-');
  }
  return out;
}

}  // namespace

TEST_CASE("weights 5,1,1 give a a b a c a a, cycle after cycle", "[round_robin]") {
  TestPool pool({5, 1, 1});
  RoundRobinSelector rr(pool.candidates, 0);
  CHECK(sequence(rr, 7, pool) == "aabacaa");
  CHECK(sequence(rr, 7, pool) == "aabacaa");
  CHECK(sequence(rr, 14, pool) == "aabacaaaabacaa");
}

TEST_CASE("weights 1:2:3 are exact in every cycle", "[round_robin]") {
  TestPool pool({1, 2, 3});
  RoundRobinSelector rr(pool.candidates, 0);
  for (int cycle = 0; cycle < 50; ++cycle) {
    std::vector<int> counts(3, 0);
    for (int i = 0; i < 6; ++i) ++counts[pool.index_of(rr.pick({}))];
    INFO("cycle " << cycle);
    CHECK(counts == std::vector<int>{1, 2, 3});
  }
}

TEST_CASE("per-worker start offsets keep exact proportions", "[round_robin]") {
  lb::hash::Xoshiro256 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t n = 1 + rng.below(8);
    std::vector<unsigned> weights;
    unsigned total = 0;
    for (size_t i = 0; i < n; ++i) {
      weights.push_back(1 + static_cast<unsigned>(rng.below(6)));
      total += weights.back();
    }
    TestPool pool(weights);
    RoundRobinSelector rr(pool.candidates, rng.next());
    for (int cycle = 0; cycle < 3; ++cycle) {
      std::vector<unsigned> counts(n, 0);
      for (unsigned i = 0; i < total; ++i) ++counts[pool.index_of(rr.pick({}))];
      INFO("trial " << trial << " cycle " << cycle);
      REQUIRE(counts == weights);
    }
  }
}

TEST_CASE("equal weights: plain rotation, each worker from its own start", "[round_robin]") {
  TestPool pool = TestPool::equal(4);
  RoundRobinSelector w0(pool.candidates, 0);
  RoundRobinSelector w1(pool.candidates, 1);
  RoundRobinSelector w6(pool.candidates, 6);
  CHECK(sequence(w0, 8, pool) == "abcdabcd");
  CHECK(sequence(w1, 8, pool) == "bcdabcda");
  CHECK(sequence(w6, 8, pool) == "cdabcdab");
}

TEST_CASE("round robin skips avoided and full backends", "[round_robin]") {
  TestPool pool = TestPool::equal(3);
  RoundRobinSelector rr(pool.candidates, 0);
  const Backend* avoid[] = {pool.backends[0].get()};
  PickContext retry;
  retry.attempt = 1;
  retry.avoid = avoid;
  for (int i = 0; i < 10; ++i) CHECK(rr.pick(retry) != pool.backends[0].get());

  TestPool limited;
  limited.add("a", 1, /*max_connections=*/2);
  limited.add("b", 1);
  RoundRobinSelector rl(limited.candidates, 0);
  limited.backends[0]->active = 2;
  for (int i = 0; i < 10; ++i) CHECK(rl.pick({}) == limited.backends[1].get());
  limited.backends[0]->active = 1;  // room again: back in rotation
  std::map<Backend*, int> seen;
  for (int i = 0; i < 10; ++i) ++seen[rl.pick({})];
  CHECK(seen.size() == 2);
}

TEST_CASE("round robin returns null when nothing is left", "[round_robin]") {
  TestPool none;
  RoundRobinSelector empty(none.candidates, 3);
  CHECK(empty.pick({}) == nullptr);

  TestPool pool = TestPool::equal(2);
  RoundRobinSelector rr(pool.candidates, 0);
  const Backend* avoid[] = {pool.backends[0].get(), pool.backends[1].get()};
  PickContext ctx;
  ctx.avoid = avoid;
  CHECK(rr.pick(ctx) == nullptr);
  // A pick that found nothing must not disturb the cycle.
  CHECK(sequence(rr, 4, pool) == "abab");
}

TEST_CASE("make_selector builds round robin for the kind", "[round_robin][factory]") {
  TestPool pool({5, 1, 1});
  PoolTable table = pool.table(lb::conf::SelectorKind::RoundRobin);
  CHECK(table.lookup == nullptr);
  auto s = make_selector(table, 0);
  CHECK(sequence(*s, 7, pool) == "aabacaa");
}

TEST_CASE("a new table of the pool continues the cycle instead of restarting it",
          "[round_robin][take_over]") {
  TestPool pool({5, 1, 1});
  RoundRobinSelector first(pool.candidates, 0);
  CHECK(sequence(first, 3, pool) == "aab");
  // Same candidates (a publish that changed nothing here): the rest of the
  // cycle, where a fresh selector would start over with "aab".
  RoundRobinSelector same(pool.candidates, 5, &first);
  CHECK(sequence(same, 4, pool) == "acaa");
  CHECK(sequence(same, 7, pool) == "aabacaa");

  // Weights scaled by 100 (slow start begins elsewhere in the pool): each
  // backend keeps the picks it is owed. After one pick of a,b at 1:1, b is
  // owed the next one.
  TestPool two({1, 1});
  RoundRobinSelector before(two.candidates, 0);
  CHECK(sequence(before, 1, two) == "a");
  std::vector<Candidate> scaled = two.candidates;
  for (auto& c : scaled) c.weight *= 100;
  RoundRobinSelector after(scaled, 0, &before);
  CHECK(sequence(after, 4, two) == "baba");
}

TEST_CASE("take over matches backends by id: new ones start level, gone ones drop out",
          "[round_robin][take_over]") {
  TestPool pool({1, 1, 1});
  RoundRobinSelector rr(pool.candidates, 0);
  CHECK(sequence(rr, 2, pool) == "ab");  // c is owed a pick
  // b00 leaves, b03 joins: c keeps its credit and goes first.
  TestPool next;
  next.candidates = {pool.candidates[1], pool.candidates[2]};
  Backend* d = next.add("b03", 1);
  RoundRobinSelector taken(next.candidates, 0, &rr);
  CHECK(taken.pick({}) == pool.backends[2].get());
  std::map<Backend*, int> counts;
  for (int i = 0; i < 300; ++i) ++counts[taken.pick({})];
  CHECK(counts[pool.backends[1].get()] == 100);
  CHECK(counts[pool.backends[2].get()] == 100);
  CHECK(counts[d] == 100);

  // make_selector hands a previous selector of another kind nothing.
  PoolTable table = pool.table(lb::conf::SelectorKind::RoundRobin);
  auto lc = make_selector(pool.table(lb::conf::SelectorKind::LeastConnections), 0);
  auto fresh = make_selector(table, 0, lc.get());
  CHECK(sequence(*fresh, 3, pool) == "abc");
}
