#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <map>
#include <string>
#include <thread>

#include "conf/load.h"
#include "core/control.h"
#include "core/select/selector_set.h"
#include "core/tls/settings.h"
#include "test/support/config_builder.h"

using lb::core::BackendTablePtr;
using lb::core::ControlPlane;
using lb::core::SelectorSet;

namespace {

lb::conf::Config load(const std::string& text) {
  auto r = lb::conf::load_string(text, "test.toml");
  INFO((r.errors.empty() ? std::string() : r.errors[0].str()));
  REQUIRE(r.ok());
  return *r.config;
}

// One tcp-checked pool "web" of backends "a" and "b" with the given weight
// and slow_start: the slow-start tests' common configuration.
lb::conf::Config slow_start_pool(const std::string& ramp, unsigned weight) {
  const std::string w = fmt::format("weight = {}", weight);
  return load(lb::test::ConfigBuilder()
                  .listener("web", "web")
                  .pool("web", "tcp", fmt::format("slow_start = \"{}\"", ramp))
                  .backend("127.0.0.1:9001", "a", w)
                  .backend("127.0.0.1:9002", "b", w));
}

const char* kTwoPools = R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"

[[pool]]
name = "web"
selector = "maglev"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "127.0.0.1:9002"
id = "b"
[[pool.backend]]
address = "127.0.0.1:9001"
id = "a"
[[pool.backend]]
address = "127.0.0.1:9003"
id = "c"
weight = 0

[[pool]]
name = "checked"
[pool.health_check]
type = "tcp"
[[pool.backend]]
address = "127.0.0.1:9004"
)";

std::vector<std::string> candidate_ids(const BackendTablePtr& t, const std::string& pool) {
  std::vector<std::string> ids;
  for (auto& c : t->find(pool)->candidates) ids.push_back(c.backend->id);
  return ids;
}

}  // namespace

TEST_CASE("control plane builds sorted candidates and publishes every change", "[control]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  auto cfg = load(kTwoPools);
  auto pools = cp.apply(cfg);
  REQUIRE(pools.size() == 2);
  REQUIRE(published.size() == 1);
  auto t = published.back();
  // Sorted by id; weight 0 takes no new traffic.
  CHECK(candidate_ids(t, "web") == std::vector<std::string>{"a", "b"});
  CHECK(t->find("web")->lookup != nullptr);
  CHECK(t->find("web")->backends.size() == 3);
  // A health-checked pool starts down until its first probe result.
  CHECK(t->find("checked")->candidates.empty());
  cp.set_health(*pools[1].backends[0], true);
  REQUIRE(published.size() == 2);
  CHECK(published.back()->find("checked")->candidates.size() == 1);
  CHECK(published.back()->version > t->version);
  // No change, no new table.
  cp.set_health(*pools[1].backends[0], true);
  CHECK(published.size() == 2);
}

TEST_CASE("drain, weight and health change the candidates and the digest", "[control]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  auto pools = cp.apply(load(kTwoPools));
  uint64_t d0 = published.back()->find("web")->digest;

  CHECK(cp.set_drain("web", "a", true) == ControlPlane::Status::Ok);
  CHECK(candidate_ids(published.back(), "web") == std::vector<std::string>{"b"});
  uint64_t d1 = published.back()->find("web")->digest;
  CHECK(d1 != d0);
  CHECK(cp.set_drain("web", "a", false) == ControlPlane::Status::Ok);
  CHECK(published.back()->find("web")->digest == d0);  // same set, same table

  CHECK(cp.set_weight("web", "c", 5) == ControlPlane::Status::Ok);
  CHECK(candidate_ids(published.back(), "web") == std::vector<std::string>{"a", "b", "c"});
  CHECK(cp.set_weight("web", "nope", 5) == ControlPlane::Status::NoBackend);
  CHECK(cp.set_drain("nope", "a", true) == ControlPlane::Status::NoPool);

  cp.set_health(*pools[0].backends[0], false);  // "b"
  CHECK(candidate_ids(published.back(), "web") == std::vector<std::string>{"a", "c"});

  auto snap = cp.snapshot();
  REQUIRE(snap.size() == 2);
  CHECK(snap[0].has_digest);
  CHECK_FALSE(snap[1].has_digest);
  CHECK(snap[0].backends[0].backend->id == "b");  // config order
  CHECK_FALSE(snap[0].backends[0].up);
  CHECK(snap[0].backends[2].weight == 5);
}

