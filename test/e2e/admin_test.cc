// End-to-end: the admin API — /healthz, /metrics, /api/v1/status — agrees
// with the traffic that went through lb, and survives garbage.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <catch2/catch.hpp>

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

// Listener "web" -> round-robin pool "web" (backend b1 by address, b2 with
// id "b2", weight 2); listener "hash" -> maglev pool "hash".
std::string admin_config(const TestBackend& b1, const TestBackend& b2, const TestBackend& h1) {
  return ConfigBuilder()
      .global(1, true)
      .listener("web", "web")
      .listener("hash", "hash")
      .pool("web", "none", R"(selector = "round_robin")")
      .backend(b1.address())
      .backend(b2.address(), "b2", "weight = 2")
      .pool("hash", "none", R"(selector = "maglev")")
      .backend(h1.address(), "h1");
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// Three echo backends behind lb (admin_config), and a known amount of traffic:
// 6 connections through "web" with 100 bytes each way; weights 1:2 send 2 to
// b1 and 4 to b2 (one worker, smooth round robin).
struct AdminScenario {
  static constexpr int kConnections = 6;
  static constexpr size_t kBytes = 100;

  TestBackend b1{TestBackend::echo()};
  TestBackend b2{TestBackend::echo()};
  TestBackend h1{TestBackend::echo()};
  std::unique_ptr<LbProcess> lb;
  uint16_t admin = 0;

  // The default backend id is the address as written in the file.
  std::string b1_id() const { return b1.address(); }

  void start() {
    REQUIRE((b1.ok() && b2.ok() && h1.ok()));
    lb = std::make_unique<LbProcess>(admin_config(b1, b2, h1));
    REQUIRE(lb->wait_started());
    admin = lb->admin_port();
    REQUIRE(admin != 0);
  }

  void send_traffic() {
    const uint16_t web = lb->listener_port("web");
    REQUIRE(web != 0);
    for (int i = 0; i < kConnections; ++i) {
      Socket c = tcp_connect("127.0.0.1", web, in(seconds(5)));
      REQUIRE(c);
      const std::string msg = random_bytes(kBytes, 100 + i);
      REQUIRE(exchange(c, msg, kBytes, in(seconds(5))).data == msg);
    }
    REQUIRE(b1.wait_active(0, in(seconds(5))));
    REQUIRE(b2.wait_active(0, in(seconds(5))));
    REQUIRE(b1.accepted() == 2);
    REQUIRE(b2.accepted() == 4);
  }
};

Labels with(Labels l, const std::string& key, const std::string& value) {
  l[key] = value;
  return l;
}

bool is_hex(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

TEST_CASE("admin: /healthz answers 200 ok", "[e2e][admin]") {
  AdminScenario t;
  t.start();
  HttpResponse health = http_get(t.admin, "/healthz");
  INFO(health.error);
  CHECK(health.status == 200);
  CHECK(trim(health.body) == "ok");
  CHECK(t.lb->terminate() == 0);
}

TEST_CASE("admin: /metrics counts exactly the traffic that went through", "[e2e][admin][metrics]") {
  AdminScenario t;
  t.start();
  t.send_traffic();
  constexpr int kConnections = AdminScenario::kConnections;
  constexpr size_t kBytes = AdminScenario::kBytes;
  const Labels web_b1 = {{"pool", "web"}, {"backend", t.b1_id()}};
  const Labels web_b2 = {{"pool", "web"}, {"backend", "b2"}};

  // Counters may be published when a session ends: wait for the final values.
  std::optional<Metrics> m;
  const bool settled = wait_until(
      [&] {
        m = fetch_metrics(t.admin);
        return m && m->value("lb_listener_connections_total", {{"listener", "web"}}) == kConnections &&
               m->value("lb_listener_active", {{"listener", "web"}}) == 0 &&
               m->value("lb_backend_bytes_total", with(web_b2, "direction", "to_client")) == 4 * kBytes &&
               m->value("lb_backend_bytes_total", with(web_b1, "direction", "to_client")) == 2 * kBytes;
      },
      in(seconds(5)));
  REQUIRE(m);
  INFO(http_get(t.admin, "/metrics").body);
  CHECK(settled);
  CHECK(m->errors().empty());

  CHECK(m->value("lb_listener_connections_total", {{"listener", "web"}}) == kConnections);
  CHECK(m->value("lb_listener_connections_total", {{"listener", "hash"}}) == 0);
  CHECK(m->value("lb_listener_active", {{"listener", "web"}}) == 0);
  CHECK(m->value("lb_backend_connections_total", web_b1) == t.b1.accepted());
  CHECK(m->value("lb_backend_connections_total", web_b2) == t.b2.accepted());
  CHECK(m->value("lb_backend_connections_total", {{"pool", "hash"}, {"backend", "h1"}}) == 0);
  CHECK(m->value("lb_backend_active", web_b1) == 0);
  CHECK(m->value("lb_backend_active", web_b2) == 0);
  CHECK(m->value("lb_backend_up", web_b1) == 1);
  CHECK(m->value("lb_backend_up", web_b2) == 1);
  CHECK(m->value("lb_backend_connect_failures_total", web_b1) == 0);
  CHECK(m->value("lb_backend_bytes_total", with(web_b1, "direction", "to_backend")) == 2 * kBytes);
  CHECK(m->value("lb_backend_bytes_total", with(web_b1, "direction", "to_client")) == 2 * kBytes);
  CHECK(m->value("lb_backend_bytes_total", with(web_b2, "direction", "to_backend")) == 4 * kBytes);
  CHECK(m->value("lb_backend_bytes_total", with(web_b2, "direction", "to_client")) == 4 * kBytes);
  CHECK(m->type("lb_listener_connections_total") == "counter");
  CHECK(m->type("lb_backend_connections_total") == "counter");
  CHECK(m->type("lb_backend_bytes_total") == "counter");
  CHECK(m->type("lb_listener_active") == "gauge");
  CHECK(m->type("lb_backend_up") == "gauge");

  // Hash selectors publish their table digest; round robin has none.
  auto table_info = m->find("lb_pool_table_info", {{"pool", "hash"}});
  REQUIRE(table_info.size() == 1);
  CHECK(table_info[0].value == 1);
  CHECK(is_hex(table_info[0].labels["digest"]));
  CHECK(m->find("lb_pool_table_info", {{"pool", "web"}}).empty());

  CHECK(t.lb->terminate() == 0);
}

TEST_CASE("admin: /api/v1/status has the contract's fields and counts", "[e2e][admin][status]") {
  AdminScenario t;
  t.start();
  t.send_traffic();

  // The session totals may be published when a session ends.
  json j;
  HttpResponse status;
  wait_until(
      [&] {
        status = http_get(t.admin, "/api/v1/status");
        j = json::parse(status.body, nullptr, false);
        return status.status == 200 && !j.is_discarded() && j.contains("listeners") &&
               j["listeners"].is_array() && !j["listeners"].empty() &&
               j["listeners"][0].value("total", -1) == AdminScenario::kConnections &&
               j["listeners"][0].value("active", -1) == 0;
      },
      in(seconds(5)));
  INFO(status.error << "\n" << status.body);
  REQUIRE(status.status == 200);
  CHECK(status.header("Content-Type").value_or("").find("application/json") != std::string::npos);
  REQUIRE(!j.is_discarded());
  CHECK(j.value("version", "") == "0.1.0");
  REQUIRE(j["generation"].is_number_integer());
  CHECK(j["generation"].get<int>() == 1);

  REQUIRE(j["listeners"].is_array());
  REQUIRE(j["listeners"].size() == 2);
  json& lw = j["listeners"][0];
  CHECK(lw.value("name", "") == "web");
  CHECK(lw.value("protocol", "") == "tcp");
  REQUIRE(lw["bind"].is_array());
  REQUIRE(lw["bind"].size() == 1);
  REQUIRE(lw["bind"][0].is_string());
  CHECK(lw["bind"][0].get<std::string>().rfind("127.0.0.1:", 0) == 0);
  CHECK(lw.value("pool", "") == "web");
  CHECK(lw.value("active", -1) == 0);
  CHECK(lw.value("total", -1) == AdminScenario::kConnections);
  CHECK(j["listeners"][1].value("name", "") == "hash");
  CHECK(j["listeners"][1].value("total", -1) == 0);

  REQUIRE(j["pools"].is_array());
  REQUIRE(j["pools"].size() == 2);
  json& pw = j["pools"][0];
  CHECK(pw.value("name", "") == "web");
  CHECK(pw.value("selector", "") == "round_robin");
  REQUIRE(pw.contains("table_digest"));
  CHECK(pw["table_digest"].is_null());
  REQUIRE(pw["backends"].is_array());
  REQUIRE(pw["backends"].size() == 2);
  json& jb1 = pw["backends"][0];
  CHECK(jb1.value("id", "") == t.b1_id());
  CHECK(jb1.value("address", "") == t.b1.address());
  CHECK(jb1.value("weight", -1) == 1);
  CHECK(jb1.value("health", "") == "up");
  CHECK(jb1.value("admin_state", "") == "active");
  REQUIRE(jb1.contains("backup"));
  CHECK(jb1["backup"] == false);
  CHECK(jb1.value("active", -1) == 0);
  CHECK(jb1.value("total", -1) == static_cast<int>(t.b1.accepted()));
  json& jb2 = pw["backends"][1];
  CHECK(jb2.value("id", "") == "b2");
  CHECK(jb2.value("address", "") == t.b2.address());
  CHECK(jb2.value("weight", -1) == 2);
  CHECK(jb2.value("total", -1) == static_cast<int>(t.b2.accepted()));

  // The hash pool's digest is the one /metrics publishes.
  json& ph = j["pools"][1];
  CHECK(ph.value("name", "") == "hash");
  CHECK(ph.value("selector", "") == "maglev");
  REQUIRE(ph["table_digest"].is_string());
  const std::string digest = ph["table_digest"].get<std::string>();
  CHECK(is_hex(digest));
  auto m = fetch_metrics(t.admin);
  REQUIRE(m);
  CHECK(m->value("lb_pool_table_info", {{"pool", "hash"}, {"digest", digest}}) == 1);

  CHECK(t.lb->terminate() == 0);
}

TEST_CASE("admin: malformed requests get 400 and lb keeps serving", "[e2e][admin]") {
  TestBackend b1(TestBackend::echo());
  TestBackend b2(TestBackend::echo());
  TestBackend h1(TestBackend::echo());
  REQUIRE((b1.ok() && b2.ok() && h1.ok()));
  LbProcess lb(admin_config(b1, b2, h1));
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();
  REQUIRE(admin != 0);

  // The last one looks like the start of a TLS handshake (binary, with NULs).
  static const char kTls[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n";
  for (const std::string& garbage :
       {std::string("GARBAGE\r\n\r\n"), std::string("GET\r\n\r\n"), std::string(kTls, sizeof(kTls) - 1)}) {
    HttpResponse r = http_raw(admin, garbage);
    INFO("request " << garbage.size() << " bytes: " << r.error);
    CHECK(r.status == 400);
  }

  // A peer that sends half a request and vanishes must not wedge anything.
  {
    Socket s = tcp_connect("127.0.0.1", admin, in(seconds(5)));
    REQUIRE(s);
    REQUIRE(write_all(s, "GET /heal", in(seconds(5))) == 9);
  }

  CHECK(http_get(admin, "/no/such/path").status == 404);
  HttpResponse health = http_get(admin, "/healthz");
  CHECK(health.status == 200);
  CHECK(trim(health.body) == "ok");

  // The data path is unaffected.
  Socket c = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
  REQUIRE(c);
  CHECK(exchange(c, "still here", 10, in(seconds(5))).data == "still here");
  c.close();

  CHECK(lb.terminate() == 0);
}

}  // namespace
}  // namespace lb::test
