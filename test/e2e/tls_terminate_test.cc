// End-to-end: tls = "terminate" with real TLS clients (Python's ssl, curl,
// openssl s_client) in front of plain backends: certificate by SNI, ALPN,
// echo with close_notify both ways, failed and timed-out handshakes counted
// and kept from the backend, certificate rotation on SIGHUP, routes and
// hash_key = "sni" by the server name the handshake accepted, JA4.
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <cerrno>
#include <csignal>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/child_process.h"
#include "test/support/config_builder.h"
#include "test/support/deadline.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_certs.h"
#include "test/support/tls_clients.h"

namespace lb::test {
namespace {

// Sends "ping" through a terminate listener with proxy_protocol = "v2" in
// front of an echo backend: what comes back is lb's PROXY header, then the
// ping. Prints the hex of the header's TLVs (after the IPv4 addresses).
const char* kPythonProxyEcho = R"(import socket, ssl, sys
port, sni, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = ssl.create_default_context(cafile=ca)
c.set_alpn_protocols(['http/1.1', 'h2'])
s = c.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=20), server_hostname=sni)
s.sendall(b'ping')
got = b''
def need(n):
    global got
    while len(got) < n:
        chunk = s.recv(65536)
        assert chunk, 'closed after %d bytes' % len(got)
        got += chunk
need(16)
total = 16 + (got[14] << 8 | got[15])
need(total + 4)
assert got[total:total + 4] == b'ping', got
print(got[16 + 12:total].hex())
)";

struct Site {
  TlsFiles files;
  const std::string& ca_path = files.ca_path();
  CertFiles rsa = files.issue("rsa", {"rsa.example.com"}, KeyType::rsa2048);
  CertFiles ec = files.issue("ec", {"ec.example.com", "*.ec.example.com"});

  // workers 2, admin; listener "tls" (terminate, ALPN h2 then http/1.1,
  // `extra` keys, both certificates: RSA the default) in front of pool "web"
  // of one backend, without health checks. Routes and pools may follow.
  ConfigBuilder config(uint16_t backend_port, const std::string& extra = "",
                       const std::string& access_log = "off") const {
    ConfigBuilder b;
    b.global(2, true)
        .access_log(access_log)
        .listener("tls", "web", "tls = \"terminate\"\nalpn = [\"h2\", \"http/1.1\"]\n" + extra)
        .certificate(rsa.cert, rsa.key)
        .certificate(ec.cert, ec.key)
        .pool("web")
        .backend(fmt::format("127.0.0.1:{}", backend_port));
    return b;
  }
};

double metric(uint16_t admin, const std::string& name, const Labels& labels) {
  auto m = fetch_metrics(admin);
  if (!m) return -1;
  return m->value(name, labels).value_or(-1);
}

}  // namespace

