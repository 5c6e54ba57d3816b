// End-to-end: the certificate files of terminate listeners, as `lb --check`,
// the expiry gauge and SIGHUP see them (every file read again on each
// reload, a broken one failing the reload as a whole).
#include <catch2/catch.hpp>

#include <csignal>
#include <ctime>
#include <regex>
#include <string>
#include <vector>

#include "test/support/config_builder.h"
#include "test/support/deadline.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_certs.h"

namespace lb::test {
namespace {

// One terminate listener "tls" with one certificate and `routes`, pool
// "web" with one backend (type none: the backend need not exist for these
// tests).
std::string terminate_config(const std::string& cert, const std::string& key,
                             const std::vector<std::string>& routes = {}) {
  ConfigBuilder b;
  b.global(1, true).listener("tls", "web", "tls = \"terminate\"").certificate(cert, key);
  if (!routes.empty()) b.route(routes, "web");
  return b.pool("web").backend("127.0.0.1:9");
}

double expiry(uint16_t admin, const std::string& name) {
  auto m = fetch_metrics(admin);
  if (!m) return -1;
  return m->value("lb_tls_certificate_expiry_timestamp_seconds", {{"listener", "tls"}, {"certificate", name}})
      .value_or(-1);
}

double reloads(uint16_t admin, const std::string& result) {
  auto m = fetch_metrics(admin);
  if (!m) return -1;
  return m->value("lb_config_reloads_total", {{"result", result}}).value_or(-1);
}

}  // namespace

TEST_CASE("tls: lb --check reads every certificate and key", "[e2e][tls]") {
  TempDir dir;
  TestCa ca;
  auto good = ca.issue({"www.example.com"}, KeyType::ecdsa_p256);
  std::string cert = dir.write_file("www.pem", good.cert), key = dir.write_file("www.key", good.key);

  SECTION("a good certificate passes") {
    std::string cfg = dir.write_file("lb.toml", terminate_config(cert, key));
    LbRun r = run_lb({"--config", cfg, "--check"});
    INFO(r.err);
    CHECK(r.exit_status == 0);
  }
  SECTION("a broken certificate file fails, naming it") {
    std::string broken = dir.write_file("broken.pem", good.cert.substr(0, good.cert.size() / 2));
    std::string cfg = dir.write_file("lb.toml", terminate_config(broken, key));
    LbRun r = run_lb({"--config", cfg, "--check"});
    CHECK(r.exit_status == 1);
    CHECK(r.err.find("error: listener tls: " + broken) != std::string::npos);
  }
  SECTION("a key of another certificate fails") {
    auto other = ca.issue({"other.example.com"}, KeyType::rsa2048);
    std::string other_key = dir.write_file("other.key", other.key);
    std::string cfg = dir.write_file("lb.toml", terminate_config(cert, other_key));
    LbRun r = run_lb({"--config", cfg, "--check"});
    CHECK(r.exit_status == 1);
    CHECK(r.err.find("other.key: the key does not match the certificate") != std::string::npos);
  }
  SECTION("an expired certificate is an error") {
    auto old = ca.issue({"www.example.com"}, KeyType::ecdsa_p256, -7200, -60);
    std::string cfg = dir.write_file(
        "lb.toml", terminate_config(dir.write_file("old.pem", old.cert), dir.write_file("old.key", old.key)));
    LbRun r = run_lb({"--config", cfg, "--check"});
    CHECK(r.exit_status == 1);
    CHECK(r.err.find("(www.example.com) expired at") != std::string::npos);
  }
  SECTION("a certificate naming none of the routes' names is a warning") {
    std::string cfg = dir.write_file("lb.toml", terminate_config(cert, key, {"api.example.org"}));
    LbRun r = run_lb({"--config", cfg, "--check"});
    CHECK(r.exit_status == 0);
    CHECK(r.err.find("warning: listener tls: certificate " + cert +
                     " (www.example.com) names none of the server names: api.example.org") !=
          std::string::npos);
  }
}

TEST_CASE("tls: SIGHUP re-reads certificate files; a broken one fails the reload", "[e2e][tls][reload]") {
  TempDir dir;
  TestCa ca;
  std::string cert = dir.path() + "/site.pem", key = dir.path() + "/site.key";
  auto first = ca.issue({"site.example.com"}, KeyType::ecdsa_p256, -3600, 86400);
  dir.write_file("site.pem", first.cert);
  dir.write_file("site.key", first.key);
  LbProcess lb(terminate_config(cert, key));
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();
  const double now = static_cast<double>(std::time(nullptr));
  const double first_expiry = expiry(admin, "site.example.com");
  CHECK(first_expiry > now + 86400 - 600);
  CHECK(first_expiry < now + 86400 + 600);
  auto m = fetch_metrics(admin);
  REQUIRE(m);
  CHECK(m->type("lb_tls_handshakes_total") == "counter");
  CHECK(m->value("lb_tls_handshakes_total", {{"listener", "tls"}, {"result", "ok"}}) == 0);
  CHECK(m->value("lb_listener_rejected_total", {{"listener", "tls"}, {"reason", "tls"}}) == 0);

  // Same configuration text, new files: the new certificate is served.
  auto second = ca.issue({"site.example.com"}, KeyType::ecdsa_p256, -3600, 3 * 86400);
  dir.write_file("site.pem", second.cert);
  dir.write_file("site.key", second.key);
  size_t from = lb.line_count();
  REQUIRE(lb.signal(SIGHUP));
  REQUIRE(lb.wait_for_line(std::regex(R"(^info reloaded generation=2\b)"), in(seconds(10)), from));
  CHECK(expiry(admin, "site.example.com") > first_expiry + 86400);

  // A broken key: the reload fails as a whole, the running files keep serving.
  dir.write_file("site.key", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
  from = lb.line_count();
  REQUIRE(lb.signal(SIGHUP));
  auto line = lb.wait_for_line(std::regex(R"(^error reload failed.*)"), in(seconds(10)), from);
  REQUIRE(line);
  CHECK(lb.output().find("site.key: no usable PEM private key") != std::string::npos);
  CHECK(reloads(admin, "error") == 1);
  CHECK(expiry(admin, "site.example.com") > first_expiry + 86400);
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
