// End-to-end: an upgrade in place with a tls = "terminate" listener, with
// a real TLS client (TlsClient: the system OpenSSL, in this process) whose
// connection stays open across the upgrade.
//
// lb_tls_handshakes_total is a counter: the new program goes on from the
// old one's counts (it used to start again from 0). A terminated connection
// cannot move (OpenSSL's state stays in the old process): the old program
// lingers and goes on serving it, while new connections are the new
// program's, and it leaves once the connection closes ...
//
// ... or, when the client keeps it open, once shutdown_timeout has passed:
// the old program closes it and exits by itself, and logs so.
//
// Which process serves a connection is read from the kernel: the one
// holding lb's end of it (/proc/PID/fd and /proc/net/tcp).
#include <signal.h>
#include <sys/types.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"
#include "test/support/proc_net.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_clients.h"
#include "test/support/upgrade.h"

namespace lb::test {
namespace {

std::string config(const std::string& dir, const std::string& backend, const std::string& shutdown_timeout) {
  return ConfigBuilder()
      .global(2, true, "", fmt::format("shutdown_timeout = \"{}\"", shutdown_timeout))
      .listener("tls", "p", "tls = \"terminate\"\ntls_handshake_timeout = \"60s\"")
      .certificate(dir + "/site.pem", dir + "/site.key")
      .pool("p")
      .backend(backend)
      .str();
}

// Whether process `pid` holds lb's end of the connection from the client's
// `client_port` to lb's `port`.
bool serves(pid_t pid, uint16_t port, uint16_t client_port) {
  const std::set<std::string> held = socket_inodes(pid);
  for (const ProcNetRow& r : proc_net_rows("tcp"))
    if (r.local_port == port && r.remote_port == client_port && held.count(r.inode)) return true;
  return false;
}

// One echo through `client`: "echoed" when every byte came back in order,
// else what happened (for the failed check's message).
std::string echo_through(TlsClient& client, const std::string& text) {
  ReadResult r = client.exchange(text, in(seconds(10)));
  if (r.end == ReadEnd::Complete && r.data == text) return "echoed";
  return fmt::format("\"{}\" came back as \"{}\", then {} ({})", text, r.data, to_string(r.end),
                     client.error());
}

TEST_CASE(
    "upgrade: a TLS-terminated connection stays with the old program, until it closes or "
    "shutdown_timeout passes",
    "[e2e][upgrade][tls]") {
  TempDir dir;
  REQUIRE(make_certificate(dir.path(), "site"));
  const std::string program = dir.path() + "/lb";
  REQUIRE(install_program(lb_binary(), program));
  TestBackend echo{TestBackend::echo()};
  REQUIRE(echo.ok());
  LbOptions options;
  options.binary = program;
  // Each run of the test case enters one of these: the upgrade tests' 60 s
  // and a client that closes, or 2 s and a client that keeps its connection.
  bool client_closes = false;
  std::string shutdown_timeout;
  SECTION("the client closes") {
    client_closes = true;
    shutdown_timeout = "60s";
  }
  SECTION("shutdown_timeout passes") { shutdown_timeout = "2s"; }
  LbProcess lb(config(dir.path(), echo.address(), shutdown_timeout), options);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");
  const uint16_t admin = lb.admin_port();
  const Labels failed{{"listener", "tls"}, {"result", "failed"}};
  const Labels ok{{"listener", "tls"}, {"result", "ok"}};

  // Handshakes that fail: plain text where a ClientHello belongs.
  for (int i = 0; i < 3; ++i) {
    Socket s = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(s);
    REQUIRE(write_all(s, "GET / HTTP/1.0\r\n\r\n", in(seconds(5))) > 0);
    CHECK(wait_closed(s, in(seconds(10))) != ReadEnd::Timeout);
  }
  REQUIRE(wait_until([&] { return metric(admin, "lb_tls_handshakes_total", failed) == 3; }, in(seconds(10))));

  // The lingering connection: a handshake, then bytes both ways.
  TlsClient lingering(port, "site", in(seconds(10)));
  INFO("TLS client: " << lingering.error());
  REQUIRE(lingering.ok());
  REQUIRE(echo_through(lingering, "before the upgrade") == "echoed");
  REQUIRE(wait_until([&] { return metric(admin, "lb_tls_handshakes_total", ok) == 1; }, in(seconds(10))));
  const pid_t old = lb.pid();

  REQUIRE(install_program(lb_alt_binary(), program));
  const size_t from = lb.line_count();
  REQUIRE(lb.signal(SIGUSR2));
  std::vector<std::unique_ptr<AdoptedLb>> adopted;
  REQUIRE(await_handover(lb, 2, from, adopted));
  const pid_t next = adopted.back()->pid;
  // Nothing moved: the one established connection is TLS-terminated.
  REQUIRE(lb.wait_for_line(std::regex(R"(^info upgrade moved connections count=0 )"), in(seconds(30)), from));
  // Served by the new program now: the counters did not go back.
  CHECK(status_generation(admin) == 2);
  CHECK(metric(admin, "lb_tls_handshakes_total", failed) == 3);
  CHECK(metric(admin, "lb_tls_handshakes_total", ok) == 1);

  // A new connection is the new program's (its handshake counted there).
  TlsClient fresh(port, "site", in(seconds(10)));
  INFO("new TLS client: " << fresh.error());
  REQUIRE(fresh.ok());
  CHECK(echo_through(fresh, "to the new program") == "echoed");
  CHECK(serves(next, port, fresh.local_port()));
  CHECK(!serves(old, port, fresh.local_port()));
  CHECK(wait_until([&] { return metric(admin, "lb_tls_handshakes_total", ok) == 2; }, in(seconds(10))));

  if (client_closes) {
    // The old program lingers for the terminated connection and serves it.
    CHECK(echo_through(lingering, "after the upgrade") == "echoed");
    CHECK(serves(old, port, lingering.local_port()));
    CHECK(!serves(next, port, lingering.local_port()));
    CHECK(!process_gone(old));
    // ... and leaves once it closes.
    lingering.close();
    CHECK(wait_gone(old, in(seconds(30))));
    CHECK(lb.wait_exit(in(milliseconds(200))).value_or(-1) == 0);  // its output pipes stay with the new one
  } else {
    // The client keeps its connection open and idle: the old program closes
    // it once shutdown_timeout has passed, and leaves by itself.
    CHECK(wait_gone(old, in(seconds(20))));
    CHECK(lb.wait_exit(in(milliseconds(200))).value_or(-1) == 0);
    CHECK(lb.wait_for_line(std::regex(R"(^warn shutdown timeout reached, closing connections count=1$)"),
                           in(seconds(5)), from));
    const ReadEnd end = lingering.wait_closed(in(seconds(10)));
    INFO("the lingering connection: " << to_string(end) << ", " << lingering.error());
    CHECK((end == ReadEnd::Eof || end == ReadEnd::Reset));
  }
  // The new program serves on, the connection it took and new ones.
  CHECK(echo_through(fresh, "after the old program left") == "echoed");
  TlsClient last(port, "site", in(seconds(10)));
  INFO("last TLS client: " << last.error());
  REQUIRE(last.ok());
  CHECK(echo_through(last, "to the new program, alone") == "echoed");
  CHECK(serves(next, port, last.local_port()));
  fresh.close();
  last.close();
  REQUIRE(::kill(next, SIGTERM) == 0);
  CHECK(wait_gone(next, in(kStopTimeout)));
}

}  // namespace
}  // namespace lb::test