TEST_CASE("backups serve only while no primary is usable", "[control]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  auto cfg = load(lb::test::ConfigBuilder()
                      .listener("web", "web")
                      .pool("web")
                      .backend("127.0.0.1:9001")
                      .backend("127.0.0.1:9002", "", "backup = true"));
  // Build the pool by hand if backup is not accepted by conf yet.
  cp.apply(cfg);
  auto t = published.back();
  CHECK(candidate_ids(t, "web") == std::vector<std::string>{"127.0.0.1:9001"});
  CHECK_FALSE(t->find("web")->using_backups);
  cp.set_drain("web", "127.0.0.1:9001", true);
  CHECK(candidate_ids(published.back(), "web") == std::vector<std::string>{"127.0.0.1:9002"});
  CHECK(published.back()->find("web")->using_backups);
}

TEST_CASE("reload keeps backends, their state and counters by id", "[control]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  auto p1 = cp.apply(load(kTwoPools));
  auto checked = p1[1].backends[0];
  cp.set_health(*checked, true);
  cp.set_drain("web", "a", true);
  checked->total = 7;

  auto p2 = cp.apply(load(kTwoPools));
  CHECK(p2[1].backends[0] == checked);  // same object: counters and health kept
  CHECK(p2[1].backends[0]->total == 7);
  CHECK(published.back()->find("checked")->candidates.size() == 1);
  CHECK(candidate_ids(published.back(), "web") == std::vector<std::string>{"b"});  // still drained

  // A changed address for the same id is a new backend with a fresh probe.
  std::string moved = kTwoPools;
  moved.replace(moved.find("127.0.0.1:9004"), 14, "127.0.0.1:9005");
  auto p3 = cp.apply(load(moved));
  CHECK(p3[1].backends[0] != checked);
  CHECK(published.back()->find("checked")->candidates.empty());
}

TEST_CASE("a reload changing weight, backup and max_connections keeps the Backend object", "[control]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  auto p1 = cp.apply(load(kTwoPools));
  auto b = p1[0].backends[0];  // id "b"
  b->active = 3;
  std::string changed = kTwoPools;
  changed.replace(changed.find("id = \"b\"\n"), 8,
                  "id = \"b\"\nweight = 7\nmax_connections = 4\nbackup = true\n");
  auto p2 = cp.apply(load(changed));
  CHECK(p2[0].backends[0] == b);
  CHECK(b->active == 3);
  CHECK(b->weight == 7);
  CHECK(b->max_connections == 4);
  CHECK(b->backup);
  CHECK_FALSE(b->full());
  b->active = 4;
  CHECK(b->full());

  // The id pointed at another address: another server, counters continue.
  b->total = 11;
  cp.set_drain("web", "b", true);
  std::string moved = changed;
  moved.replace(moved.find("127.0.0.1:9002"), 14, "127.0.0.1:9012");
  auto p3 = cp.apply(load(moved));
  CHECK(p3[0].backends[0] != b);
  CHECK(p3[0].backends[0]->total == 11);
  CHECK(p3[0].backends[0]->active == 0);
  CHECK(cp.snapshot()[0].backends[0].drain);
}

TEST_CASE("a staged reload changes nothing until it commits, and a dropped one nothing at all", "[control]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  cp.apply(load(kTwoPools));
  const size_t tables = published.size();
  std::string grown = kTwoPools;
  grown += "[[pool.backend]]\naddress = \"127.0.0.1:9006\"\nid = \"new\"\n";
  auto staged = cp.stage(load(grown));
  REQUIRE(staged[1].backends.size() == 2);
  auto fresh = staged[1].backends[1];
  CHECK(published.size() == tables);  // nothing published yet
  cp.set_health(*fresh, true);        // its first probe, while staged
  CHECK(published.size() == tables);
  CHECK(cp.snapshot()[1].backends.size() == 1);
  cp.commit_staged();
  REQUIRE(published.size() == tables + 1);
  CHECK(candidate_ids(published.back(), "checked") == std::vector<std::string>{"new"});

  cp.stage(load(kTwoPools));
  cp.drop_staged();
  cp.commit_staged();  // nothing staged: no-op
  CHECK(published.size() == tables + 1);
  CHECK(cp.snapshot()[1].backends.size() == 2);
}

