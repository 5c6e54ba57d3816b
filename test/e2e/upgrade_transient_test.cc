// End-to-end: connections in a transient state when lb is upgraded
// (docs/upgrade.md, "Moving connections"): one whose lb is still connecting
// to its backend, one that has sent only part of its PROXY header, one that
// has sent only part of its ClientHello. None of them may keep the old
// program alive ("nothing else lingers": only TLS-terminated connections
// may): the old program must leave while all three are still unfinished,
// and each must then complete through the new one with exactly the right
// bytes at the backend, no reset, while new connections are served
// throughout.
//
// The backend that cannot complete lb's handshake yet: a listening socket
// with a backlog of 1 whose accept queue holds two connections of the
// test's own, so the kernel drops lb's SYN (and its retransmissions) until
// the test accepts them. The PROXY header's own time limit (3 s) is raised
// through LB_PROXY_HEADER_TIMEOUT_MS, so that a slow upgrade on a loaded
// machine cannot end the half-sent header first.
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
#include "test/support/tls_hello.h"
#include "test/support/upgrade.h"

namespace lb::test {
namespace {

TEST_CASE("upgrade: connections still connecting, or reading a PROXY header or a ClientHello, move too",
          "[e2e][upgrade][transient]") {
  TempDir dir;
  const std::string program = dir.path() + "/lb";
  REQUIRE(install_program(lb_binary(), program));
  TestBackend echo{TestBackend::echo()};
  REQUIRE(echo.ok());
  Socket stalled = tcp_listen("127.0.0.1", 0, 1);
  REQUIRE(stalled);
  const uint16_t stalled_port = local_port(stalled);
  std::vector<Socket> fillers;
  for (int i = 0; i < 2; ++i) {
    fillers.push_back(tcp_connect("127.0.0.1", stalled_port, in(seconds(5))));
    REQUIRE(fillers.back());
  }

  LbOptions options;
  options.binary = program;
  options.env = {"LB_PROXY_HEADER_TIMEOUT_MS=120000"};
  const std::string cfg = upgrade_config()
                              .listener("web", "p")
                              .listener("slow", "s", "connect_timeout = \"120s\"")
                              .listener("pp", "p",
                                        "accept_proxy_protocol = true\n"
                                        "proxy_protocol_trusted = [\"127.0.0.1/32\"]\n"
                                        "proxy_protocol = \"v1\"")
                              .listener("tls", "p", "tls = \"passthrough\"\ntls_handshake_timeout = \"120s\"")
                              .pool("p")
                              .backend(echo.address())
                              .pool("s")
                              .backend(fmt::format("127.0.0.1:{}", stalled_port))
                              .str();
  LbProcess lb(cfg, options);
  REQUIRE(lb.wait_started());
  const uint16_t slow_port = lb.listener_port("slow");
  const uint16_t pp_port = lb.listener_port("pp");
  const uint16_t tls_port = lb.listener_port("tls");

  // (a) lb connects to the stalled backend: its SYN is dropped.
  Socket connecting = tcp_connect("127.0.0.1", slow_port, in(seconds(5)));
  REQUIRE(connecting);
  const std::string a_payload = "sent while lb was connecting";
  REQUIRE(write_all(connecting, a_payload, in(seconds(5))) == a_payload.size());
  const std::string syn_sent = fmt::format("-> 127.0.0.1:{} SYN_SENT", stalled_port);
  REQUIRE(wait_until([&] { return proc_describe_fds(lb.pid()).find(syn_sent) != std::string::npos; },
                     in(seconds(10))));

  // (b) part of a PROXY header, read by lb.
  const std::string header = "PROXY TCP4 192.0.2.1 198.51.100.2 4000 80\r\n";
  Socket proxied = tcp_connect("127.0.0.1", pp_port, in(seconds(5)));
  REQUIRE(proxied);
  REQUIRE(write_all(proxied, header.substr(0, 19), in(seconds(5))) == 19);
  REQUIRE(lb_has_read(proxied, pp_port, in(seconds(10))));

  // (c) part of a ClientHello, read by lb.
  const std::string hello = tls_hello::records(tls_hello::message(tls_hello::typical("moved.example")));
  const size_t hello_half = hello.size() / 2;
  Socket tls = tcp_connect("127.0.0.1", tls_port, in(seconds(5)));
  REQUIRE(tls);
  REQUIRE(write_all(tls, hello.substr(0, hello_half), in(seconds(5))) == hello_half);
  REQUIRE(lb_has_read(tls, tls_port, in(seconds(10))));

  SteadyClient steady(lb.listener_port("web"));
  REQUIRE(install_program(lb_alt_binary(), program));
  const size_t from = lb.line_count();
  REQUIRE(lb.signal(SIGUSR2));
  std::vector<std::unique_ptr<AdoptedLb>> adopted;
  REQUIRE(await_handover(lb, 2, from, adopted));
  const pid_t next = adopted.back()->pid;
  auto moved = lb.wait_for_line(std::regex(R"(^info upgrade moved connections .*)"), in(seconds(30)), from);
  REQUIRE(moved);
  INFO(*moved);
  // The old program does not wait for any of them: nothing it could finish
  // has happened yet (the backend still drops lb's SYN, both clients still
  // owe bytes).
  CHECK(wait_gone(lb.pid(), in(seconds(30))));

  // (b) The rest of the header, then data: the backend gets lb's header with
  // the addresses of the client's, then the data, and echoes both.
  const std::string b_payload = "after the PROXY header";
  REQUIRE(write_all(proxied, header.substr(19) + b_payload, in(seconds(5))) > 0);
  const std::string b_expected = header + b_payload;  // lb's v1 header names the same addresses
  ReadResult b = read_exact(proxied, b_expected.size(), in(seconds(30)));
  CHECK(to_string(b.end) == std::string("complete"));
  CHECK(b.data == b_expected);

  // (c) The rest of the hello, then data: the backend gets every byte of
  // the hello, unchanged.
  const std::string c_payload = "after the ClientHello";
  REQUIRE(write_all(tls, hello.substr(hello_half) + c_payload, in(seconds(5))) > 0);
  ReadResult c = read_exact(tls, hello.size() + c_payload.size(), in(seconds(30)));
  CHECK(to_string(c.end) == std::string("complete"));
  CHECK(c.data == hello + c_payload);

  // (a) The backend takes its queued connections: lb's SYN gets through.
  for (int i = 0; i < 2; ++i) CHECK(accept_within(stalled, in(seconds(10))));
  Socket at_backend = accept_within(stalled, in(seconds(90)));
  REQUIRE(at_backend);
  ReadResult got = read_exact(at_backend, a_payload.size(), in(seconds(30)));
  CHECK(got.data == a_payload);
  REQUIRE(write_all(at_backend, got.data, in(seconds(5))) == got.data.size());
  ReadResult a = read_exact(connecting, a_payload.size(), in(seconds(30)));
  CHECK(to_string(a.end) == std::string("complete"));
  CHECK(a.data == a_payload);
  // Nothing else arrived at the backend first or since.
  CHECK(wait_closed(at_backend, in(milliseconds(100))) == ReadEnd::Timeout);

  steady.finish();
  CHECK(steady.failed.load() == 0);
  CHECK(steady.ok.load() > 0);
  // Closed first: a graceful stop waits for open connections.
  for (Socket* s : {&connecting, &proxied, &tls, &at_backend}) s->close();
  REQUIRE(::kill(next, SIGTERM) == 0);
  CHECK(wait_gone(next, in(kStopTimeout)));
}

}  // namespace
}  // namespace lb::test
