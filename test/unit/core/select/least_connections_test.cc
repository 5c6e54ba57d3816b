// Weighted least connections (core/select/least_connections.h).
#include <catch2/catch.hpp>

#include <set>
#include <vector>

#include "core/select/least_connections.h"
#include "fixture.h"

using namespace lb::core;
using lb::core::test::TestPool;

TEST_CASE("least connections picks the emptier backend", "[least_connections]") {
  TestPool pool = TestPool::equal(3);
  pool.backends[0]->active = 5;
  pool.backends[1]->active = 2;
  pool.backends[2]->active = 7;
  for (uint64_t seed = 0; seed < 3; ++seed) {
    LeastConnectionsSelector lc(pool.candidates, seed);
    for (int i = 0; i < 5; ++i) CHECK(lc.pick({}) == pool.backends[1].get());
  }
}

TEST_CASE("least connections divides by weight", "[least_connections]") {
  TestPool pool({3, 1});
  LeastConnectionsSelector lc(pool.candidates, 0);
  // (3+1)/3 = 1.33 < (1+1)/1 = 2: the heavy one, though it holds more.
  pool.backends[0]->active = 3;
  pool.backends[1]->active = 1;
  CHECK(lc.pick({}) == pool.backends[0].get());
  // (6+1)/3 = 2.33 > 2.
  pool.backends[0]->active = 6;
  CHECK(lc.pick({}) == pool.backends[1].get());
  // Idle: (0+1)/3 < (0+1)/1, the heavier backend first.
  pool.backends[0]->active = 0;
  pool.backends[1]->active = 0;
  CHECK(lc.pick({}) == pool.backends[0].get());
  // A transiently negative count is treated as 0.
  pool.backends[1]->active = -3;
  CHECK(lc.pick({}) == pool.backends[0].get());
}

TEST_CASE("least connections spreads ties", "[least_connections]") {
  TestPool pool = TestPool::equal(4);
  LeastConnectionsSelector lc(pool.candidates, 0);
  // Nothing counted (connections opened elsewhere, or not yet): still every
  // backend in turn, never always the first.
  std::set<Backend*> first_four;
  for (int i = 0; i < 4; ++i) first_four.insert(lc.pick({}));
  CHECK(first_four.size() == 4);
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 400; ++i) ++counts[pool.index_of(lc.pick({}))];
  CHECK(counts == std::vector<int>{100, 100, 100, 100});

  // Different workers start on different backends.
  LeastConnectionsSelector w1(pool.candidates, 1), w2(pool.candidates, 2);
  CHECK(w1.pick({}) == pool.backends[1].get());
  CHECK(w2.pick({}) == pool.backends[2].get());
}

TEST_CASE("least connections converges to the weights", "[least_connections]") {
  TestPool pool({1, 2, 3});
  LeastConnectionsSelector lc(pool.candidates, 0);
  for (int i = 0; i < 600; ++i) lc.pick({})->active++;
  CHECK(pool.backends[0]->active == 100);
  CHECK(pool.backends[1]->active == 200);
  CHECK(pool.backends[2]->active == 300);
}

TEST_CASE("least connections skips avoided and full backends", "[least_connections]") {
  TestPool pool;
  pool.add("a", 1, /*max_connections=*/3);
  pool.add("b");
  pool.add("c");
  LeastConnectionsSelector lc(pool.candidates, 0);
  pool.backends[1]->active = 10;
  pool.backends[2]->active = 20;
  CHECK(lc.pick({}) == pool.backends[0].get());
  pool.backends[0]->active = 3;  // full
  CHECK(lc.pick({}) == pool.backends[1].get());

  const Backend* avoid[] = {pool.backends[1].get()};
  PickContext retry;
  retry.attempt = 1;
  retry.avoid = avoid;
  CHECK(lc.pick(retry) == pool.backends[2].get());

  const Backend* all[] = {pool.backends[1].get(), pool.backends[2].get()};
  retry.avoid = all;
  CHECK(lc.pick(retry) == nullptr);

  TestPool none;
  LeastConnectionsSelector empty(none.candidates, 0);
  CHECK(empty.pick({}) == nullptr);
}

TEST_CASE("make_selector builds least connections for the kind", "[least_connections][factory]") {
  TestPool pool = TestPool::equal(3);
  pool.backends[0]->active = 4;
  pool.backends[2]->active = 4;
  const PoolTable table = pool.table(lb::conf::SelectorKind::LeastConnections);
  auto s = make_selector(table, 0);  // the table must outlive the selector
  CHECK(s->pick({}) == pool.backends[1].get());
}
