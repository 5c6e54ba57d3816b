// End-to-end: the /api/v1/status fields a dashboard needs beyond the spec's
// example — per backend effective_weight, connect_failures, bytes_to_backend,
// bytes_to_client and last_check; per listener the rejected counts — each
// present and meaning what it says after real traffic.
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

using nlohmann::json;

// "web": tcp-checked pool with a live backend "ok" (weight 3) and a refusing
// one "dead"; "bad": unchecked pool whose only backend refuses; "closed": a
// listener that denies every loopback client.
std::string status_config(const TestBackend& ok, uint16_t dead_port) {
  const std::string dead = fmt::format("127.0.0.1:{}", dead_port);
  return ConfigBuilder()
      .global(1, true)
      .listener("web", "web")
      .listener("bad", "bad", "retries = 0")
      .listener("closed", "web", R"(deny = ["127.0.0.0/8"])")
      .pool("web", "tcp", "", "interval = \"200ms\"\nrise = 1\nfall = 1")
      .backend(ok.address(), "ok", "weight = 3")
      .backend(dead, "dead")
      .pool("bad")
      .backend(dead, "refusing");
}

const json* find(const json& arr, const std::string& key, const std::string& value) {
  for (const auto& e : arr)
    if (e.contains(key) && e[key] == value) return &e;
  return nullptr;
}