TEST_CASE("tls terminate: real clients, certificate by SNI, ALPN, echo, close_notify", "[e2e][tls]") {
  Site site;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  const std::string access_log = site.files.dir().path() + "/access.log";
  LbProcess lb(site.config(backend.port(), "", access_log));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls"), admin = lb.admin_port();

  // ECDSA by a wildcard name, 200 KB each way (backpressure on the way).
  ClientRun ec = python_echo(port, "www.ec.example.com", site.ca_path, 200 * 1024);
  INFO(ec.out);
  REQUIRE(ec.status == 0);
  CHECK(ec.out.rfind("TLSv1.3 h2 ", 0) == 0);  // the server's preference among the client's

  ClientRun rsa = python_echo(port, "rsa.example.com", site.ca_path, 1000);
  INFO(rsa.out);
  REQUIRE(rsa.status == 0);

  // curl verifies the chain and the name; openssl s_client too.
  TestBackend http(
      TestBackend::send_then_close("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"));
  REQUIRE(http.ok());
  LbProcess lb2(site.config(http.port()));
  REQUIRE(lb2.wait_started());
  const uint16_t port2 = lb2.listener_port("tls");
  ClientRun curl = run_client({"/usr/bin/curl", "-sS", "--max-time", "20", "--http1.1", "--cacert",
                               site.ca_path, "--resolve", fmt::format("rsa.example.com:{}:127.0.0.1", port2),
                               fmt::format("https://rsa.example.com:{}/", port2)});
  INFO(curl.out);
  CHECK(curl.status == 0);
  CHECK(curl.out.find("ok") != std::string::npos);
  ClientRun s_client = run_client({"/usr/bin/openssl", "s_client", "-connect",
                                   fmt::format("127.0.0.1:{}", port2), "-servername", "ec.example.com",
                                   "-CAfile", site.ca_path, "-verify_return_error", "-brief", "-tls1_2"});
  INFO(s_client.out);
  CHECK(s_client.status == 0);
  CHECK(s_client.out.find("Verification: OK") != std::string::npos);
  CHECK(s_client.out.find("Protocol version: TLSv1.2") != std::string::npos);
  CHECK(s_client.out.find("ECDSA") != std::string::npos);

  CHECK(metric(admin, "lb_tls_handshakes_total", {{"listener", "tls"}, {"result", "ok"}}) == 2);
  CHECK(metric(admin, "lb_tls_handshakes_total", {{"listener", "tls"}, {"result", "failed"}}) == 0);
  CHECK(backend.bytes_received() == 200 * 1024 + 1000);
  CHECK(lb.terminate() == 0);
  CHECK(lb2.terminate() == 0);
  // The access log names the version and the protocol of each connection.
  std::ifstream f(access_log);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  INFO(text);
  CHECK(text.find("\"bytes_to_backend\":204800,\"bytes_to_client\":204800,\"result\":\"ok\",\"sni\":\"www.ec."
                  "example.com\"") != std::string::npos);
  // JA4 of the ClientHello, as on passthrough listeners (Python's client,
  // whose first ALPN offer is http/1.1).
  CHECK(std::regex_search(
      text,
      std::regex(R"("tls_version":"TLSv1.3","alpn":"h2","ja4":"t13d\d{4}h1_[0-9a-f]{12}_[0-9a-f]{12}"\})")));
}