TEST_CASE("the TLS contexts are published with the pools they were staged with", "[control][tls]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  auto first = std::make_shared<const lb::tls::Contexts>();
  cp.apply(load(kTwoPools), first);
  REQUIRE_FALSE(published.empty());
  CHECK(published.back()->tls == first);
  const size_t tables = published.size();
  // A reload: the same pools, other contexts (files read anew). Nothing
  // changes for traffic until it commits, then a table is published even
  // though no pool's selection changed.
  auto second = std::make_shared<const lb::tls::Contexts>();
  cp.stage(load(kTwoPools), second);
  CHECK(published.size() == tables);
  CHECK(cp.current()->tls == first);
  cp.commit_staged();
  REQUIRE(published.size() == tables + 1);
  CHECK(published.back()->tls == second);
  // Health changes keep the contexts; a dropped reload leaves them.
  cp.stage(load(kTwoPools), first);
  cp.drop_staged();
  cp.set_health(*published.back()->find("checked")->backends[0], true);
  REQUIRE(published.size() == tables + 2);
  CHECK(cp.current()->tls == second);
  // A reload without TLS publishes none.
  cp.stage(load(kTwoPools));
  cp.commit_staged();
  CHECK(cp.current()->tls == nullptr);
}

TEST_CASE("slow start ramps a recovered backend's weight, never the first result", "[control]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  auto pools = cp.apply(slow_start_pool("400ms", 3));
  auto& a = *pools[0].backends[0];
  auto& b = *pools[0].backends[1];
  auto weights = [&] {
    std::map<std::string, uint32_t> w;
    for (auto& c : published.back()->find("web")->candidates) w[c.backend->id] = c.weight;
    return w;
  };
  // First results: full weight at once, no ramp.
  cp.set_health(a, true);
  cp.set_health(b, true);
  CHECK(weights() == std::map<std::string, uint32_t>{{"a", 3}, {"b", 3}});
  CHECK_FALSE(cp.tick());
  // b goes down and comes back: it starts near zero and grows to full.
  cp.set_health(b, false);
  cp.set_health(b, true);
  auto w0 = weights();
  CHECK(w0["a"] == 300);     // everyone scaled while a ramp runs
  CHECK(w0["b"] < 300 / 4);  // just recovered
  CHECK(w0["b"] >= 1);
  // b's share relative to a only grows.
  auto share = [&] {
    auto w = weights();
    return static_cast<double>(w["b"]) / w["a"];
  };
  double last = share();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (cp.tick() && std::chrono::steady_clock::now() < deadline) {
    CHECK(share() >= last);
    last = share();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Ramp over: back to the plain weights (and the plain table).
  CHECK(weights() == std::map<std::string, uint32_t>{{"a", 3}, {"b", 3}});
}

// Publishing tables as a worker sees them (core/select/selector_set.h): a
// change to one pool must not disturb the others, and smooth round robin
// must keep its place across publishes.
namespace {

// "rr": round robin 5,3,2; "hash": maglev; "flap": the pool that changes.
const char* kThreePools = R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "rr"

[[pool]]
name = "rr"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "127.0.0.1:9001"
id = "a"
weight = 5
[[pool.backend]]
address = "127.0.0.1:9002"
id = "b"
weight = 3
[[pool.backend]]
address = "127.0.0.1:9003"
id = "c"
weight = 2

[[pool]]
name = "hash"
selector = "maglev"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "127.0.0.1:9004"
id = "h1"
[[pool.backend]]
address = "127.0.0.1:9005"
id = "h2"

[[pool]]
name = "flap"
slow_start = "10s"
[pool.health_check]
type = "tcp"
[[pool.backend]]
address = "127.0.0.1:9006"
id = "x"
[[pool.backend]]
address = "127.0.0.1:9007"
id = "y"
)";

lb::core::PoolTablePtr pool_of(const BackendTablePtr& t, const std::string& name) {
  for (auto& p : t->pools)
    if (p->name == name) return p;
  return nullptr;
}

// A clock the test moves by hand.
struct FakeClock {
  std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now();
  ControlPlane::Clock fn() {
    return [this] { return now; };
  }
};

}  // namespace