TEST_CASE("status: per-backend and per-listener fields for a dashboard", "[e2e][admin][status]") {
  TestBackend ok{TestBackend::echo()};
  REQUIRE(ok.ok());
  const uint16_t dead = refused_port();
  LbProcess lb(status_config(ok, dead));
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();

  // 1000 bytes each way through "web" (only "ok" is up).
  {
    Socket c = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
    REQUIRE(c);
    const std::string msg = random_bytes(1000, 7);
    REQUIRE(exchange(c, msg, msg.size(), in(seconds(5))).data == msg);
  }
  // A connection to "bad": its backend refuses.
  {
    Socket c = tcp_connect("127.0.0.1", lb.listener_port("bad"), in(seconds(5)));
    REQUIRE(c);
    CHECK(read_until_eof(c, in(seconds(5))).end != ReadEnd::Timeout);
  }
  // One refused by the ACL.
  {
    Socket c = tcp_connect("127.0.0.1", lb.listener_port("closed"), in(seconds(5)));
    if (c) CHECK(read_until_eof(c, in(seconds(5))).end != ReadEnd::Timeout);
  }

  json doc;
  const auto settled = [&] {
    HttpResponse r = http_get(admin, "/api/v1/status");
    if (r.status != 200) return false;
    doc = json::parse(r.body, nullptr, false);
    if (doc.is_discarded()) return false;
    const json* web = find(doc["pools"], "name", "web");
    const json* bad = find(doc["pools"], "name", "bad");
    const json* closed = find(doc["listeners"], "name", "closed");
    if (!web || !bad || !closed) return false;
    const json* okb = find((*web)["backends"], "id", "ok");
    const json* deadb = find((*web)["backends"], "id", "dead");
    const json* refusing = find((*bad)["backends"], "id", "refusing");
    return okb && deadb && refusing && (*okb)["bytes_to_client"] == 1000 &&
           (*okb)["bytes_to_backend"] == 1000 && (*refusing)["connect_failures"] >= 1 &&
           (*closed)["rejected"]["acl"] == 1 && (*okb)["last_check"]["result"] == "pass" &&
           (*deadb)["last_check"]["result"] == "fail";
  };
  CHECK(wait_until(settled, in(seconds(10))));
  INFO(doc.dump(2));

  const json& web = *find(doc["pools"], "name", "web");
  const json& okb = *find(web["backends"], "id", "ok");
  const json& deadb = *find(web["backends"], "id", "dead");
  const json& refusing = *find((*find(doc["pools"], "name", "bad"))["backends"], "id", "refusing");

  // Every field the spec's example has is still there.
  for (const char* k : {"id", "address", "weight", "health", "admin_state", "backup", "active", "total"})
    CHECK(okb.contains(k));

  CHECK(okb["weight"] == 3);
  CHECK(okb["effective_weight"] == 3);
  CHECK(okb["connect_failures"] == 0);
  CHECK(okb["bytes_to_backend"] == 1000);
  CHECK(okb["bytes_to_client"] == 1000);
  CHECK(okb["last_check"]["result"] == "pass");
  CHECK(okb["last_check"]["detail"].is_string());
  CHECK_FALSE(okb["last_check"]["detail"].get<std::string>().empty());
  REQUIRE(okb["last_check"]["age_ms"].is_number_integer());
  CHECK(okb["last_check"]["age_ms"].get<int64_t>() >= 0);
  CHECK(okb["last_check"]["age_ms"].get<int64_t>() < 60000);

  CHECK(deadb["health"] == "down");
  CHECK(deadb["last_check"]["result"] == "fail");
  CHECK(deadb["last_check"]["detail"].get<std::string>().find("refused") != std::string::npos);
  CHECK(deadb["bytes_to_backend"] == 0);

  CHECK(refusing["connect_failures"].get<uint64_t>() >= 1);
  CHECK(refusing["bytes_to_client"] == 0);
  // type = "none": nothing was probed.
  CHECK(refusing["last_check"]["result"].is_null());
  CHECK(refusing["last_check"]["age_ms"].is_null());
  CHECK(refusing["last_check"]["detail"].is_string());

  for (const auto& l : doc["listeners"]) {
    REQUIRE(l.contains("rejected"));
    for (const char* k : {"acl", "limit", "no_backend", "proxy_protocol", "tls"})
      CHECK(l["rejected"][k].is_number());
  }
  const json& closed = *find(doc["listeners"], "name", "closed");
  CHECK(closed["rejected"]["acl"] == 1);
  CHECK(closed["rejected"]["limit"] == 0);
  CHECK((*find(doc["listeners"], "name", "web"))["rejected"]["acl"] == 0);

  // Drain does not change the weight in force (it only stops new traffic).
  REQUIRE(http_post(admin, "/api/v1/pools/web/backends/ok", R"({"state":"drain"})").status == 200);
  json after = json::parse(http_get(admin, "/api/v1/status").body, nullptr, false);
  const json& okd = *find((*find(after["pools"], "name", "web"))["backends"], "id", "ok");
  CHECK(okd["admin_state"] == "drain");
  CHECK(okd["effective_weight"] == 3);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("metrics: process_* describe the lb process", "[e2e][admin][metrics][process]") {
  TestBackend ok{TestBackend::echo()};
  REQUIRE(ok.ok());
  LbProcess lb(status_config(ok, refused_port()));
  REQUIRE(lb.wait_started());
  auto m = fetch_metrics(lb.admin_port());
  REQUIRE(m);
  CHECK(m->errors().empty());
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto start = m->value("process_start_time_seconds");
  REQUIRE(start);
  CHECK(*start <= now + 1);
  CHECK(*start > now - 600);  // started by this test, minutes at most even under sanitizers
  auto rss = m->value("process_resident_memory_bytes");
  REQUIRE(rss);
  CHECK(*rss > 1024 * 1024);
  CHECK(*rss < 4.0 * 1024 * 1024 * 1024);
  auto open = m->value("process_open_fds");
  auto max = m->value("process_max_fds");
  REQUIRE(open);
  REQUIRE(max);
  // lb's own count, seen from outside, within the scrape's connection or two.
  const int fds = lb.fd_count();
  CHECK(*open >= fds - 2);
  CHECK(*open <= fds + 2);
  CHECK(*max >= *open);
  auto cpu = m->value("process_cpu_seconds_total");
  REQUIRE(cpu);
  CHECK(*cpu >= 0);
  CHECK(*cpu < 600);
  CHECK(lb.terminate() == 0);
}

}  // namespace
}  // namespace lb::test
