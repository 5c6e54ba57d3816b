// End-to-end: [pool.tls], lb speaking TLS to its backends, against real
// peers: `openssl s_server` and Python's `ssl` (certificates made by the test
// at run time). Verified chain and name; a backend that fails verification
// is a failed connect (counted, logged, the next backend serves); tls health
// probes judge with the same settings; "$client" passes the client's server
// name; a client certificate for backends that require one; backpressure,
// half-close and close_notify through both TLS legs.
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <csignal>
#include <memory>
#include <regex>
#include <string>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/deadline.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"
#include "test/support/proc_net.h"
#include "test/support/tls_backend.h"
#include "test/support/tls_certs.h"
#include "test/support/tls_clients.h"

namespace lb::test {
namespace {

const std::string kGet = "GET / HTTP/1.0\r\n\r\n";

double metric(uint16_t admin, const std::string& name, const Labels& labels) {
  auto m = fetch_metrics(admin);
  if (!m) return -1;
  return m->value(name, labels).value_or(-1);
}

double connect_failures(uint16_t admin, const std::string& pool, const std::string& backend) {
  return metric(admin, "lb_backend_connect_failures_total", {{"pool", pool}, {"backend", backend}});
}

// A plain client's request through lb, and everything until the end.
std::string fetch_plain(uint16_t port, const std::string& request) {
  Socket c = tcp_connect("127.0.0.1", port, in(seconds(10)));
  if (!c) return {};
  write_all(c, request, in(seconds(10)));
  return read_until_eof(c, in(seconds(30))).data;
}

// [pool.tls] settings that verify backend.internal against `files`' CA.
std::string verify_backend_internal(const TlsFiles& files) {
  return fmt::format("sni = \"backend.internal\"\nca_file = \"{}\"", files.ca_path());
}

// An `openssl s_server` with a certificate for backend.internal from the
// test's CA.
struct BackendInternal {
  TlsFiles files;
  CertFiles cert = files.issue("backend", {"backend.internal"});
  OpensslServer server{cert.cert, cert.key};
};

}  // namespace

TEST_CASE("reencrypt: a plain listener to openssl s_server, chain and name verified",
          "[e2e][tls][reencrypt]") {
  BackendInternal b;
  REQUIRE(b.server.ok());

  ConfigBuilder cfg;
  cfg.global(1, true)
      .listener("web", "web")
      .pool("web", "tls", "", "interval = \"300ms\"")
      .pool_tls(verify_backend_internal(b.files))
      .backend(b.server.address(), "s_server");
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();
  // The tls probe verifies as the traffic does: the backend is up.
  CHECK(metric(admin, "lb_backend_up", {{"pool", "web"}, {"backend", "s_server"}}) == 1);

  const std::string page = fetch_plain(lb.listener_port("web"), kGet);
  INFO(page);
  CHECK(page.rfind("HTTP/1.0 200 ok", 0) == 0);
  CHECK(std::regex_search(page, std::regex("New, TLSv1\\.3, Cipher is TLS_")));
  CHECK(connect_failures(admin, "web", "s_server") == 0);
  CHECK(metric(admin, "lb_backend_connections_total", {{"pool", "web"}, {"backend", "s_server"}}) == 1);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reencrypt: a reload that turns [pool.tls] on applies to a client accepted before it",
          "[e2e][tls][reencrypt][reload]") {
  BackendInternal b;
  REQUIRE(b.server.ok());
  auto config = [&](bool tls) {
    ConfigBuilder cfg;
    cfg.global(1, true)
        .listener("web", "web", "accept_proxy_protocol = true\nproxy_protocol_trusted = [\"127.0.0.1/32\"]")
        .pool("web", "none");
    if (tls) cfg.pool_tls(verify_backend_internal(b.files));
    cfg.backend(b.server.address(), "s_server");
    return cfg.str();
  };
  LbOptions options;
  options.env = {"LB_PROXY_HEADER_TIMEOUT_MS=60000"};  // the reload may be slow on a loaded machine
  LbProcess lb(config(false), options);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  // A client accepted by the first generation, still sending its PROXY
  // header: it chooses its backend only after the reload.
  const std::string header = "PROXY TCP4 127.0.0.1 127.0.0.1 40000 443\r\n";
  Socket c = tcp_connect("127.0.0.1", port, in(seconds(10)));
  REQUIRE(c);
  REQUIRE(write_all(c, header.substr(0, 10), in(seconds(5))) == 10);
  REQUIRE(lb_has_read(c, port, in(seconds(10))));
  REQUIRE(lb.write_config(config(true)));
  const size_t from = lb.line_count();
  REQUIRE(lb.signal(SIGHUP));
  REQUIRE(lb.wait_for_line(std::regex("^info reloaded generation=2"), in(seconds(30)), from));
  // The pool now wants TLS: this connection must not reach it in the clear.
  REQUIRE(write_all(c, header.substr(10) + kGet, in(seconds(5))) > 0);
  const std::string page = read_until_eof(c, in(seconds(30))).data;
  INFO(page);
  CHECK(page.rfind("HTTP/1.0 200 ok", 0) == 0);
  CHECK(std::regex_search(page, std::regex("New, TLSv1\\.3, Cipher is TLS_")));
  c.close();
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reencrypt: an unverifiable backend is a failed connect; the next one serves",
          "[e2e][tls][reencrypt]") {
  TlsFiles files, other("an unrelated CA");
  CertFiles good_cert = files.issue("good", {"backend.internal"});
  CertFiles wrong_name = files.issue("wrong", {"other.internal"});
  CertFiles bad_ca = other.issue("bad", {"backend.internal"});
  OpensslServer good(good_cert.cert, good_cert.key), named(wrong_name.cert, wrong_name.key),
      untrusted(bad_ca.cert, bad_ca.key);
  // Accepts, then never answers the ClientHello: connect_timeout ends it.
  TestBackend silent(TestBackend::read_until_eof_then_reply());
  REQUIRE((good.ok() && named.ok() && untrusted.ok() && silent.ok()));
  const std::string tls_keys = verify_backend_internal(files);
  // Pool "web" of the four (health check `health`), trusting `files`' CA.
  const auto three = [&](const std::string& health) {
    ConfigBuilder cfg;
    cfg.global(1, true)
        .listener("web", "web", "retries = 3\nconnect_timeout = \"500ms\"")
        .pool("web", health, "", health == "none" ? "" : "interval = \"300ms\"")
        .pool_tls(tls_keys)
        .backend(named.address(), "wrong-name")
        .backend(untrusted.address(), "bad-ca")
        .backend(silent.address(), "silent")
        .backend(good.address(), "good");
    return cfg;
  };

  SECTION("failover: each connection reaches the good backend, the failures are counted and logged") {
    // No active checks: the connections themselves meet the bad backends.
    LbProcess lb(three("none"));
    REQUIRE(lb.wait_started());
    const uint16_t admin = lb.admin_port();
    for (int i = 0; i < 6; ++i) {
      const std::string page = fetch_plain(lb.listener_port("web"), kGet);
      INFO(i << ": " << page);
      CHECK(page.rfind("HTTP/1.0 200 ok", 0) == 0);
    }
    CHECK(connect_failures(admin, "web", "wrong-name") >= 1);
    CHECK(connect_failures(admin, "web", "bad-ca") >= 1);
    CHECK(connect_failures(admin, "web", "silent") >= 1);
    CHECK(connect_failures(admin, "web", "good") == 0);
    CHECK(metric(admin, "lb_backend_connections_total", {{"pool", "web"}, {"backend", "good"}}) == 6);
    CHECK(lb.wait_for_line(
        std::regex(R"(^warn tls handshake with backend failed pool=web backend=(wrong-name|bad-ca) )"),
        in(seconds(5))));
    CHECK(lb.terminate() == 0);
  }

  SECTION("tls health probes use [pool.tls]: only the verifiable backend is up") {
    LbProcess lb(three("tls"));
    REQUIRE(lb.wait_started());
    const uint16_t admin = lb.admin_port();
    CHECK(metric(admin, "lb_backend_up", {{"pool", "web"}, {"backend", "good"}}) == 1);
    CHECK(metric(admin, "lb_backend_up", {{"pool", "web"}, {"backend", "bad-ca"}}) == 0);
    CHECK(metric(admin, "lb_backend_up", {{"pool", "web"}, {"backend", "wrong-name"}}) == 0);
    CHECK(metric(admin, "lb_backend_up", {{"pool", "web"}, {"backend", "silent"}}) == 0);
    for (int i = 0; i < 3; ++i)
      CHECK(fetch_plain(lb.listener_port("web"), kGet).rfind("HTTP/1.0 200 ok", 0) == 0);
    CHECK(connect_failures(admin, "web", "good") == 0);
    CHECK(lb.terminate() == 0);
  }

  SECTION("the only backend has the wrong name: the client is closed, connect_failed") {
    ConfigBuilder cfg;
    cfg.global(1, true)
        .access_log("stderr")
        .listener("web", "web", "retries = 0")
        .pool("web")
        .pool_tls(tls_keys)
        .backend(named.address(), "wrong-name");
    LbProcess lb(cfg);
    REQUIRE(lb.wait_started());
    CHECK(fetch_plain(lb.listener_port("web"), kGet).empty());
    CHECK(lb.wait_for_line(std::regex(R"(\{"listener":"web".*"result":"connect_failed")"), in(seconds(10))));
    CHECK(connect_failures(lb.admin_port(), "web", "wrong-name") == 1);
    CHECK(lb.wait_for_line(std::regex(R"(backend=wrong-name error=".*hostname mismatch)"), in(seconds(5))));
    CHECK(lb.terminate() == 0);
  }
}

TEST_CASE("reencrypt: terminate to TLS backends, \"$client\" names them, close_notify both ways",
          "[e2e][tls][reencrypt]") {
  TlsFiles files;
  CertFiles front = files.issue("front", {"*.example.com"});
  CertFiles back = files.issue("back", {"a.example.com", "b.example.com"});
  PythonTlsServer server({back.cert, back.key, "", ""});
  REQUIRE(server.ok());

  ConfigBuilder cfg;
  cfg.global(2, true)
      .access_log("stderr")
      .listener("tls", "web", "tls = \"terminate\"\nretries = 0")
      .certificate(front.cert, front.key)
      .pool("web")
      .pool_tls(fmt::format("sni = \"$client\"\nca_file = \"{}\"", files.ca_path()))
      .backend(server.address(), "py");
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");

  for (const char* name : {"a.example.com", "B.example.com"}) {
    const size_t from = server.process().line_count();
    // 300 KB each way through two TLS legs: backpressure on the way.
    ClientRun run = python_echo(port, name, files.ca_path(), 300 * 1024);
    INFO(name << ": " << run.out);
    CHECK(run.status == 0);
    // The backend saw the client's name, and our close_notify after the data.
    CHECK(server.wait_for_line(fmt::format("^CONN sni={} cert=- version=TLSv1.3$", name), in(seconds(10)),
                               from));
    CHECK(server.wait_for_line("^END close_notify bytes=307200$", in(seconds(10)), from));
  }
  // lb's certificate covers c.example.com, the backend's does not: verified
  // against the client's name, the backend is refused.
  ClientRun refused = python_echo(port, "c.example.com", files.ca_path(), 10);
  CHECK(refused.status != 0);
  CHECK(connect_failures(lb.admin_port(), "web", "py") == 1);
  auto line = lb.wait_for_line(std::regex(R"(\{"listener":"tls".*"sni":"B.example.com")"), in(seconds(10)));
  REQUIRE(line);
  CHECK(line->find(R"("bytes_to_backend":307200,"bytes_to_client":307200,"result":"ok")") !=
        std::string::npos);
  CHECK(std::regex_search(*line, std::regex(R"("ja4":"t13d\d{4}h1_[0-9a-f]{12}_[0-9a-f]{12}")")));
  CHECK(lb.wait_for_line(std::regex(R"(\{"listener":"tls".*"result":"connect_failed","sni":"c.example.com")"),
                         in(seconds(10))));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reencrypt: a client certificate for backends that require one", "[e2e][tls][reencrypt]") {
  TlsFiles files;
  CertFiles back = files.issue("back", {"127.0.0.1"});
  CertFiles client = files.issue("client", {"lb-client"});
  // Speaks first, then echoes; only clients with a certificate of the CA.
  PythonTlsServer server({back.cert, back.key, files.ca_path(), "hi\n"});
  REQUIRE(server.ok());
  // Name: the backend's IP (the default), verified as an IP subjectAltName.
  const std::string trust = fmt::format("ca_file = \"{}\"\n", files.ca_path());
  ConfigBuilder cfg;
  cfg.global(1, true)
      .listener("mtls", "mtls")
      .listener("anonymous", "anonymous", "retries = 0")
      .pool("mtls")
      .pool_tls(trust + fmt::format("cert = \"{}\"\nkey = \"{}\"", client.cert, client.key))
      .backend(server.address())
      .pool("anonymous")
      .pool_tls(trust)
      .backend(server.address());
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());

  // The backend speaks first; then a half-close: our close_notify reaches
  // it, its echo and close_notify come back.
  Socket c = tcp_connect("127.0.0.1", lb.listener_port("mtls"), in(seconds(10)));
  REQUIRE(c);
  CHECK(read_exact(c, 3, in(seconds(20))).data == "hi\n");
  write_all(c, "ping", in(seconds(10)));
  REQUIRE(shutdown_write(c));
  ReadResult rest = read_until_eof(c, in(seconds(20)));
  CHECK(rest.data == "ping");
  CHECK(rest.end == ReadEnd::Eof);
  CHECK(server.wait_for_line("^CONN sni=- cert=lb-client version=TLSv1.3$", in(seconds(10))));
  CHECK(server.wait_for_line("^END close_notify bytes=4$", in(seconds(10))));

  // Without a certificate the backend refuses (after lb's side of a TLS 1.3
  // handshake has finished): nothing of it reaches the client.
  const size_t from = server.process().line_count();
  CHECK(fetch_plain(lb.listener_port("anonymous"), "ping").empty());
  CHECK(server.wait_for_line("^FAIL .*(certificate|CERTIFICATE)", in(seconds(10)), from));
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