TEST_CASE("a change in one pool leaves the other pools' tables and selectors untouched",
          "[control][publish]") {
  ControlPlane cp({});
  auto pools = cp.apply(load(kThreePools));
  SelectorSet sel;
  sel.update(*cp.current(), 1);
  auto& x = *pools[2].backends[0];
  auto& y = *pools[2].backends[1];
  cp.set_health(y, true);
  sel.update(*cp.current(), 2);

  const BackendTablePtr before = cp.current();
  const auto* rr_selector = sel.find("rr")->selector.get();
  const auto* hash_selector = sel.find("hash")->selector.get();
  const auto lookups = cp.build_stats().lookup_tables;

  // x flaps 500 times, once between every two picks of pool "rr".
  std::map<std::string, int> served;
  for (int i = 0; i < 1000; ++i) {
    cp.set_health(x, i % 2 == 0);
    sel.update(*cp.current(), 3 + i);
    ++served[sel.find("rr")->selector->pick({})->id];
  }
  const BackendTablePtr after = cp.current();
  CHECK(after->version > before->version);
  CHECK(pool_of(after, "flap") != pool_of(before, "flap"));
  // "rr" and "hash" kept their tables (no Maglev rebuild) and, on the
  // worker, their selectors.
  CHECK(pool_of(after, "rr") == pool_of(before, "rr"));
  CHECK(pool_of(after, "hash") == pool_of(before, "hash"));
  CHECK(pool_of(after, "hash")->lookup == pool_of(before, "hash")->lookup);
  CHECK(cp.build_stats().lookup_tables == lookups);
  CHECK(sel.find("rr")->selector.get() == rr_selector);
  CHECK(sel.find("hash")->selector.get() == hash_selector);
  // So smooth round robin stays exact: 100 whole cycles of 5,3,2.
  INFO("a=" << served["a"] << " b=" << served["b"] << " c=" << served["c"]);
  CHECK(served == std::map<std::string, int>{{"a", 500}, {"b", 300}, {"c", 200}});
}

TEST_CASE("slow start rebuilds only the ramping pool", "[control][publish][slow_start]") {
  FakeClock clock;
  ControlPlane cp({}, clock.fn());
  auto pools = cp.apply(load(kThreePools));
  auto& x = *pools[2].backends[0];
  auto& y = *pools[2].backends[1];
  cp.set_health(x, true);
  cp.set_health(y, true);
  cp.set_health(x, false);
  cp.set_health(x, true);  // recovered: ramps over 10s
  const BackendTablePtr start = cp.current();
  const auto stats0 = cp.build_stats();
  int ticks = 0;
  for (;;) {
    clock.now += std::chrono::milliseconds(250);
    if (!cp.tick()) break;
    ++ticks;
    REQUIRE(ticks <= 50);
  }
  const auto stats1 = cp.build_stats();
  const BackendTablePtr end = cp.current();
  CHECK(ticks == 40);  // 0.25s .. 10s: the last one ends the ramp
  // One pool table per tick: the ramping pool's, never another pool's.
  CHECK(stats1.pool_tables - stats0.pool_tables == static_cast<uint64_t>(ticks));
  CHECK(stats1.lookup_tables == stats0.lookup_tables);
  CHECK(pool_of(end, "rr") == pool_of(start, "rr"));
  CHECK(pool_of(end, "hash") == pool_of(start, "hash"));
  // Nothing changes once the ramp is over: no publish at all.
  const auto publishes = cp.build_stats().publishes;
  CHECK_FALSE(cp.tick());
  cp.set_drain("rr", "a", false);  // already active
  cp.set_weight("rr", "a", 5);     // the weight it has
  CHECK(cp.build_stats().publishes == publishes);
  CHECK(cp.current() == end);
}

TEST_CASE("round robin follows a slow-start ramp at one connection per tick",
          "[control][publish][slow_start]") {
  // Weights 1 and 1; "b" recovers and ramps over 30s. At one connection per
  // 250 ms tick, b's share must follow its ramping weight: the expected
  // count is the sum over ticks of w_b / (w_a + w_b). Restarting the cycle
  // at every tick would send every connection to the heavier "a".
  FakeClock clock;
  ControlPlane cp({}, clock.fn());
  auto pools = cp.apply(slow_start_pool("30s", 1));
  auto& a = *pools[0].backends[0];
  auto& b = *pools[0].backends[1];
  cp.set_health(a, true);
  cp.set_health(b, true);
  cp.set_health(b, false);
  SelectorSet sel;
  sel.update(*cp.current(), 1);
  cp.set_health(b, true);

  std::map<std::string, int> served;
  double expected_b = 0;
  int ticks = 0;
  for (bool ramping = true; ramping; ++ticks) {
    REQUIRE(ticks <= 200);
    sel.update(*cp.current(), 2 + static_cast<uint64_t>(ticks));
    const auto& c = sel.find("web")->table->candidates;
    REQUIRE(c.size() == 2);
    expected_b += static_cast<double>(c[1].weight) / (c[0].weight + c[1].weight);
    ++served[sel.find("web")->selector->pick({})->id];
    clock.now += std::chrono::milliseconds(250);
    ramping = cp.tick();
  }
  INFO("a=" << served["a"] << " b=" << served["b"] << " expected b=" << expected_b << " ticks=" << ticks);
  CHECK(ticks == 121);
  CHECK(expected_b > 30);  // about 121 * (1 - ln 2)
  CHECK(std::abs(served["b"] - expected_b) <= 2);
}

