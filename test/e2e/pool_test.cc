// End-to-end: backend selection as seen from outside — retries past dead
// backends, what happens when no backend can take a connection, and weighted
// round robin.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <regex>

#include <map>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

struct BackendSpec {
  std::string address;
  unsigned weight = 1;
};

// Listener "web" (retries, connect_timeout as given) in front of pool "web".
std::string pool_config(const std::vector<BackendSpec>& backends, unsigned workers, unsigned retries,
                        const std::string& health_check = "type = \"none\"",
                        const std::string& connect_timeout = "5s") {
  ConfigBuilder out;
  out.global(workers, true)
      .listener("web", "web", fmt::format("retries = {}\nconnect_timeout = \"{}\"", retries, connect_timeout))
      .pool("web", "", "selector = \"round_robin\"\n[pool.health_check]\n" + health_check);
  for (const auto& b : backends) out.backend(b.address, "", fmt::format("weight = {}", b.weight));
  return out;
}

// Connects through lb and reads a Name backend's greeting ("<name>\n").
// Returns the name, or "" if the connection ended without one.
std::string served_by(uint16_t port, Deadline deadline) {
  Socket s = tcp_connect("127.0.0.1", port, deadline);
  if (!s) return "";
  ReadResult r = read_until(s, "\n", deadline);
  if (r.end != ReadEnd::Complete) return "";
  r.data.pop_back();
  return r.data;
}

