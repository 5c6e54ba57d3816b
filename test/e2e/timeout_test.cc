// End-to-end: idle_timeout closes connections without traffic, and only those.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <thread>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

// Listener "web" with a short idle_timeout, one backend.
std::string idle_config(const std::string& backend) {
  return web_config(backend, 1, false, R"(idle_timeout = "300ms")");
}

TEST_CASE("idle_timeout closes an idle connection and spares an active one", "[e2e][timeout]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(idle_config(backend.address()));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  REQUIRE(port != 0);

  SECTION("idle: closed by lb soon after 300 ms without traffic") {
    Socket client = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(client);
    REQUIRE(exchange(client, "ping", 4, in(seconds(5))).data == "ping");
    const auto last_traffic = Clock::now();
    ReadEnd end = wait_closed(client, in(seconds(5)));
    const auto idle_for = Clock::now() - last_traffic;
    CHECK((end == ReadEnd::Eof || end == ReadEnd::Reset));
    // Not at once (it is a timeout), and not long after it.
    CHECK(idle_for >= milliseconds(250));
    CHECK(idle_for < seconds(3));
    CHECK(backend.wait_active(0, in(seconds(5))));
  }

  SECTION("active: traffic every 100 ms keeps it open past 1 s, then it idles out") {
    Socket client = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(client);
    const auto start = Clock::now();
    int round = 0;
    // The traffic pattern itself is timed: one message every 100 ms.
    for (auto next = start; Clock::now() - start < milliseconds(1200); next += milliseconds(100), ++round) {
      std::this_thread::sleep_until(next);
      const std::string msg = fmt::format("tick {}\n", round);
      ReadResult r = exchange(client, msg, msg.size(), in(seconds(2)));
      INFO("round " << round << " after "
                    << std::chrono::duration_cast<milliseconds>(Clock::now() - start).count()
                    << " ms: " << to_string(r.end));
      REQUIRE(r.data == msg);
    }
    CHECK(round >= 10);
    // Still open right now: nothing to read and no EOF.
    CHECK(wait_closed(client, Clock::now()) == ReadEnd::Timeout);
    // And once it goes quiet, the timeout applies to it as well.
    ReadEnd end = wait_closed(client, in(seconds(5)));
    CHECK((end == ReadEnd::Eof || end == ReadEnd::Reset));
  }

  CHECK(lb.terminate() == 0);
}

}  // namespace
}  // namespace lb::test