TEST_CASE("snapshot: effective_weight follows slow start, not drain or health", "[control]") {
  ControlPlane cp([](BackendTablePtr) {});
  auto pools = cp.apply(slow_start_pool("1h", 3));
  auto& a = *pools[0].backends[0];
  auto& b = *pools[0].backends[1];
  auto eff = [&](const std::string& id) {
    const auto snap = cp.snapshot();
    for (auto& bv : snap[0].backends)
      if (bv.backend->id == id) return bv.effective_weight;
    return -1.0;
  };
  CHECK(cp.snapshot()[0].health_type == lb::conf::HealthType::Tcp);
  // Down, never up: the configured weight (health is reported apart).
  CHECK(eff("a") == 3);
  cp.set_health(a, true);
  cp.set_health(b, true);
  CHECK(eff("a") == 3);
  CHECK(eff("b") == 3);
  // b recovers at the start of an hour-long ramp: a hundredth of its weight.
  cp.set_health(b, false);
  cp.set_health(b, true);
  CHECK(eff("a") == 3);
  CHECK(eff("b") > 0);
  CHECK(eff("b") < 0.1);
  // Draining changes nothing about the weight in force.
  REQUIRE(cp.set_drain("web", "b", true) == ControlPlane::Status::Ok);
  CHECK(eff("b") < 0.1);
  REQUIRE(cp.set_drain("web", "a", true) == ControlPlane::Status::Ok);
  CHECK(eff("a") == 3);
  // An admin weight is the base the ramp scales.
  REQUIRE(cp.set_weight("web", "a", 7) == ControlPlane::Status::Ok);
  CHECK(eff("a") == 7);
  const auto snap = cp.snapshot();
  for (auto& bv : snap[0].backends) CHECK(bv.weight == (bv.backend->id == "a" ? 7u : 3u));
}

TEST_CASE("save and restore carry health, drain, weight, slow start and counters to another plane",
          "[control][handover]") {
  auto now = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  auto clock = [&] { return now; };
  ControlPlane before([](const BackendTablePtr&) {}, clock);
  auto pools = before.apply(slow_start_pool("10s", 3));
  auto& a = *pools[0].backends[0];
  auto& b = *pools[0].backends[1];
  before.set_health(a, true);
  before.set_health(b, true);
  before.set_health(b, false);
  before.set_health(b, true);  // b ramps from now
  now += std::chrono::seconds(4);
  REQUIRE(before.set_drain("web", "a", true) == ControlPlane::Status::Ok);
  REQUIRE(before.set_weight("web", "b", 5) == ControlPlane::Status::Ok);
  a.total = 10;
  a.bytes_to_client = 99;
  b.checks_fail = 3;
  auto saved = before.save();
  REQUIRE(saved.size() == 2);
  CHECK(saved[0].drain);
  CHECK(saved[1].slow_start_elapsed_ms == 4000);
  CHECK(saved[1].admin_weight == 6);  // weight + 1

  ControlPlane after([](const BackendTablePtr&) {}, clock);
  auto next = after.apply(slow_start_pool("10s", 3));
  next[0].backends[0]->total = 1;  // counted by the new program already
  after.restore(saved);
  auto snap = after.snapshot();
  REQUIRE(snap.size() == 1);
  const auto& va = snap[0].backends[0];
  const auto& vb = snap[0].backends[1];
  CHECK(va.up);
  CHECK(va.drain);
  CHECK(va.weight == 3);
  CHECK(vb.up);
  CHECK_FALSE(vb.drain);
  CHECK(vb.weight == 5);
  // Still ramping, 4 s into its 10 s: neither restarted nor finished.
  auto again = after.save();
  REQUIRE(again.size() == 2);
  CHECK(again[1].slow_start_elapsed_ms == 4000);
  CHECK(again[0].slow_start_elapsed_ms == 0);
  CHECK(next[0].backends[0]->total.load() == 11);  // added: no counter goes back
  CHECK(next[0].backends[0]->bytes_to_client.load() == 99);
  CHECK(next[0].backends[1]->checks_fail.load() == 3);
  // A backend the new configuration does not have is ignored.
  saved[0].id = "gone";
  after.restore(saved);
  CHECK(after.snapshot()[0].backends[0].backend->total.load() == 11);
}