TEST_CASE("retries: every connection succeeds past a refusing backend", "[e2e][pool][retry]") {
  const std::string dead = fmt::format("127.0.0.1:{}", refused_port());
  TestBackend live(TestBackend::named("live\n"));
  REQUIRE(live.ok());
  LbProcess lb(pool_config({{dead}, {live.address()}}, 1, 2));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  REQUIRE(port != 0);

  constexpr int kConnections = 20;
  int ok = 0;
  for (int i = 0; i < kConnections; ++i) {
    std::string name = served_by(port, in(seconds(5)));
    INFO("connection " << i);
    CHECK(name == "live");
    ok += name == "live";
  }
  CHECK(ok == kConnections);
  CHECK(live.accepted() == static_cast<uint64_t>(kConnections));

  // Round robin offers the dead backend to about every other connection;
  // each such attempt is a connect failure lb retried past.
  auto metrics = fetch_metrics(lb.admin_port());
  REQUIRE(metrics);
  auto failures = metrics->value("lb_backend_connect_failures_total", {{"pool", "web"}, {"backend", dead}});
  REQUIRE(failures);
  CHECK(*failures >= 1);
  CHECK(metrics->value("lb_backend_connect_failures_total", {{"pool", "web"}, {"backend", live.address()}}) ==
        0);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("all backends refuse: the client is closed at once", "[e2e][pool][retry]") {
  const std::string dead1 = fmt::format("127.0.0.1:{}", refused_port());
  const std::string dead2 = fmt::format("127.0.0.1:{}", refused_port());
  // A long connect_timeout: the close must come from the refusals, not a timer.
  LbProcess lb(pool_config({{dead1}, {dead2}}, 1, 2, "type = \"none\"", "10s"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  REQUIRE(port != 0);

  auto before = fetch_metrics(lb.admin_port());
  REQUIRE(before);
  CHECK(before->errors().empty());
  // Both families are part of the contract and must be exported.
  CHECK(before->has_family("lb_listener_rejected_total"));
  CHECK(before->has_family("lb_backend_connect_failures_total"));
  const double rejected_before =
      before->sum("lb_listener_rejected_total", {{"listener", "web"}, {"reason", "no_backend"}}).value_or(0);
  const double failures_before =
      before->sum("lb_backend_connect_failures_total", {{"pool", "web"}}).value_or(0);

  const auto t0 = Clock::now();
  Socket client = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(client);  // the kernel completes the handshake; lb then gives up
  ReadResult r = read_until_eof(client, in(seconds(5)));
  const auto elapsed = Clock::now() - t0;
  CHECK((r.end == ReadEnd::Eof || r.end == ReadEnd::Reset));
  CHECK(r.data.empty());
  CHECK(elapsed < seconds(3));

  // Counted one way or the other: as a rejection for lack of a backend, or
  // as connect failures of the backends tried.
  double rejected = 0, failures = 0;
  const bool counted = wait_until(
      [&] {
        auto m = fetch_metrics(lb.admin_port());
        if (!m) return false;
        rejected =
            m->sum("lb_listener_rejected_total", {{"listener", "web"}, {"reason", "no_backend"}}).value_or(0);
        failures = m->sum("lb_backend_connect_failures_total", {{"pool", "web"}}).value_or(0);
        return rejected > rejected_before || failures > failures_before;
      },
      in(seconds(5)));
  INFO("rejected{no_backend} " << rejected_before << " -> " << rejected << ", connect failures "
                               << failures_before << " -> " << failures);
  CHECK(counted);

  // lb keeps serving after it: the next connection is handled the same way.
  Socket again = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(again);
  ReadEnd end = wait_closed(again, in(seconds(5)));
  CHECK((end == ReadEnd::Eof || end == ReadEnd::Reset));

  CHECK(lb.terminate() == 0);
}

TEST_CASE("all backends down by health check: rejected with reason no_backend", "[e2e][pool][health]") {
  // lb probes each backend once before serving; both refuse, so both start
  // down and pick() has nothing to offer.
  const std::string dead1 = fmt::format("127.0.0.1:{}", refused_port());
  const std::string dead2 = fmt::format("127.0.0.1:{}", refused_port());
  LbProcess lb(
      pool_config({{dead1}, {dead2}}, 1, 2, "type = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"", "10s"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  REQUIRE(port != 0);

  auto before = fetch_metrics(lb.admin_port());
  REQUIRE(before);
  CHECK(before->value("lb_backend_up", {{"pool", "web"}, {"backend", dead1}}) == 0);
  CHECK(before->value("lb_backend_up", {{"pool", "web"}, {"backend", dead2}}) == 0);
  const double rejected_before =
      before->value("lb_listener_rejected_total", {{"listener", "web"}, {"reason", "no_backend"}})
          .value_or(0);

  const auto t0 = Clock::now();
  Socket client = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(client);
  ReadEnd end = wait_closed(client, in(seconds(5)));
  CHECK((end == ReadEnd::Eof || end == ReadEnd::Reset));
  CHECK(Clock::now() - t0 < seconds(3));

  double rejected = rejected_before;
  CHECK(wait_until(
      [&] {
        auto m = fetch_metrics(lb.admin_port());
        if (!m) return false;
        rejected = m->value("lb_listener_rejected_total", {{"listener", "web"}, {"reason", "no_backend"}})
                       .value_or(0);
        return rejected == rejected_before + 1;
      },
      in(seconds(5))));
  CHECK(rejected == rejected_before + 1);
  // Said in the log, and a burst of refusals is a line or two, not one each.
  CHECK(lb.wait_for_line(std::regex("^warn connection refused: no backend available listener=web pool=web"),
                         in(seconds(5))));
  const auto burst_start = Clock::now();
  for (int i = 0; i < 50; ++i) {
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    CHECK(wait_closed(c, in(seconds(5))) != ReadEnd::Timeout);
  }
  const std::regex refused("^warn connection refused: no backend");
  size_t lines = 0;
  for (const auto& l : lb.process().lines()) lines += std::regex_search(l.text, refused) ? 1 : 0;
  // One line a second at most (the throttle's interval), however slow the
  // burst ran on this machine.
  const auto burst_s = std::chrono::duration_cast<seconds>(Clock::now() - burst_start).count();
  INFO(lines << " lines for 51 refusals in " << burst_s << " s");
  CHECK(lines >= 1);
  CHECK(lines <= static_cast<size_t>(burst_s) + 3);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("weighted round robin splits 600 connections exactly 100/200/300", "[e2e][pool][weights]") {
  // Smooth weighted round robin is exact over every cycle of sum(weights)
  // picks; with one worker the whole sequence goes through one selector.
  TestBackend a(TestBackend::named("a\n"));
  TestBackend b(TestBackend::named("b\n"));
  TestBackend c(TestBackend::named("c\n"));
  REQUIRE((a.ok() && b.ok() && c.ok()));
  LbProcess lb(pool_config({{a.address(), 1}, {b.address(), 2}, {c.address(), 3}}, 1, 2));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  REQUIRE(port != 0);

  std::map<std::string, int> served;
  for (int i = 0; i < 600; ++i) {
    std::string name = served_by(port, in(seconds(5)));
    if (name.empty()) {
      FAIL_CHECK("connection " << i << " got no greeting");
      continue;
    }
    ++served[name];
  }
  CHECK(served["a"] == 100);
  CHECK(served["b"] == 200);
  CHECK(served["c"] == 300);
  CHECK(served.size() == 3);
  CHECK(a.accepted() == 100);
  CHECK(b.accepted() == 200);
  CHECK(c.accepted() == 300);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("weighted round robin stays exact while another pool's backend flaps",
          "[e2e][pool][weights][publish]") {
  // Every drain or activate in pool "other" publishes a new backend table.
  // Pool "web" did not change, so its worker selector must keep its place in
  // the smooth round robin cycle: 1,000 connections at weights 5,3,2 are
  // exactly 100 cycles.
  TestBackend a(TestBackend::named("a\n"));
  TestBackend b(TestBackend::named("b\n"));
  TestBackend c(TestBackend::named("c\n"));
  REQUIRE((a.ok() && b.ok() && c.ok()));
  const std::string cfg =
      pool_config({{a.address(), 5}, {b.address(), 3}, {c.address(), 2}}, 1, 2) + fmt::format(R"(
[[pool]]
name = "other"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "{0}"
id = "x"
[[pool.backend]]
address = "{0}"
id = "y"
)",
                                                                                              a.address());
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  REQUIRE(port != 0);
  REQUIRE(admin != 0);

  std::map<std::string, int> served;
  int flaps = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string name = served_by(port, in(seconds(5)));
    if (name.empty()) {
      FAIL_CHECK("connection " << i << " got no greeting");
      continue;
    }
    ++served[name];
    const char* body = i % 2 == 0 ? R"({"state":"drain"})" : R"({"state":"active"})";
    flaps += http_post(admin, "/api/v1/pools/other/backends/x", body).status == 200;
  }
  INFO("a=" << served["a"] << " b=" << served["b"] << " c=" << served["c"]);
  CHECK(flaps == 1000);
  CHECK(served["a"] == 500);
  CHECK(served["b"] == 300);
  CHECK(served["c"] == 200);
  CHECK(served.size() == 3);

  CHECK(lb.terminate() == 0);
}

}  // namespace
}  // namespace lb::test
