// Every probe type against real servers on 127.0.0.1.
#include <catch2/catch.hpp>

#include <poll.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "core/tls/client_context.h"
#include "health/dns.h"
#include "health/http_probe.h"
#include "health/probe.h"
#include "health/tls_probe.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_certs.h"
#include "test/unit/health/servers.h"

namespace lb::health {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using std::chrono::steady_clock;
using testing::loopback_endpoint;

struct Outcome {
  int calls = 0;
  bool pass = false;
  std::string reason;
  milliseconds elapsed{0};
};

conf::HealthCheck check_of(conf::HealthType type, milliseconds timeout = 2000ms) {
  conf::HealthCheck c;
  c.type = type;
  c.timeout = timeout;
  return c;
}

template <class Pred>
bool eventually(Pred pred, milliseconds deadline = 5000ms) {
  auto end = steady_clock::now() + deadline;
  while (!pred()) {
    if (steady_clock::now() > end) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// Runs one probe on a fresh loop until it reports, then checks that it
// reported exactly once and left no handle behind.
// `pool_tls`: the env of a pool with [pool.tls] (its context, name, verify).
Outcome run_probe(const conf::HealthCheck& check, uint16_t backend_port, const ProbeEnv* pool_tls = nullptr) {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  SslCtxPtr tls = make_probe_tls_context();
  REQUIRE(tls);
  Outcome out;
  const auto t0 = steady_clock::now();
  ProbeEnv env{&loop, tls.get()};
  if (pool_tls) {
    env.tls = pool_tls->tls;
    env.tls_name = pool_tls->tls_name;
    env.tls_verify = pool_tls->tls_verify;
  }
  auto probe = make_probe(env, check, probe_address(loopback_endpoint(backend_port), check.port),
                          [&](bool pass, std::string reason) {
                            ++out.calls;
                            out.pass = pass;
                            out.reason = std::move(reason);
                            out.elapsed = std::chrono::duration_cast<milliseconds>(steady_clock::now() - t0);
                          });
  REQUIRE(probe);
  CHECK(out.calls == 0);  // never from inside start()
  const auto deadline = t0 + check.timeout + 5s;
  while (out.calls == 0 && steady_clock::now() < deadline) uv_run(&loop, UV_RUN_ONCE);
  if (out.calls == 0) probe->cancel();
  CHECK(probe->done());
  uv_run(&loop, UV_RUN_DEFAULT);  // close callbacks; nothing may report again
  probe.reset();
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0);
  CHECK(out.calls == 1);
  INFO("reason: " << out.reason);
  return out;
}

TEST_CASE("probe address: port override and text", "[health][probe]") {
  auto e = loopback_endpoint(8080);
  auto a = probe_address(e, 0);
  CHECK(a.host == "127.0.0.1:8080");
  CHECK(format_sockaddr(reinterpret_cast<const sockaddr*>(&a.addr)) == "127.0.0.1:8080");
  auto b = probe_address(e, 9);
  CHECK(format_sockaddr(reinterpret_cast<const sockaddr*>(&b.addr)) == "127.0.0.1:9");
  CHECK(b.host == "127.0.0.1:8080");

  conf::Endpoint v6;
  sockaddr_in6 s6{};
  s6.sin6_family = AF_INET6;
  s6.sin6_addr = in6addr_loopback;
  s6.sin6_port = htons(53);
  std::memcpy(&v6.addr, &s6, sizeof s6);
  v6.addr_len = sizeof s6;
  auto c = probe_address(v6, 5353);
  CHECK(format_sockaddr(reinterpret_cast<const sockaddr*>(&c.addr)) == "[::1]:5353");
}

TEST_CASE("probe: type none makes no probe", "[health][probe]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  bool called = false;
  auto p = make_probe(ProbeEnv{&loop, nullptr}, check_of(conf::HealthType::None),
                      probe_address(loopback_endpoint(1), 0), [&](bool, std::string) { called = true; });
  CHECK_FALSE(p);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_FALSE(called);
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("tcp probe: listener passes, closed port fails", "[health][probe][tcp]") {
  testing::TcpServer server([](int fd) { close(fd); });
  auto ok = run_probe(check_of(conf::HealthType::Tcp), server.port());
  CHECK(ok.pass);
  CHECK(ok.reason == "tcp connect ok");
  CHECK(eventually([&] { return server.accepted() == 1; }));

  auto refused = run_probe(check_of(conf::HealthType::Tcp), testing::closed_port(SOCK_STREAM));
  CHECK_FALSE(refused.pass);
  CHECK(refused.reason == "connect: connection refused");
}

TEST_CASE("tcp probe: the port override is where the probe goes", "[health][probe][tcp]") {
  testing::TcpServer server([](int fd) { close(fd); });
  auto c = check_of(conf::HealthType::Tcp);
  c.port = server.port();
  CHECK(run_probe(c, testing::closed_port(SOCK_STREAM)).pass);
  c.port = testing::closed_port(SOCK_STREAM);
  CHECK_FALSE(run_probe(c, server.port()).pass);
}

TEST_CASE("http probe: request line, headers and status", "[health][probe][http]") {
  testing::HttpServer server;
  auto c = check_of(conf::HealthType::Http);
  c.http_path = "/healthz?full=1";

  auto ok = run_probe(c, server.port());
  CHECK(ok.pass);
  CHECK(ok.reason == "http status 200");
  const std::string req = server.last_request();
  CHECK(req.rfind("GET /healthz?full=1 HTTP/1.1\r\n", 0) == 0);
  CHECK(req.find("\r\nHost: 127.0.0.1:" + std::to_string(server.port()) + "\r\n") != std::string::npos);
  CHECK(req.find("\r\nConnection: close\r\n") != std::string::npos);
  CHECK(req.find("\r\nUser-Agent: lb-health\r\n") != std::string::npos);
  CHECK(req.size() >= 4);
  CHECK(req.substr(req.size() - 4) == "\r\n\r\n");

  c.http_host = "svc.example";
  CHECK(run_probe(c, server.port()).pass);
  CHECK(server.last_request().find("\r\nHost: svc.example\r\n") != std::string::npos);

  server.set_status(500);
  auto bad = run_probe(c, server.port());
  CHECK_FALSE(bad.pass);
  CHECK(bad.reason == "http status 500");
  CHECK(server.served() == std::vector<int>{200, 200, 500});
}

TEST_CASE("http probe: exact and class expectations", "[health][probe][http]") {
  testing::HttpServer server;
  auto c = check_of(conf::HealthType::Http);
  c.expect_status.class_digit = 2;  // "2xx"
  server.set_status(204);
  CHECK(run_probe(c, server.port()).pass);
  server.set_status(299);
  CHECK(run_probe(c, server.port()).pass);
  server.set_status(302);
  CHECK_FALSE(run_probe(c, server.port()).pass);

  c.expect_status = conf::ExpectStatus{};
  c.expect_status.code = 204;
  server.set_status(204);
  CHECK(run_probe(c, server.port()).pass);
  server.set_status(200);
  CHECK_FALSE(run_probe(c, server.port()).pass);
}

TEST_CASE("http probe: malformed, truncated and oversized answers fail", "[health][probe][http]") {
  testing::HttpServer server;
  auto c = check_of(conf::HealthType::Http);

  server.set_raw("SSH-2.0-OpenSSH\r\n");
  auto garbage = run_probe(c, server.port());
  CHECK_FALSE(garbage.pass);
  CHECK(garbage.reason.find("malformed status line") != std::string::npos);

  server.set_raw("HTTP/1.0 200 OK\n\n");  // bare LF is tolerated
  CHECK(run_probe(c, server.port()).pass);

  server.set_raw(std::string(40000, 'A'));
  auto big = run_probe(c, server.port());
  CHECK_FALSE(big.pass);
  CHECK(big.reason.find("16KiB") != std::string::npos);

  testing::TcpServer closer([](int fd) {
    testing::read_request_head(fd);
    close(fd);
  });
  auto closed = run_probe(c, closer.port());
  CHECK_FALSE(closed.pass);
  CHECK(closed.reason == "http: connection closed before the status line");

  auto refused = run_probe(c, testing::closed_port(SOCK_STREAM));
  CHECK_FALSE(refused.pass);
  CHECK(refused.reason == "connect: connection refused");
}

TEST_CASE("http probe: a server that never answers fails at the timeout", "[health][probe][http][timeout]") {
  testing::SilentServer server;
  auto r = run_probe(check_of(conf::HealthType::Http, 300ms), server.port());
  CHECK_FALSE(r.pass);
  CHECK(r.reason == "timeout after 300ms");
  CHECK(r.elapsed >= 290ms);
  CHECK(server.accepted() == 1);
}

TEST_CASE("http probe: a path or host that would break the request fails", "[health][probe][http]") {
  testing::HttpServer server;
  auto c = check_of(conf::HealthType::Http);
  c.http_path = "/a b";
  CHECK_FALSE(run_probe(c, server.port()).pass);
  c.http_path = "/";
  c.http_host = "evil\r\nX: y";
  CHECK_FALSE(run_probe(c, server.port()).pass);
  CHECK(server.served().empty());
}

TEST_CASE("http: status line parser", "[health][http]") {
  CHECK(parse_status_line("HTTP/1.1 200 OK") == 200);
  CHECK(parse_status_line("HTTP/1.0 503") == 503);
  CHECK(parse_status_line("HTTP/2.0 404 Not Found") == 404);
  CHECK_FALSE(parse_status_line("HTTP/1.1 2000 OK"));
  CHECK_FALSE(parse_status_line("HTTP/1.1 20 OK"));
  CHECK_FALSE(parse_status_line("HTTP/1.1 099 x"));
  CHECK_FALSE(parse_status_line("HTTPS/1.1 200 OK"));
  CHECK_FALSE(parse_status_line("HTTP/1.1  200 OK"));
  CHECK_FALSE(parse_status_line(""));
  CHECK(build_http_request("/", "h") == std::string("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                                    "User-Agent: lb-health\r\nAccept: */*\r\n\r\n"));
  CHECK_FALSE(build_http_request("nope", "h"));
  CHECK_FALSE(build_http_request("/", ""));
}

TEST_CASE("tls probe: handshake with a self-signed server passes, SNI is sent", "[health][probe][tls]") {
  testing::TlsServer server;
  auto c = check_of(conf::HealthType::Tls);
  auto plain = run_probe(c, server.port());
  CHECK(plain.pass);
  CHECK(plain.reason.rfind("tls handshake ok (TLSv1.", 0) == 0);
  CHECK(server.last_sni() == "");  // the callback ran and saw no name

  c.tls_sni = "backend.example";
  auto sni = run_probe(c, server.port());
  CHECK(sni.pass);
  CHECK(server.last_sni() == "backend.example");
  CHECK(eventually([&] { return server.handshakes() >= 1; }));
}

TEST_CASE("tls probe: [pool.tls] settings verify the backend's certificate", "[health][probe][tls]") {
  testing::TlsServer server;  // self-signed
  lb::test::TempDir dir;
  lb::test::TestCa ca;
  lb::tls::ClientSettings cs;
  cs.ca_file = dir.write_file("ca.pem", ca.cert_pem());
  std::string error;
  auto strict = lb::tls::ClientContext::load(cs, &error);
  cs.verify = false;
  auto lax = lb::tls::ClientContext::load(cs, &error);
  REQUIRE(strict);
  REQUIRE(lax);
  const std::string name = "backend.example";
  auto c = check_of(conf::HealthType::Tls);

  ProbeEnv verifying{nullptr, strict->ctx(), &name, true};
  auto refused = run_probe(c, server.port(), &verifying);
  CHECK_FALSE(refused.pass);
  CHECK(refused.reason.find("certificate verify failed") != std::string::npos);

  ProbeEnv trusting{nullptr, lax->ctx(), &name, false};
  auto passed = run_probe(c, server.port(), &trusting);
  CHECK(passed.pass);
  CHECK(server.last_sni() == name);  // the pool's name is sent when tls_sni is empty
}

TEST_CASE("tls probe: a server that does not speak TLS fails", "[health][probe][tls]") {
  testing::PlainTextServer server;
  auto r = run_probe(check_of(conf::HealthType::Tls), server.port());
  CHECK_FALSE(r.pass);
  CHECK(r.reason.rfind("tls", 0) == 0);

  testing::SilentServer silent;
  auto t = run_probe(check_of(conf::HealthType::Tls, 300ms), silent.port());
  CHECK_FALSE(t.pass);
  CHECK(t.reason == "timeout after 300ms");

  auto refused = run_probe(check_of(conf::HealthType::Tls), testing::closed_port(SOCK_STREAM));
  CHECK_FALSE(refused.pass);
  CHECK(refused.reason == "connect: connection refused");
}

TEST_CASE("dns probe: query shape and RCODE verdicts", "[health][probe][dns]") {
  testing::DnsServer server;
  auto c = check_of(conf::HealthType::Dns);
  c.dns_query = "probe.example";

  auto ok = run_probe(c, server.port());
  CHECK(ok.pass);
  CHECK(ok.reason == "dns NOERROR");
  const std::string q = server.last_query();
  auto m = dns::parse_message(reinterpret_cast<const uint8_t*>(q.data()), q.size());
  REQUIRE(m);
  CHECK_FALSE(m->header.qr);
  CHECK(m->header.rd);
  REQUIRE(m->questions.size() == 1);
  CHECK(m->questions[0].name == "probe.example");
  CHECK(m->questions[0].qtype == dns::kTypeA);
  CHECK(m->questions[0].qclass == dns::kClassIn);

  server.set_mode(testing::DnsMode::NxDomain);
  auto nx = run_probe(c, server.port());
  CHECK(nx.pass);
  CHECK(nx.reason == "dns NXDOMAIN");

  server.set_mode(testing::DnsMode::ServFail);
  auto sf = run_probe(c, server.port());
  CHECK_FALSE(sf.pass);
  CHECK(sf.reason == "dns SERVFAIL");

  server.set_mode(testing::DnsMode::WrongIdThenNoError);
  CHECK(run_probe(c, server.port()).pass);
}

TEST_CASE("dns probe: query IDs are random", "[health][probe][dns]") {
  testing::DnsServer server;
  auto c = check_of(conf::HealthType::Dns);
  std::vector<uint16_t> ids;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(run_probe(c, server.port()).pass);
    const std::string q = server.last_query();
    REQUIRE(q.size() >= 12);
    ids.push_back(static_cast<uint16_t>(static_cast<uint8_t>(q[0]) << 8 | static_cast<uint8_t>(q[1])));
  }
  // All three equal by chance: 1 in 2^32.
  CHECK_FALSE((ids[0] == ids[1] && ids[1] == ids[2]));
}

TEST_CASE("dns probe: wrong IDs and silence wait for the timeout; closed port fails at once",
          "[health][probe][dns][timeout]") {
  testing::DnsServer server;
  auto c = check_of(conf::HealthType::Dns, 300ms);
  server.set_mode(testing::DnsMode::WrongId);
  auto wrong = run_probe(c, server.port());
  CHECK_FALSE(wrong.pass);
  CHECK(wrong.reason == "timeout after 300ms");
  CHECK(wrong.elapsed >= 290ms);

  server.set_mode(testing::DnsMode::Silent);
  auto silent = run_probe(c, server.port());
  CHECK_FALSE(silent.pass);
  CHECK(silent.reason == "timeout after 300ms");

  auto closed = run_probe(check_of(conf::HealthType::Dns, 3000ms), testing::closed_port(SOCK_DGRAM));
  CHECK_FALSE(closed.pass);
  CHECK(closed.reason == "recv: connection refused");

  c.dns_query = "bad..name";
  auto invalid = run_probe(c, server.port());
  CHECK_FALSE(invalid.pass);
  CHECK(invalid.reason.find("invalid dns_query") != std::string::npos);
}

TEST_CASE("udp probe: expected substring, any reply, closed port", "[health][probe][udp]") {
  testing::UdpEchoServer server;
  auto c = check_of(conf::HealthType::Udp, 3000ms);
  c.udp_send = "ping";
  c.udp_expect = "echo:ping";
  auto ok = run_probe(c, server.port());
  CHECK(ok.pass);
  CHECK(ok.reason == "udp reply matches");

  c.udp_expect = "";
  CHECK(run_probe(c, server.port()).pass);

  c.udp_expect = "pong";
  auto bad = run_probe(c, server.port());
  CHECK_FALSE(bad.pass);
  CHECK(bad.reason == "udp reply does not contain the expected text");
  CHECK(server.received() == 3);

  auto closed = run_probe(c, testing::closed_port(SOCK_DGRAM));
  CHECK_FALSE(closed.pass);
  CHECK(closed.reason.find("connection refused") != std::string::npos);
}

// The health thread can be held up in a callback (its sink waits for the
// control plane's lock, or the scheduler sets the thread aside on a busy
// machine) past a probe's timeout while the answer arrives. libuv runs an
// iteration's expired timers before it reads the sockets, so the answer
// must still be read first: it came in time. Here the loop does not run at
// all from the moment the probe sent its question until the answer is in
// the probe's socket and the 200 ms timeout has passed: the first turn of
// the loop finds the timer expired and the answer unread. No thread and no
// timing to win: the order of events is fixed before the loop runs.
TEST_CASE("udp probe: an answer that arrived in time passes although the loop was held up past the timeout",
          "[health][probe][udp][timeout]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  const int fd = testing::bound_socket(SOCK_DGRAM, 0);
  REQUIRE(fd >= 0);
  SslCtxPtr tls = make_probe_tls_context();
  auto c = check_of(conf::HealthType::Udp, 200ms);
  c.udp_send = "ping";
  c.udp_expect = "echo:ping";
  Outcome out;
  const auto started = steady_clock::now();
  auto probe =
      make_probe(ProbeEnv{&loop, tls.get()}, c, probe_address(loopback_endpoint(testing::local_port(fd)), 0),
                 [&](bool pass, std::string reason) {
                   ++out.calls;
                   out.pass = pass;
                   out.reason = std::move(reason);
                 });
  REQUIRE(probe);
  // The backend, on this thread while the loop stands still: the question
  // (sent from start(): libuv writes a datagram at once when nothing is
  // queued), then the answer.
  pollfd p{fd, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 10000) == 1);
  char buf[512];
  sockaddr_storage from{};
  socklen_t len = sizeof from;
  const ssize_t n = ::recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
  REQUIRE(n == 4);
  const std::string answer = "echo:" + std::string(buf, static_cast<size_t>(n));
  REQUIRE(::sendto(fd, answer.data(), answer.size(), 0, reinterpret_cast<sockaddr*>(&from), len) ==
          static_cast<ssize_t>(answer.size()));
  // The loop is held up past the timeout (a condition on the clock, not a
  // fixed pause: however slow this thread was, the timeout has passed).
  while (steady_clock::now() < started + 250ms) std::this_thread::sleep_for(5ms);
  const auto deadline = steady_clock::now() + 10s;
  while (out.calls == 0 && steady_clock::now() < deadline) uv_run(&loop, UV_RUN_ONCE);
  ::close(fd);
  CHECK(out.calls == 1);
  INFO("reason: " << out.reason);
  CHECK(out.pass);
  if (out.calls == 0) probe->cancel();
  probe.reset();
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0);
}

// Cancels `probe` once `ready` holds (or at once), then checks that the
// callback never fires and the loop closes cleanly.
template <class Ready>
void check_cancel(conf::HealthCheck check, uint16_t port, Ready ready, bool destroy_instead) {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  SslCtxPtr tls = make_probe_tls_context();
  int calls = 0;
  auto probe = make_probe(ProbeEnv{&loop, tls.get()}, check, probe_address(loopback_endpoint(port), 0),
                          [&](bool, std::string) { ++calls; });
  REQUIRE(probe);
  const auto deadline = steady_clock::now() + 3s;
  while (!ready() && calls == 0 && steady_clock::now() < deadline) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(ready());
  if (destroy_instead)
    probe.reset();
  else
    probe->cancel();
  uv_run(&loop, UV_RUN_DEFAULT);  // returns only once every handle is closed
  probe.reset();
  CHECK(calls == 0);
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("probes: cancel or destroy before a result, nothing fires, nothing leaks",
          "[health][probe][cancel]") {
  auto always = [] { return true; };
  for (bool destroy : {false, true}) {
    SECTION(destroy ? "destroyed" : "cancelled") {
      testing::SilentServer s1, s2, s3;
      testing::DnsServer dns;
      dns.set_mode(testing::DnsMode::Silent);
      // While connecting.
      check_cancel(check_of(conf::HealthType::Tcp), s1.port(), always, destroy);
      // Connected, waiting for the HTTP status line / the TLS server hello.
      check_cancel(
          check_of(conf::HealthType::Http), s2.port(), [&] { return s2.accepted() >= 1; }, destroy);
      check_cancel(
          check_of(conf::HealthType::Tls), s3.port(), [&] { return s3.accepted() >= 1; }, destroy);
      // Query sent, waiting for a reply.
      auto d = check_of(conf::HealthType::Dns);
      check_cancel(d, dns.port(), always, destroy);
      auto u = check_of(conf::HealthType::Udp);
      u.udp_send = "x";
      check_cancel(u, dns.port(), always, destroy);
    }
  }
}

}  // namespace
}  // namespace lb::health
