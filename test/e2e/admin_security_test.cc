// End-to-end: what keeps the admin API from being driven by someone else —
// the POST rules (Content-Type, Origin), the bearer token of api_token_file
// and the [admin] allow list — against the real lb binary.
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <csignal>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>

#include "test/support/admin_config.h"
#include "test/support/backend_server.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"

namespace lb::test {
namespace {

using nlohmann::json;

std::string security_config(const TestBackend& b, const std::string& admin_extra) {
  return one_backend_config(b.address(), admin_extra);
}

constexpr const char* kBackendPath = "/api/v1/pools/web/backends/b";

// admin_state of backend "b", read with `headers` (the token, when needed).
std::string admin_state(uint16_t admin, const HttpHeaders& headers = {}) {
  HttpResponse r = http_request("127.0.0.1", admin, "GET", "/api/v1/status", "", in(seconds(5)), headers);
  if (r.status != 200) return "status " + std::to_string(r.status) + " " + r.error;
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded()) return "bad json";
  return j["pools"][0]["backends"][0]["admin_state"].get<std::string>();
}

HttpResponse post(uint16_t admin, const std::string& body, const HttpHeaders& headers) {
  return http_request("127.0.0.1", admin, "POST", kBackendPath, body, in(seconds(5)), headers);
}

struct Started {
  TestBackend backend{TestBackend::echo()};
  std::unique_ptr<LbProcess> lb;
  uint16_t admin = 0;
  explicit Started(const std::string& admin_extra = "") {
    REQUIRE(backend.ok());
    lb = std::make_unique<LbProcess>(security_config(backend, admin_extra));
    REQUIRE(lb->wait_started());
    admin = lb->admin_port();
    REQUIRE(admin != 0);
  }
};

TEST_CASE("admin security: a cross-origin form POST is refused and changes nothing",
          "[e2e][admin][security]") {
  Started t;
  // What an HTML form on another site submits.
  HttpResponse r =
      post(t.admin, "state=drain",
           {{"Content-Type", "application/x-www-form-urlencoded"}, {"Origin", "http://evil.example"}});
  INFO(r.error << r.body);
  CHECK(r.status == 403);
  // A page that fetch()es with a JSON body from elsewhere: the Origin alone refuses it.
  r = post(t.admin, R"({"state":"drain"})", {{"Origin", "http://evil.example"}});
  CHECK(r.status == 403);
  // Our own address, another port: another origin.
  r = post(t.admin, R"({"state":"drain"})", {{"Origin", fmt::format("http://127.0.0.1:{}", t.admin + 1)}});
  CHECK(r.status == 403);
  r = post(t.admin, R"({"state":"drain"})", {{"Origin", "null"}});
  CHECK(r.status == 403);
  CHECK(admin_state(t.admin) == "active");
  CHECK(t.lb->terminate() == 0);
}

TEST_CASE("admin security: a POST that is not declared JSON gets 415", "[e2e][admin][security]") {
  Started t;
  // The classic CSRF "simple request": text/plain needs no CORS preflight,
  // yet carries a JSON body.
  HttpResponse r = post(t.admin, R"({"state":"drain"})", {{"Content-Type", "text/plain"}});
  INFO(r.error << r.body);
  CHECK(r.status == 415);
  r = post(t.admin, R"({"state":"drain"})", {{"Content-Type", "text/plain;charset=UTF-8"}});
  CHECK(r.status == 415);
  // No Content-Type at all.
  r = http_raw(t.admin,
               fmt::format("POST {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 17\r\n\r\n"
                           "{{\"state\":\"drain\"}}",
                           kBackendPath));
  CHECK(r.status == 415);
  CHECK(admin_state(t.admin) == "active");
  CHECK(t.lb->terminate() == 0);
}

TEST_CASE("admin security: same-origin JSON POSTs are accepted", "[e2e][admin][security]") {
  Started t;
  HttpResponse r = post(t.admin, R"({"state":"drain"})",
                        {{"Origin", fmt::format("http://127.0.0.1:{}", t.admin)},
                         {"Content-Type", "application/json; charset=utf-8"}});
  INFO(r.error << r.body);
  CHECK(r.status == 200);
  CHECK(admin_state(t.admin) == "drain");
  // "localhost" names the loopback address the connection reached.
  r = post(t.admin, R"({"state":"active"})", {{"Origin", fmt::format("http://localhost:{}", t.admin)}});
  CHECK(r.status == 200);
  CHECK(admin_state(t.admin) == "active");
  // Without Origin (curl, scripts, lb ctl): accepted.
  r = post(t.admin, R"({"state":"drain"})", {});
  CHECK(r.status == 200);
  CHECK(admin_state(t.admin) == "drain");
  CHECK(t.lb->terminate() == 0);
}

TEST_CASE("admin security: api_token_file guards POSTs and /api/*, not /metrics or /healthz",
          "[e2e][admin][security][token]") {
  TempDir dir;
  const std::string token = "s3cr3t-token-0123456789";
  const std::string token_file = dir.write_file("token", token + "\n");
  REQUIRE(!token_file.empty());
  Started t(fmt::format("api_token_file = \"{}\"", token_file));
  const HttpHeaders good = {{"Authorization", "Bearer " + token}};

  HttpResponse r = http_get(t.admin, "/api/v1/status");
  INFO(r.error << r.body);
  CHECK(r.status == 401);
  CHECK(r.header("WWW-Authenticate").value_or("").rfind("Bearer", 0) == 0);
  r = http_request("127.0.0.1", t.admin, "GET", "/api/v1/status", "", in(seconds(5)),
                   {{"Authorization", "Bearer " + token + "x"}});
  CHECK(r.status == 401);
  r = http_request("127.0.0.1", t.admin, "GET", "/api/v1/status", "", in(seconds(5)),
                   {{"Authorization", "Basic " + token}});
  CHECK(r.status == 401);
  CHECK(admin_state(t.admin, good) == "active");

  r = post(t.admin, R"({"state":"drain"})", {});
  CHECK(r.status == 401);
  CHECK(r.header("WWW-Authenticate").value_or("").rfind("Bearer", 0) == 0);
  r = post(t.admin, R"({"state":"drain"})", {{"Authorization", "Bearer wrong"}});
  CHECK(r.status == 401);
  CHECK(admin_state(t.admin, good) == "active");
  r = post(t.admin, R"({"state":"drain"})", good);
  CHECK(r.status == 200);
  CHECK(admin_state(t.admin, good) == "drain");

  // Open: scrapers, health checks and the dashboard page itself.
  CHECK(http_get(t.admin, "/metrics").status == 200);
  CHECK(http_get(t.admin, "/healthz").status == 200);
  CHECK(http_get(t.admin, "/").status != 401);

  // SIGHUP re-reads the token file: the old token stops working.
  const std::string rotated = "rotated-token-9876543210";
  REQUIRE(dir.write_file("token", rotated + "\n") == token_file);
  const size_t from = t.lb->line_count();
  REQUIRE(t.lb->signal(SIGHUP));
  REQUIRE(t.lb->wait_for_line(std::regex("^info reloaded generation=2"), in(seconds(10)), from));
  CHECK(admin_state(t.admin, good) == "status 401 ");
  CHECK(admin_state(t.admin, {{"Authorization", "Bearer " + rotated}}) == "drain");

  CHECK(t.lb->terminate() == 0);
  // The token is a secret: it never appears in lb's output.
  CHECK(t.lb->output().find(token) == std::string::npos);
  CHECK(t.lb->output().find(rotated) == std::string::npos);
}

TEST_CASE("admin security: a missing or empty api_token_file is a configuration error",
          "[e2e][admin][security][token]") {
  TempDir dir;
  TestBackend b{TestBackend::echo()};
  const std::string empty = dir.write_file("empty", "\n");
  const std::string missing = dir.path() + "/missing";
  for (const std::string& file : {empty, missing}) {
    const std::string conf =
        dir.write_file("lb.toml", security_config(b, fmt::format("api_token_file = \"{}\"", file)));
    LbRun run = run_lb({"--check", "--config", conf});
    INFO(run.out << run.err);
    CHECK(run.exit_status == 1);
    CHECK(run.err.find("api_token_file") != std::string::npos);
  }
}

TEST_CASE("admin security: [admin] allow closes other peers' connections without an answer",
          "[e2e][admin][security][allow]") {
  SECTION("127.0.0.1 outside allow = [\"10.0.0.0/8\"]") {
    Started t("allow = [\"10.0.0.0/8\"]");
    Socket s = tcp_connect("127.0.0.1", t.admin, in(seconds(5)));
    REQUIRE(s);
    // Closed by lb before it reads anything: the request never gets an answer.
    write_all(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", in(seconds(5)));
    ReadResult rr = read_until_eof(s, in(seconds(5)));
    CHECK(rr.data.empty());
    CHECK(rr.end != ReadEnd::Timeout);
    HttpResponse r = http_get(t.admin, "/metrics");
    CHECK(r.status == 0);
    // lb itself is fine.
    CHECK(t.lb->terminate() == 0);
  }
  SECTION("127.0.0.1 inside allow = [\"10.0.0.0/8\", \"127.0.0.0/8\"]") {
    Started t("allow = [\"10.0.0.0/8\", \"127.0.0.0/8\"]");
    CHECK(http_get(t.admin, "/healthz").status == 200);
    CHECK(t.lb->terminate() == 0);
  }
}

}  // namespace
}  // namespace lb::test
