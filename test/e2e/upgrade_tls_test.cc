// End-to-end: an upgrade in place with a tls = "terminate" listener.
// lb_tls_handshakes_total is a counter: the new program goes on from the
// old one's counts (it used to start again from 0). A terminated connection
// cannot move (OpenSSL's state stays in the old process): the old program
// lingers while it is open and leaves once it closes.
#include <signal.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_clients.h"
#include "test/support/upgrade.h"

namespace lb::test {
namespace {

std::string config(const std::string& dir, const std::string& backend) {
  return upgrade_config()
      .listener("tls", "p", "tls = \"terminate\"\ntls_handshake_timeout = \"60s\"")
      .certificate(dir + "/site.pem", dir + "/site.key")
      .pool("p")
      .backend(backend)
      .str();
}

TEST_CASE("upgrade: TLS handshake counters go on; a terminated connection stays with the old program",
          "[e2e][upgrade][tls]") {
  TempDir dir;
  REQUIRE(make_certificate(dir.path(), "site"));
  const std::string program = dir.path() + "/lb";
  REQUIRE(install_program(lb_binary(), program));
  TestBackend echo{TestBackend::echo()};
  REQUIRE(echo.ok());
  LbOptions options;
  options.binary = program;
  LbProcess lb(config(dir.path(), echo.address()), options);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");
  const uint16_t admin = lb.admin_port();
  const Labels failed{{"listener", "tls"}, {"result", "failed"}};

  // Handshakes that fail: plain text where a ClientHello belongs.
  for (int i = 0; i < 3; ++i) {
    Socket s = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(s);
    REQUIRE(write_all(s, "GET / HTTP/1.0\r\n\r\n", in(seconds(5))) > 0);
    CHECK(wait_closed(s, in(seconds(10))) != ReadEnd::Timeout);
  }
  Deadline d = in(seconds(10));
  while (metric(admin, "lb_tls_handshakes_total", failed) != 3 && !expired(d))
    std::this_thread::sleep_for(milliseconds(10));
  REQUIRE(metric(admin, "lb_tls_handshakes_total", failed) == 3);

  // A connection whose handshake has not finished: TLS state, it stays.
  Socket pending = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(pending);

  REQUIRE(install_program(lb_alt_binary(), program));
  const size_t from = lb.line_count();
  REQUIRE(lb.signal(SIGUSR2));
  std::vector<std::unique_ptr<AdoptedLb>> adopted;
  REQUIRE(await_handover(lb, 2, from, adopted));
  const pid_t next = adopted.back()->pid;
  REQUIRE(lb.wait_for_line(std::regex(R"(^info upgrade moved connections count=0 )"), in(seconds(30)), from));
  // Served by the new program now: the counter did not go back.
  CHECK(status_generation(admin) == 2);
  CHECK(metric(admin, "lb_tls_handshakes_total", failed) == 3);

  // The old program lingers for the terminated connection, and only for it.
  CHECK(!process_gone(lb.pid()));
  pending.close();
  CHECK(wait_gone(lb.pid(), in(seconds(30))));
  REQUIRE(::kill(next, SIGTERM) == 0);
  CHECK(wait_gone(next, in(kStopTimeout)));
}

}  // namespace
}  // namespace lb::test
