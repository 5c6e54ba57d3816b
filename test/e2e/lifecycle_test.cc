// End-to-end: process lifecycle — start-up log contract and graceful stop.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <cerrno>
#include <csignal>
#include <regex>

#include "test/support/config_builder.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

std::string minimal_config(unsigned workers) {
  return web_config(fmt::format("127.0.0.1:{}", refused_port()), workers, true);
}

TEST_CASE("start-up logs every bind, the admin address and 'started'", "[e2e][lifecycle]") {
  LbProcess lb(minimal_config(2));
  REQUIRE(lb.wait_started());
  auto started = lb.wait_for_line(std::regex(R"(^info started\b)"), Clock::now());
  REQUIRE(started);
  CHECK(log_field(*started, "version") == "0.1.0");
  CHECK(log_field(*started, "workers") == "2");
  CHECK(lb.listener_port("web") != 0);
  CHECK(lb.admin_port() != 0);
  // The logged port is the one really bound: a connection is accepted there.
  Socket s = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
  CHECK(s);
  s.close();
  CHECK(lb.terminate() == 0);
}

TEST_CASE("SIGTERM with no connections exits 0 promptly", "[e2e][lifecycle][signal]") {
  const int sig = GENERATE(SIGTERM, SIGINT);
  INFO("signal " << sig);
  LbProcess lb(minimal_config(2));
  REQUIRE(lb.wait_started());
  REQUIRE(http_get(lb.admin_port(), "/healthz").status == 200);

  const auto t0 = Clock::now();
  REQUIRE(lb.signal(sig));
  auto status = lb.wait_exit(in(seconds(10)));
  const auto took = Clock::now() - t0;
  CHECK(status == 0);
  CHECK(took < seconds(3));
  // Listeners are gone with the process.
  int err = 0;
  Socket s = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(2)), &err);
  CHECK(!s);
  CHECK(err == ECONNREFUSED);
}

}  // namespace
}  // namespace lb::test
