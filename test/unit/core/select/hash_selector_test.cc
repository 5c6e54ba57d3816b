// Behaviour shared by the hash selectors (ring_hash, maglev): retries,
// full backends, bounded loads, the factory.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "core/select/maglev.h"
#include "core/select/ring_hash.h"
#include "fixture.h"

using namespace lb::core;
using lb::conf::SelectorKind;
using lb::core::test::test_key;
using lb::core::test::TestPool;

namespace {

// The backends of a table in walk order from a client's position, each once:
// what a retry after each failure must return, in turn.
std::vector<const Backend*> walk_order(const PoolTable& table, uint64_t hash) {
  std::vector<const Backend*> out;
  auto add = [&out](const Backend* b) {
    for (const Backend* o : out)
      if (o == b) return;
    out.push_back(b);
  };
  if (const auto* m = dynamic_cast<const MaglevTable*>(table.lookup.get())) {
    const size_t size = m->slots().size();
    for (size_t i = 0, s = m->slot_of(hash); i < size; ++i, s = (s + 1) % size)
      add(m->backends()[m->slots()[s]].backend);
  } else if (const auto* r = dynamic_cast<const RingHashTable*>(table.lookup.get())) {
    for (size_t i = 0, p = r->find(hash); i < r->points(); ++i, p = (p + 1) % r->points())
      add(r->backends()[r->owner(p)].backend);
  }
  return out;
}

}  // namespace

TEST_CASE("hash selectors: retries walk to the next distinct backend", "[hash_select]") {
  const SelectorKind kind = GENERATE(SelectorKind::RingHash, SelectorKind::Maglev);
  TestPool pool = TestPool::equal(5);
  PoolTable table = pool.table(kind);
  auto s = make_selector(table, 0);
  for (uint64_t k = 0; k < 200; ++k) {
    const uint64_t h = test_key(k);
    const auto order = walk_order(table, h);
    REQUIRE(order.size() == 5);
    std::vector<const Backend*> avoid;
    for (size_t attempt = 0; attempt < 5; ++attempt) {
      PickContext ctx;
      ctx.hash = h;
      ctx.attempt = static_cast<unsigned>(attempt);
      ctx.avoid = avoid;
      Backend* b = s->pick(ctx);
      REQUIRE(b == order[attempt]);
      avoid.push_back(b);
    }
    PickContext ctx;
    ctx.hash = h;
    ctx.avoid = avoid;
    CHECK(s->pick(ctx) == nullptr);
  }
}

TEST_CASE("hash selectors: full backends are passed over like avoided ones", "[hash_select]") {
  const SelectorKind kind = GENERATE(SelectorKind::RingHash, SelectorKind::Maglev);
  TestPool pool;
  for (const char* id : {"s0", "s1", "s2", "s3"}) pool.add(id, 1, /*max_connections=*/5);
  PoolTable table = pool.table(kind);
  auto s = make_selector(table, 0);
  for (uint64_t k = 0; k < 100; ++k) {
    PickContext ctx;
    ctx.hash = test_key(k);
    const auto order = walk_order(table, ctx.hash);
    Backend* first = const_cast<Backend*>(order[0]);
    first->active = 5;
    CHECK(s->pick(ctx) == order[1]);
    first->active = 4;
    CHECK(s->pick(ctx) == order[0]);
    first->active = 0;
  }
  for (auto& b : pool.backends) b->active = 5;
  PickContext ctx;
  ctx.hash = 12345;
  CHECK(s->pick(ctx) == nullptr);
}

TEST_CASE("hash selectors: nothing to choose from", "[hash_select]") {
  const SelectorKind kind = GENERATE(SelectorKind::RingHash, SelectorKind::Maglev);
  TestPool none;
  PoolTable table = none.table(kind);
  REQUIRE(table.lookup != nullptr);
  auto s = make_selector(table, 0);
  PickContext ctx;
  ctx.hash = 99;
  CHECK(s->pick(ctx) == nullptr);
  // Weight-0 candidates never get placed.
  TestPool zero;
  zero.add("z", 0);
  const PoolTable zero_table = zero.table(kind);
  auto z = make_selector(zero_table, 0);
  CHECK(z->pick(ctx) == nullptr);
}