// After a TLS 1.3 handshake lb carries the records itself (core/tls/record_layer.h):
// a real OpenSSL client's key updates, both kinds, and large echoes.
TEST_CASE("tls terminate: a real client's key updates and large echoes after the handshake", "[e2e][tls]") {
  Site site;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(site.config(backend.port()));
  REQUIRE(lb.wait_started());
  TlsClient client(lb.listener_port("tls"), "ec.example.com", in(seconds(10)));
  INFO("TLS client: " << client.error());
  REQUIRE(client.ok());
  std::string big(256 * 1024, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 13 + i / 509);
  size_t sent = 0;
  for (int round = 0; round < 6; ++round) {
    INFO("round " << round);
    if (round > 0) REQUIRE(client.key_update(round % 2 == 1));
    ReadResult r = client.exchange(round % 3 == 2 ? big : "update " + std::to_string(round), in(seconds(20)));
    INFO(to_string(r.end) << " " << client.error());
    REQUIRE(r.end == ReadEnd::Complete);
    CHECK(r.data == (round % 3 == 2 ? big : "update " + std::to_string(round)));
    sent += r.data.size();
  }
  client.close();
  REQUIRE(wait_until([&] { return backend.bytes_received() == sent; }, in(seconds(10))));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("tls terminate: failed and late handshakes are counted, nothing reaches the backend",
          "[e2e][tls][hostile]") {
  Site site;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(site.config(backend.port(), "tls_handshake_timeout = \"500ms\""));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls"), admin = lb.admin_port();

  // Plain HTTP on the TLS port.
  Socket plain = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(plain);
  write_all(plain, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", in(seconds(5)));
  CHECK(wait_closed(plain, in(seconds(10))) != ReadEnd::Timeout);

  // A client that stops mid-handshake (nothing at all here).
  Socket silent = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(silent);
  CHECK(wait_closed(silent, in(seconds(10))) != ReadEnd::Timeout);

  // A client that does not trust lb's certificate (another CA) fails too.
  TlsFiles other("another CA");
  ClientRun distrust = python_echo(port, "rsa.example.com", other.ca_path(), 10);
  CHECK(distrust.status != 0);

  CHECK(wait_until(
      [&] {
        return metric(admin, "lb_tls_handshakes_total", {{"listener", "tls"}, {"result", "failed"}}) == 2 &&
               metric(admin, "lb_tls_handshakes_total", {{"listener", "tls"}, {"result", "timeout"}}) == 1;
      },
      in(seconds(10))));
  CHECK(metric(admin, "lb_listener_rejected_total", {{"listener", "tls"}, {"reason", "tls"}}) == 3);
  CHECK(backend.accepted() == 0);

  // The worker is unaffected: a good client still gets through.
  ClientRun ok = python_echo(port, "ec.example.com", site.ca_path, 100);
  INFO(ok.out);
  CHECK(ok.status == 0);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("tls terminate: connections that cannot get a TLS session are refused with throttled warnings",
          "[e2e][tls][hostile]") {
  // Worker-thread warnings are rate-limited per message kind: a flood must
  // not become a log flood that stalls the worker. A shim makes SSL_new
  // fail (as when memory runs out) for every connection.
  Site site;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbOptions options;
  options.env = preload_env(LB_SSL_NEW_FAILS_SHIM);
  LbProcess lb(site.config(backend.port()).str(), options);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");
  constexpr int kClients = 200;
  int closed = 0;
  for (int i = 0; i < kClients; ++i) {
    int err = 0;
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)), &err);
    // lb resets the connection at once: the reset can beat the connect's
    // own completion.
    if (!c && err == ECONNRESET) {
      ++closed;
      continue;
    }
    INFO("connection " << i << " errno " << err);
    REQUIRE(c);
    if (wait_closed(c, in(seconds(10))) != ReadEnd::Timeout) ++closed;
  }
  CHECK(closed == kClients);
  CHECK(backend.accepted() == 0);
  // Every connection logged would be 200 lines; one a second per worker
  // kind is what the throttle lets through (the loop above takes well under
  // a minute on any machine this runs on).
  CHECK(lb.wait_for_line(std::regex("^warn tls session listener=tls "), in(seconds(10))));
  const std::string out = lb.output();
  const std::regex line("(^|\n)warn tls session listener=tls ");
  const auto lines =
      std::distance(std::sregex_iterator(out.begin(), out.end(), line), std::sregex_iterator());
  INFO(lines << " warning lines for " << kClients << " connections");
  CHECK(lines < kClients / 4);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("tls terminate: PROXY v2 to the backend carries PP2_TYPE_ALPN and PP2_TYPE_SSL",
          "[e2e][tls][proxy]") {
  Site site;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(site.config(backend.port(), "proxy_protocol = \"v2\""));
  REQUIRE(lb.wait_started());
  ClientRun r = run_client({"/usr/bin/python3", "-c", kPythonProxyEcho,
                            std::to_string(lb.listener_port("tls")), "ec.example.com", site.ca_path});
  INFO(r.out);
  REQUIRE(r.status == 0);
  // ALPN "h2"; SSL: client = SSL, verify = 1 (no client certificate), version TLSv1.3.
  CHECK(r.out.find("01000268322000"
                   "0f0100000001210007544c5376312e33") != std::string::npos);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("tls terminate: SIGHUP rotates certificates for new handshakes", "[e2e][tls][reload]") {
  Site site;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(site.config(backend.port()));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");
  ClientRun before = python_echo(port, "ec.example.com", site.ca_path, 10);
  INFO(before.out);
  REQUIRE(before.status == 0);

  site.files.issue("ec", {"ec.example.com", "*.ec.example.com"}, KeyType::ecdsa_p256, -3600, 40 * 86400);
  for (int generation = 2; generation <= 4; ++generation) {
    size_t from = lb.line_count();
    REQUIRE(lb.signal(SIGHUP));
    REQUIRE(lb.wait_for_line(std::regex(fmt::format(R"(^info reloaded generation={}\b)", generation)),
                             in(seconds(10)), from));
    ClientRun after = python_echo(port, "ec.example.com", site.ca_path, 10);
    INFO(after.out);
    REQUIRE(after.status == 0);
    // Another notAfter: the renewed certificate is served.
    CHECK(after.out.substr(0, after.out.rfind(' ')) != before.out.substr(0, before.out.rfind(' ')));
  }
  CHECK(lb.terminate() == 0);
}

TEST_CASE("tls terminate: routes by the accepted server name, hash_key = \"sni\"", "[e2e][tls][routes]") {
  Site site;
  const auto named = [](const std::string& name) {
    return std::make_unique<TestBackend>(TestBackend::send_then_close(name));
  };
  auto def = named("default"), api = named("api"), net = named("net"), shadowed = named("shadowed");
  REQUIRE((def->ok() && api->ok() && net->ok() && shadowed->ok()));
  std::vector<std::unique_ptr<TestBackend>> hashed;
  for (int i = 0; i < 4; ++i) {
    hashed.push_back(named(fmt::format("h{}", i)));
    REQUIRE(hashed.back()->ok());
  }
  // The clients verify: one certificate names everything they ask for.
  CertFiles names = site.files.issue(
      "names", {"api.example.com", "a.example.net", "a.b.example.net", "example.net", "*.example.org"});
  ConfigBuilder cfg = site.config(def->port(), "", "stderr");
  cfg.certificate(names.cert, names.key)
      .route({"api.example.com"}, "api")
      .route({"*.example.net"}, "net")
      .route({"a.example.net"}, "shadowed")  // after *.example.net: never reached
      .route({"*.example.org"}, "hashed")
      .pool("api")
      .backend(api->address())
      .pool("net")
      .backend(net->address())
      .pool("shadowed")
      .backend(shadowed->address())
      .pool("hashed", "none", "selector = \"maglev\"\nhash_key = \"sni\"");
  for (const auto& b : hashed) cfg.backend(b->address());
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");

  struct Case {
    std::string sni, backend;
  };
  const Case cases[] = {
      {"api.example.com", "api"},     {"API.Example.COM", "api"}, {"a.example.net", "net"},
      {"a.b.example.net", "default"}, {"example.net", "default"}, {"rsa.example.com", "default"},
  };
  for (const auto& c : cases) {
    ClientRun r = python_fetch(port, c.sni, site.ca_path);
    INFO(c.sni << ": " << r.out);
    CHECK(r.status == 0);
    CHECK(r.out == c.backend + "\n");
  }
  // The access log names the server name as sent.
  CHECK(lb.wait_for_line(std::regex(R"(\{"listener":"tls".*"sni":"API.Example.COM")"), in(seconds(10))));

  // hash_key = "sni": a name stays on one backend (from one client address
  // a source hash would pick one backend for all); names spread.
  std::set<std::string> seen;
  for (int n = 0; n < 8; ++n) {
    const std::string name = fmt::format("host{}.example.org", n);
    std::string first;
    for (int i = 0; i < 2; ++i) {
      ClientRun r = python_fetch(port, i == 0 ? name : fmt::format("HOST{}.example.ORG", n), site.ca_path);
      INFO(name << ": " << r.out);
      REQUIRE(r.status == 0);
      if (first.empty()) first = r.out;
      CHECK(r.out == first);
    }
    seen.insert(first);
  }
  CHECK(seen.size() > 1);
  CHECK(shadowed->accepted() == 0);
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
