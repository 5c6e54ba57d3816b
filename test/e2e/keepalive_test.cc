// End-to-end: TCP keepalive on backend sockets (docs/configuration.md): set
// once a connection has lived half of the keepalive idle time derived from
// idle_timeout, so short connections skip the four setsockopt calls, while a
// long one is probed exactly as if it had been set at connect.
#include <unistd.h>

#include <catch2/catch.hpp>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

TEST_CASE("backend keepalive: set at half its idle time, with idle_timeout's timings", "[e2e][keepalive]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  const long ticks_per_s = ::sysconf(_SC_CLK_TCK);

  SECTION("idle_timeout 10 s: probes after 1 s idle, so keepalive is on within half a second") {
    LbProcess lb(web_config(backend.address(), 1, false, R"(idle_timeout = "10s")"));
    REQUIRE(lb.wait_started());
    Socket client = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
    REQUIRE(client);
    REQUIRE(exchange(client, "ping", 4, in(seconds(5))).data == "ping");
    std::optional<TcpTimer> t;
    // The keepalive timer of lb's backend socket, due within the 1 s idle
    // time (not the system's 2 h): SO_KEEPALIVE and TCP_KEEPIDLE are set.
    CHECK(wait_until(
        [&] {
          t = tcp_timer_to(backend.port());
          return t && t->active == 2 && t->when_ticks <= ticks_per_s;
        },
        in(seconds(10))));
    INFO("timer " << (t ? t->active : -1) << " due in " << (t ? t->when_ticks : -1) << " ticks");
    // The backend answers the probes: the connection stays usable.
    CHECK(exchange(client, "pong", 4, in(seconds(5))).data == "pong");
    client.close();  // lb's shutdown would otherwise wait for it
    CHECK(lb.terminate() == 0);
  }

  SECTION("default idle_timeout (10 min, probes after 60 s): a short connection never sets it") {
    LbProcess lb(web_config(backend.address()));
    REQUIRE(lb.wait_started());
    const auto start = Clock::now();
    Socket client = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
    REQUIRE(client);
    REQUIRE(exchange(client, "ping", 4, in(seconds(5))).data == "ping");
    std::optional<TcpTimer> t = tcp_timer_to(backend.port());
    // Keepalive is due 30 s after the connect; this check runs well before.
    REQUIRE(Clock::now() - start < seconds(25));
    REQUIRE(t);
    CHECK(t->active == 0);
    client.close();
    CHECK(lb.terminate() == 0);
  }
}

}  // namespace
}  // namespace lb::test
