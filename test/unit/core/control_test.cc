#include <catch2/catch.hpp>

#include <map>
#include <thread>

#include "conf/load.h"
#include "core/control.h"

using lb::core::BackendTablePtr;
using lb::core::ControlPlane;

namespace {

lb::conf::Config load(const std::string& text) {
  auto r = lb::conf::load_string(text, "test.toml");
  INFO((r.errors.empty() ? std::string() : r.errors[0].str()));
  REQUIRE(r.ok());
  return *r.config;
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
  auto cfg = load(R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"
[[pool]]
name = "web"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "127.0.0.1:9001"
[[pool.backend]]
address = "127.0.0.1:9002"
backup = true
)");
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
  changed.replace(changed.find("id = \"b\"\n"), 8, "id = \"b\"\nweight = 7\nmax_connections = 4\nbackup = true\n");
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

TEST_CASE("slow start ramps a recovered backend's weight, never the first result", "[control]") {
  std::vector<BackendTablePtr> published;
  ControlPlane cp([&](BackendTablePtr t) { published.push_back(t); });
  auto pools = cp.apply(load(R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"
[[pool]]
name = "web"
slow_start = "400ms"
[pool.health_check]
type = "tcp"
[[pool.backend]]
address = "127.0.0.1:9001"
id = "a"
weight = 3
[[pool.backend]]
address = "127.0.0.1:9002"
id = "b"
weight = 3
)"));
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
  CHECK(w0["a"] == 300);      // everyone scaled while a ramp runs
  CHECK(w0["b"] < 300 / 4);   // just recovered
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