TEST_CASE("bounded loads: no backend ever exceeds its ceiling", "[hash_select][bounded]") {
  const SelectorKind kind = GENERATE(SelectorKind::RingHash, SelectorKind::Maglev);
  const unsigned factor = GENERATE(110u, 125u, 200u);
  const bool hot = GENERATE(false, true);  // hot: every client hashes the same
  TestPool pool({1, 1, 2, 1, 3, 1, 1, 2});
  uint64_t total_weight = 0;
  for (auto& c : pool.candidates) total_weight += c.weight;
  PoolTable table = pool.table(kind, factor);
  auto s = make_selector(table, 0);
  uint64_t placed = 0;
  for (uint64_t k = 0; k < 3000; ++k) {
    PickContext ctx;
    ctx.hash = hot ? 42 : test_key(k);
    Backend* b = s->pick(ctx);
    REQUIRE(b != nullptr);
    b->active++;
    ++placed;
    // The paper's invariant, weighted: load_i <= ceil(c * m * w_i / W).
    for (size_t i = 0; i < pool.backends.size(); ++i) {
      const uint64_t w = pool.candidates[i].weight;
      const uint64_t den = 100 * total_weight;
      const uint64_t ceiling = (factor * placed * w + den - 1) / den;
      INFO("kind " << static_cast<int>(kind) << " factor " << factor << " hot " << hot << " pick " << k
                   << " backend " << i);
      REQUIRE(static_cast<uint64_t>(pool.backends[i]->active.load()) <= ceiling);
    }
  }
}

TEST_CASE("bounded loads keep affinity while under the ceiling", "[hash_select][bounded]") {
  const SelectorKind kind = GENERATE(SelectorKind::RingHash, SelectorKind::Maglev);
  TestPool pool = TestPool::equal(6);
  PoolTable plain_t = pool.table(kind, 0);
  PoolTable bounded_t = pool.table(kind, 150);
  auto plain = make_selector(plain_t, 0);
  auto bounded = make_selector(bounded_t, 0);
  for (auto& b : pool.backends) b->active = 10;  // balanced: nobody is above 1.5x
  for (uint64_t k = 0; k < 1000; ++k) {
    PickContext ctx;
    ctx.hash = test_key(k);
    CHECK(bounded->pick(ctx) == plain->pick(ctx));
  }
  // One backend far above the mean: its clients go to the next in order.
  PickContext ctx;
  ctx.hash = 7;
  Backend* home = plain->pick(ctx);
  home->active = 100;  // ceiling = ceil(1.5 * 151 / 6) = 38
  Backend* moved = bounded->pick(ctx);
  CHECK(moved != home);
  const Backend* avoid[] = {home};
  ctx.avoid = avoid;
  CHECK(moved == plain->pick(ctx));
}

TEST_CASE("bounded loads never refuse a client with room left", "[hash_select][bounded]") {
  // The only backend below its ceiling is avoided: settle for one above it.
  const SelectorKind kind = GENERATE(SelectorKind::RingHash, SelectorKind::Maglev);
  TestPool pool = TestPool::equal(3);
  pool.backends[0]->active = 50;
  pool.backends[1]->active = 50;
  PoolTable table = pool.table(kind, 125);
  auto s = make_selector(table, 0);
  const Backend* avoid[] = {pool.backends[2].get()};
  PickContext ctx;
  ctx.hash = test_key(1);
  ctx.avoid = avoid;
  Backend* b = s->pick(ctx);
  CHECK((b == pool.backends[0].get() || b == pool.backends[1].get()));
  // The first of them in walk order.
  const auto order = walk_order(table, ctx.hash);
  CHECK(b == (order[0] == avoid[0] ? order[1] : order[0]));
}

TEST_CASE("hash selectors without a prebuilt table build their own", "[hash_select][factory]") {
  const SelectorKind kind = GENERATE(SelectorKind::RingHash, SelectorKind::Maglev);
  TestPool pool = TestPool::equal(7);
  PoolTable with = pool.table(kind);
  PoolTable without = with;
  without.lookup = nullptr;
  auto a = make_selector(with, 0);
  auto b = make_selector(without, 0);
  for (uint64_t k = 0; k < 2000; ++k) {
    PickContext ctx;
    ctx.hash = test_key(k);
    CHECK(a->pick(ctx) == b->pick(ctx));
  }
}

TEST_CASE("build_lookup_table only for hash selectors", "[factory]") {
  TestPool pool = TestPool::equal(3);
  CHECK(build_lookup_table(SelectorKind::RoundRobin, pool.candidates) == nullptr);
  CHECK(build_lookup_table(SelectorKind::LeastConnections, pool.candidates) == nullptr);
  CHECK(build_lookup_table(SelectorKind::RandomTwo, pool.candidates) == nullptr);
  auto ring = build_lookup_table(SelectorKind::RingHash, pool.candidates);
  auto maglev = build_lookup_table(SelectorKind::Maglev, pool.candidates);
  REQUIRE(ring != nullptr);
  REQUIRE(maglev != nullptr);
  CHECK(dynamic_cast<const RingHashTable*>(ring.get()) != nullptr);
  CHECK(dynamic_cast<const MaglevTable*>(maglev.get()) != nullptr);
  CHECK(ring->digest() != maglev->digest());
}
