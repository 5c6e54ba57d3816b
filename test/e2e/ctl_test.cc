// End-to-end: `lb ctl` against a running lb — every subcommand, how it finds
// the admin API and its token, and its exit codes (0 ok, 1 API error, 2 bad
// command line).
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <memory>
#include <nlohmann/json.hpp>

#include "test/support/admin_config.h"
#include "test/support/backend_server.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"

namespace lb::test {
namespace {

using nlohmann::json;

struct CtlFixture {
  TempDir dir;
  TestBackend backend{TestBackend::echo()};
  std::unique_ptr<LbProcess> lb;
  uint16_t admin = 0;
  std::string admin_addr;

  explicit CtlFixture(const std::string& admin_extra = "") {
    REQUIRE(backend.ok());
    lb = std::make_unique<LbProcess>(one_backend_config(backend.address(), admin_extra, "tcp", "b1"));
    REQUIRE(lb->wait_started());
    admin = lb->admin_port();
    REQUIRE(admin != 0);
    admin_addr = fmt::format("127.0.0.1:{}", admin);
  }

  LbRun ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"ctl", "--admin", admin_addr});
    return run_lb(args, in(seconds(20)));
  }

  json backend_json(const HttpHeaders& headers = {}) {
    HttpResponse r = http_request("127.0.0.1", admin, "GET", "/api/v1/status", "", in(seconds(5)), headers);
    json j = json::parse(r.body, nullptr, false);
    if (j.is_discarded()) return json();
    return j["pools"][0]["backends"][0];
  }
};

TEST_CASE("ctl: status prints a table, --json the API's JSON, --rates per-second rates", "[e2e][ctl]") {
  CtlFixture t;
  LbRun run = t.ctl({"status"});
  INFO(run.out << run.err);
  CHECK(run.exit_status == 0);
  for (const char* s : {"LISTENER", "web", "tcp", "BACKEND", "HEALTH", "ADMIN", "WEIGHT", "ACTIVE", "b1",
                        "up", "active", "LAST CHECK"})
    CHECK(run.out.find(s) != std::string::npos);
  CHECK(run.out.find("CONN/S") == std::string::npos);

  run = t.ctl({"status", "--json"});
  CHECK(run.exit_status == 0);
  json j = json::parse(run.out, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  CHECK(j["pools"][0]["backends"][0]["id"] == "b1");
  CHECK(j["listeners"][0]["name"] == "web");

  // Two samples a second apart: the rate columns appear (options may come first).
  run = t.ctl({"--rates", "status"});
  CHECK(run.exit_status == 0);
  CHECK(run.out.find("CONN/S") != std::string::npos);
  CHECK(run.out.find("BYTES/S") != std::string::npos);
  CHECK(t.lb->terminate() == 0);
}

TEST_CASE("ctl: drain, activate and weight change the backend; errors exit 1", "[e2e][ctl]") {
  CtlFixture t;
  LbRun run = t.ctl({"drain", "web", "b1"});
  INFO(run.out << run.err);
  CHECK(run.exit_status == 0);
  CHECK(t.backend_json()["admin_state"] == "drain");

  run = t.ctl({"activate", "web", "b1"});
  CHECK(run.exit_status == 0);
  CHECK(t.backend_json()["admin_state"] == "active");

  run = t.ctl({"weight", "web", "b1", "7"});
  CHECK(run.exit_status == 0);
  CHECK(t.backend_json()["weight"] == 7);

  // The API's error, on stderr, exit 1.
  run = t.ctl({"drain", "nope", "b1"});
  CHECK(run.exit_status == 1);
  CHECK(run.err.find("no pool") != std::string::npos);
  run = t.ctl({"drain", "web", "nope"});
  CHECK(run.exit_status == 1);
  CHECK(run.err.find("404") != std::string::npos);
  CHECK(t.backend_json()["admin_state"] == "active");
  CHECK(t.lb->terminate() == 0);
}

// lb ctl upgrade: test/e2e/upgrade_test.cc (it needs lb running from a copy
// the test can replace).

TEST_CASE("ctl: a bad command line exits 2 without contacting lb", "[e2e][ctl]") {
  const std::vector<std::vector<std::string>> bad = {
      {"ctl"},
      {"ctl", "frobnicate"},
      {"ctl", "drain", "web"},
      {"ctl", "weight", "web", "b1"},
      {"ctl", "weight", "web", "b1", "abc"},
      {"ctl", "weight", "web", "b1", "1001"},
      {"ctl", "status", "extra"},
      {"ctl", "--bogus", "status"},
      {"ctl", "--admin"},
      {"ctl", "--admin", "not-an-address", "status"},
      {"ctl", "drain", "web", "b1", "--json"},
  };
  for (const auto& args : bad) {
    LbRun run = run_lb(args);
    INFO(fmt::format("{}", fmt::join(args, " ")) << "\n" << run.err);
    CHECK(run.exit_status == 2);
    CHECK_FALSE(run.err.empty());
  }
}

TEST_CASE("ctl: finds the API and its token in the -c file or in --admin / --token-file",
          "[e2e][ctl][token]") {
  TempDir dir;
  const std::string token = "ctl-token-abcdef";
  const std::string token_file = dir.write_file("token", token + "\n");
  CtlFixture t(fmt::format("api_token_file = \"{}\"", token_file));

  // The running lb's file says port 0; an operator's file names the real port.
  const std::string conf = dir.write_file(
      "lb.toml",
      fmt::format("[admin]\nlisten = \"{}\"\napi_token_file = \"{}\"\n", t.admin_addr, token_file));
  LbRun run = run_lb({"ctl", "-c", conf, "drain", "web", "b1"});
  INFO(run.out << run.err);
  CHECK(run.exit_status == 0);
  CHECK(t.backend_json({{"Authorization", "Bearer " + token}})["admin_state"] == "drain");

  run = run_lb({"ctl", "--admin", t.admin_addr, "--token-file", token_file, "activate", "web", "b1"});
  CHECK(run.exit_status == 0);
  CHECK(t.backend_json({{"Authorization", "Bearer " + token}})["admin_state"] == "active");

  // Without the token: the API's 401, exit 1.
  run = run_lb({"ctl", "--admin", t.admin_addr, "status"});
  CHECK(run.exit_status == 1);
  CHECK(run.err.find("401") != std::string::npos);

  // No [admin] listen in the file, and nothing listening: exit 1 with why.
  const std::string no_admin = dir.write_file("none.toml", "[global]\nworkers = 1\n");
  run = run_lb({"ctl", "-c", no_admin, "status"});
  CHECK(run.exit_status == 1);
  CHECK(run.err.find("[admin] listen") != std::string::npos);
  run = run_lb({"ctl", "--admin", fmt::format("127.0.0.1:{}", refused_port()), "status"});
  CHECK(run.exit_status == 1);
  CHECK(run.err.find("cannot connect") != std::string::npos);
  CHECK(t.lb->terminate() == 0);
}

}  // namespace
}  // namespace lb::test
