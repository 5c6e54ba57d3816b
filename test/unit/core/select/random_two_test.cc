// Power of two choices (core/select/random_two.h).
#include <catch2/catch.hpp>

#include <vector>

#include "core/select/random_two.h"
#include "fixture.h"

using namespace lb::core;
using lb::core::test::TestPool;

TEST_CASE("random_two never picks the most loaded of three", "[random_two]") {
  // Every pair of distinct draws contains a lighter backend, so the loaded
  // one can only be chosen if the two draws could coincide.
  TestPool pool = TestPool::equal(3);
  pool.backends[1]->active = 100;
  RandomTwoSelector r2(pool.candidates, 1);
  std::vector<int> counts(3, 0);
  for (int i = 0; i < 10000; ++i) ++counts[pool.index_of(r2.pick({}))];
  CHECK(counts[1] == 0);
  CHECK(counts[0] > 4500);
  CHECK(counts[2] > 4500);

  // Same with unequal weights (the weighted draw path).
  TestPool weighted({1, 5, 2});
  weighted.backends[1]->active = 1000;
  RandomTwoSelector w(weighted.candidates, 2);
  for (int i = 0; i < 10000; ++i) CHECK(w.pick({}) != weighted.backends[1].get());
}

TEST_CASE("random_two prefers lower active / weight", "[random_two]") {
  TestPool pool({4, 1});
  RandomTwoSelector r2(pool.candidates, 3);
  pool.backends[0]->active = 7;  // 7/4 < 2/1
  pool.backends[1]->active = 2;
  for (int i = 0; i < 100; ++i) CHECK(r2.pick({}) == pool.backends[0].get());
  pool.backends[0]->active = 9;  // 9/4 > 2/1
  for (int i = 0; i < 100; ++i) CHECK(r2.pick({}) == pool.backends[1].get());
}

TEST_CASE("random_two follows the weights with no load", "[random_two]") {
  // Ties keep the first draw, which is weighted: picks follow 1:2:3:4.
  TestPool pool({1, 2, 3, 4});
  RandomTwoSelector r2(pool.candidates, 4);
  const int n = 100000;
  std::vector<int> counts(4, 0);
  for (int i = 0; i < n; ++i) ++counts[pool.index_of(r2.pick({}))];
  for (int i = 0; i < 4; ++i) {
    const double want = n * (i + 1) / 10.0;
    INFO("backend " << i << " got " << counts[i]);
    CHECK(counts[i] > want * 0.95);
    CHECK(counts[i] < want * 1.05);
  }
}

TEST_CASE("random_two balances held connections by weight", "[random_two]") {
  TestPool pool({1, 2, 3, 4});
  RandomTwoSelector r2(pool.candidates, 5);
  const int n = 20000;
  for (int i = 0; i < n; ++i) r2.pick({})->active++;
  for (int i = 0; i < 4; ++i) {
    const double want = n * (i + 1) / 10.0;
    INFO("backend " << i << " holds " << pool.backends[i]->active);
    CHECK(pool.backends[i]->active > want * 0.97);
    CHECK(pool.backends[i]->active < want * 1.03);
  }
}

TEST_CASE("random_two seeds give different streams", "[random_two]") {
  TestPool pool = TestPool::equal(16);
  RandomTwoSelector a(pool.candidates, 1), b(pool.candidates, 1), c(pool.candidates, 2);
  int same_ab = 0, same_ac = 0;
  for (int i = 0; i < 100; ++i) {
    Backend* x = a.pick({});
    same_ab += x == b.pick({});
    same_ac += x == c.pick({});
  }
  CHECK(same_ab == 100);
  CHECK(same_ac < 50);
}

TEST_CASE("random_two skips avoided and full backends", "[random_two]") {
  TestPool pool;
  pool.add("a", 1, /*max_connections=*/1);
  pool.add("b", 3);
  pool.add("c", 1);
  pool.add("d", 2);
  pool.backends[0]->active = 1;  // full
  RandomTwoSelector r2(pool.candidates, 6);
  const Backend* avoid[] = {pool.backends[1].get(), pool.backends[3].get()};
  PickContext retry;
  retry.attempt = 2;
  retry.avoid = avoid;
  // Only c remains, whatever the draws.
  for (int i = 0; i < 1000; ++i) CHECK(r2.pick(retry) == pool.backends[2].get());

  const Backend* all[] = {pool.backends[1].get(), pool.backends[2].get(), pool.backends[3].get()};
  retry.avoid = all;
  CHECK(r2.pick(retry) == nullptr);

  TestPool one;
  one.add("solo");
  RandomTwoSelector single(one.candidates, 0);
  CHECK(single.pick({}) == one.backends[0].get());
  const Backend* solo[] = {one.backends[0].get()};
  retry.avoid = solo;
  CHECK(single.pick(retry) == nullptr);

  TestPool none;
  RandomTwoSelector empty(none.candidates, 0);
  CHECK(empty.pick({}) == nullptr);
}

TEST_CASE("random_two survives weight-0 candidates", "[random_two]") {
  // PoolTable never publishes weight 0, but a draw must not run off the end.
  TestPool pool({0, 3, 0});
  RandomTwoSelector r2(pool.candidates, 8);
  for (int i = 0; i < 1000; ++i) CHECK(r2.pick({}) == pool.backends[1].get());
  const Backend* avoid[] = {pool.backends[1].get()};
  PickContext retry;
  retry.avoid = avoid;
  Backend* b = r2.pick(retry);
  CHECK((b == pool.backends[0].get() || b == pool.backends[2].get()));
}

TEST_CASE("make_selector builds random_two for the kind", "[random_two][factory]") {
  TestPool pool = TestPool::equal(2);
  pool.backends[0]->active = 1;
  const PoolTable table = pool.table(lb::conf::SelectorKind::RandomTwo);
  auto s = make_selector(table, 9);  // the table must outlive the selector
  for (int i = 0; i < 20; ++i) CHECK(s->pick({}) == pool.backends[1].get());
}
