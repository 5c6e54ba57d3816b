// End-to-end: tls = "terminate" with real TLS clients (Python's ssl, curl,
// openssl s_client) in front of plain backends: certificate by SNI, ALPN,
// echo with close_notify both ways, failed and timed-out handshakes counted
// and kept from the backend, certificate rotation on SIGHUP.
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <csignal>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/child_process.h"
#include "test/support/deadline.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_certs.h"

namespace lb::test {
namespace {

// Verifies against `ca`, sends SNI, offers ALPN http/1.1 then h2, echoes
// `size` bytes through, closes with close_notify and waits for lb's. Prints
// "version alpn keytype notAfter" on success.
const char* kPythonEcho = R"(import socket, ssl, sys
port, sni, ca, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = ssl.create_default_context(cafile=ca)
c.set_alpn_protocols(['http/1.1', 'h2'])
s = c.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=20), server_hostname=sni)
data = bytes((i * 7) % 251 for i in range(size))
s.sendall(data)
got = b''
while len(got) < size:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
assert got == data, 'echo mismatch: %d of %d bytes' % (len(got), size)
cert = s.getpeercert()
der = s.getpeercert(binary_form=True)
version, alpn = s.version(), s.selected_alpn_protocol()
s.unwrap()  # our close_notify, then lb's (after the backend closed)
print(version, alpn, cert['notAfter'].replace(' ', '_'), len(der))
)";

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
  TempDir dir;
  TestCa ca;
  std::string ca_path = dir.write_file("ca.pem", ca.cert_pem());
  std::string rsa_cert, rsa_key, ec_cert, ec_key;

  Site() {
    auto rsa = ca.issue({"rsa.example.com"}, KeyType::rsa2048);
    auto ec = ca.issue({"ec.example.com", "*.ec.example.com"}, KeyType::ecdsa_p256);
    rsa_cert = dir.write_file("rsa.pem", rsa.cert);
    rsa_key = dir.write_file("rsa.key", rsa.key);
    ec_cert = dir.write_file("ec.pem", ec.cert);
    ec_key = dir.write_file("ec.key", ec.key);
  }

  std::string config(uint16_t backend_port, const std::string& extra = "",
                     const std::string& access_log = "off") const {
    return fmt::format(R"([global]
workers = 2
access_log = "{}"

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
pool = "web"
tls = "terminate"
alpn = ["h2", "http/1.1"]
{}
[[listener.certificate]]
cert = "{}"
key = "{}"
[[listener.certificate]]
cert = "{}"
key = "{}"

[[pool]]
name = "web"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "127.0.0.1:{}"
)",
                       access_log, extra, rsa_cert, rsa_key, ec_cert, ec_key, backend_port);
  }
};

struct ClientRun {
  std::optional<int> status;
  std::string out;
};

ClientRun run(std::vector<std::string> argv) {
  ChildProcess p(std::move(argv));
  ClientRun r;
  if (!p.started()) return r;
  r.status = p.wait_exit(in(seconds(60)));
  r.out = p.output();
  return r;
}

ClientRun python_echo(uint16_t port, const std::string& sni, const std::string& ca, size_t size) {
  return run({"/usr/bin/python3", "-c", kPythonEcho, std::to_string(port), sni, ca, std::to_string(size)});
}

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
  const std::string access_log = site.dir.path() + "/access.log";
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
  ClientRun curl = run({"/usr/bin/curl", "-sS", "--max-time", "20", "--http1.1", "--cacert", site.ca_path,
                        "--resolve", fmt::format("rsa.example.com:{}:127.0.0.1", port2),
                        fmt::format("https://rsa.example.com:{}/", port2)});
  INFO(curl.out);
  CHECK(curl.status == 0);
  CHECK(curl.out.find("ok") != std::string::npos);
  ClientRun s_client =
      run({"/usr/bin/openssl", "s_client", "-connect", fmt::format("127.0.0.1:{}", port2), "-servername",
           "ec.example.com", "-CAfile", site.ca_path, "-verify_return_error", "-brief", "-tls1_2"});
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
  CHECK(text.find("\"tls_version\":\"TLSv1.3\",\"alpn\":\"h2\",\"ja4\":null}") != std::string::npos);
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
  TempDir other_dir;
  TestCa other;
  ClientRun distrust =
      python_echo(port, "rsa.example.com", other_dir.write_file("ca.pem", other.cert_pem()), 10);
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

TEST_CASE("tls terminate: PROXY v2 to the backend carries PP2_TYPE_ALPN and PP2_TYPE_SSL",
          "[e2e][tls][proxy]") {
  Site site;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(site.config(backend.port(), "proxy_protocol = \"v2\""));
  REQUIRE(lb.wait_started());
  ClientRun r = run({"/usr/bin/python3", "-c", kPythonProxyEcho, std::to_string(lb.listener_port("tls")),
                     "ec.example.com", site.ca_path});
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

  auto renewed =
      site.ca.issue({"ec.example.com", "*.ec.example.com"}, KeyType::ecdsa_p256, -3600, 40 * 86400);
  site.dir.write_file("ec.pem", renewed.cert);
  site.dir.write_file("ec.key", renewed.key);
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

}  // namespace lb::test
