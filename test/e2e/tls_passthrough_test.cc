// End-to-end: `tls = "passthrough"` listeners. Real openssl s_client clients
// through lb to real openssl s_server backends (certificates made by the test
// at run time): the pool is chosen by the ClientHello's server name and every
// byte reaches the backend untouched (the handshake with the backend's own
// certificate completes). Hand-made hellos for what real clients never send:
// one byte per segment, many records, garbage, plain HTTP, a client that
// stops mid-hello, too large: each refused is closed, counted
// (lb_listener_rejected_total{reason="tls"}) and never reaches a backend, and
// the worker serves the next client as before.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <catch2/catch.hpp>

#include <functional>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_clients.h"
#include "test/support/tls_hello.h"

namespace lb::test {
namespace {

namespace th = tls_hello;

// `workers` (admin on), listener "tls" (passthrough, `extra` keys) in front
// of pool "web" of `backends`, without health checks; `pool_extra` keys.
ConfigBuilder passthrough_config(const std::vector<std::string>& backends, const std::string& extra = "",
                                 const std::string& pool_extra = "", unsigned workers = 1) {
  ConfigBuilder b;
  b.global(workers, true)
      .listener("tls", "web", "tls = \"passthrough\"\n" + extra)
      .pool("web", "none", pool_extra);
  for (const auto& address : backends) b.backend(address);
  return b;
}

std::optional<double> rejected_tls(uint16_t admin, const std::string& listener) {
  auto m = fetch_metrics(admin);
  if (!m) return std::nullopt;
  return m->value("lb_listener_rejected_total", {{"listener", listener}, {"reason", "tls"}});
}

// Sends `bytes` (one write each of `chunk` bytes, TCP_NODELAY: one segment
// each) and returns what the backend sent back before it closed or
// `expect` bytes arrived.
ReadResult send_hello(uint16_t port, const std::string& bytes, size_t chunk, size_t expect,
                      const std::string& source = "") {
  Socket c = source.empty() ? tcp_connect("127.0.0.1", port, in(seconds(5)))
                            : tcp_connect_from(source, "127.0.0.1", port, in(seconds(5)));
  if (!c) return {};
  int one = 1;
  ::setsockopt(c.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  for (size_t at = 0; at < bytes.size(); at += chunk) {
    if (write_all(c, std::string_view(bytes).substr(at, chunk), in(seconds(5))) == 0) break;
  }
  return read_exact(c, expect, in(seconds(10)));
}

std::string hello_bytes(const std::string& sni, size_t fragment = 16384) {
  return th::records(th::message(th::typical(sni)), fragment);
}

}  // namespace

TEST_CASE("passthrough: real TLS clients reach the backend their server name routes to",
          "[tls][passthrough]") {
  TempDir certs;
  for (const char* n : {"api-backend", "net-backend", "default-backend"})
    REQUIRE(make_certificate(certs.path(), n));
  const auto server = [&](const std::string& name) {
    return std::make_unique<OpensslServer>(certs.path() + "/" + name + ".pem",
                                           certs.path() + "/" + name + ".key");
  };
  auto api = server("api-backend"), net = server("net-backend"), def = server("default-backend");
  REQUIRE((api->ok() && net->ok() && def->ok()));

  ConfigBuilder cfg;
  cfg.global(1, true)
      .access_log("stderr")
      .listener("sni", "default", "tls = \"passthrough\"")
      .route({"api.example.com"}, "api")
      .route({"*.example.net"}, "net")
      .pool("default")
      .backend(def->address())
      .pool("api")
      .backend(api->address())
      .pool("net")
      .backend(net->address());
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("sni");

  struct Case {
    std::string sni;
    std::string backend;
  };
  const Case cases[] = {
      {"api.example.com", "api-backend"},
      {"API.Example.COM", "api-backend"},
      {"a.example.net", "net-backend"},
      {"a.b.example.net", "default-backend"},
      {"example.net", "default-backend"},
      {"other.example.org", "default-backend"},
      {"", "default-backend"},
  };
  for (const auto& c : cases) {
    INFO("sni \"" << c.sni << "\"");
    const std::string out = run_openssl_client(port, c.sni, in(seconds(30)));
    // The backend's own certificate: the handshake went through lb untouched.
    CHECK(std::regex_search(out, std::regex("subject=CN ?= ?" + c.backend)));
    CHECK(out.find("Verify return code") != std::string::npos);
  }

  // The access log: the client's server name, offered version and ALPN, JA4.
  auto line = lb.wait_for_line(std::regex(R"(\{"listener":"sni".*"sni":"API.Example.COM")"), in(seconds(10)));
  REQUIRE(line);
  CHECK(line->find(R"("tls_version":"1.3")") != std::string::npos);
  CHECK(line->find(R"("alpn":"h2")") != std::string::npos);
  CHECK(std::regex_search(*line, std::regex(R"("ja4":"t13d\d{4}h2_[0-9a-f]{12}_[0-9a-f]{12}")")));
  CHECK(line->find(R"("result":"ok")") != std::string::npos);
  auto none =
      lb.wait_for_line(std::regex(R"(\{"listener":"sni".*"sni":null,"tls_version":"1.3")"), in(seconds(10)));
  REQUIRE(none);
  CHECK(std::regex_search(*none, std::regex(R"("ja4":"t13i)")));
  CHECK(rejected_tls(lb.admin_port(), "sni") == 0.0);
}

TEST_CASE("passthrough: fragmented and bad hellos", "[tls][passthrough][hostile]") {
  TestBackend backend(TestBackend::named("backend-1"));
  REQUIRE(backend.ok());
  LbProcess lb(passthrough_config({backend.address()}, "tls_handshake_timeout = \"700ms\""));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");
  const std::string greeting = "backend-1";

  SECTION("valid hellos however they are cut reach the backend") {
    // One byte per TCP segment; one TLS record per byte; two records.
    CHECK(send_hello(port, hello_bytes("a.example"), 1, greeting.size()).data == greeting);
    CHECK(send_hello(port, hello_bytes("a.example", 1), 7, greeting.size()).data == greeting);
    const std::string whole = hello_bytes("a.example");
    CHECK(send_hello(port, hello_bytes("a.example", whole.size() / 2), whole.size(), greeting.size()).data ==
          greeting);
    CHECK(backend.wait_accepted(3, in(seconds(5))));
    // Every byte reached the backend, in order (it counts what it received).
    const uint64_t sent = hello_bytes("a.example").size() + hello_bytes("a.example", 1).size() +
                          hello_bytes("a.example", whole.size() / 2).size();
    CHECK(backend.wait_bytes_received(sent, in(seconds(5))));
    CHECK(rejected_tls(lb.admin_port(), "tls") == 0.0);
  }

  SECTION("garbage, plain HTTP, a stalled client and an oversized hello are closed and counted") {
    const auto closed_unanswered = [&](const std::string& bytes, size_t chunk) {
      ReadResult r = send_hello(port, bytes, chunk, 1);
      return r.data.empty() && r.end != ReadEnd::Timeout;
    };
    // A handshake record whose message type is not ClientHello ('g').
    const std::string not_hello = std::string("\x16\x03\x01\x00\x05", 5) + "garbage-after-a-record";
    CHECK(closed_unanswered(not_hello, not_hello.size()));
    CHECK(closed_unanswered("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", 64));
    CHECK(closed_unanswered(random_bytes(300, 7), 300));
    // Stops after half its hello: closed by tls_handshake_timeout.
    const std::string half = hello_bytes("slow.example").substr(0, 40);
    CHECK(closed_unanswered(half, half.size()));
    // A declared length past 16 KiB.
    th::Hello big = th::typical("big.example");
    big.extensions.push_back({0xfe99, std::string(17000, 'p')});
    CHECK(closed_unanswered(th::records(th::message(big), 16000), 4096));

    CHECK(wait_until([&] { return rejected_tls(lb.admin_port(), "tls") == 5.0; }, in(seconds(10))));
    CHECK(backend.accepted() == 0);  // nothing of them reached a backend
    // The worker is unaffected: the next client is served.
    CHECK(send_hello(port, hello_bytes("ok.example"), 4096, greeting.size()).data == greeting);
  }
}

// The client is read on after its hello while lb connects to the backend
// (no pause in between): bytes that follow the hello at once, and the
// client's FIN, reach the backend after it, in order, whenever they arrive.
TEST_CASE("passthrough: bytes and a half-close right behind the hello reach the backend in order",
          "[tls][passthrough]") {
  TestBackend backend(TestBackend::read_until_eof_then_reply([](const std::string& got) {
    return fmt::format("{}:{}", got.size(), std::hash<std::string>{}(got));
  }));
  REQUIRE(backend.ok());
  LbProcess lb(passthrough_config({backend.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");

  for (size_t tail : {size_t{1}, size_t{300}, size_t{200000}}) {
    INFO("bytes after the hello: " << tail);
    const std::string hello = hello_bytes("a.example");
    const std::string after = random_bytes(tail, static_cast<unsigned>(tail));
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    int one = 1;
    ::setsockopt(c.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // The hello alone first, then the rest and the FIN as soon as possible.
    REQUIRE(write_all(c, hello, in(seconds(5))) == hello.size());
    REQUIRE(write_all(c, after, in(seconds(10))) == after.size());
    REQUIRE(shutdown_write(c));
    const std::string all = hello + after;
    ReadResult r = read_until_eof(c, in(seconds(10)));
    CHECK(r.data == fmt::format("{}:{}", all.size(), std::hash<std::string>{}(all)));
  }
  CHECK(rejected_tls(lb.admin_port(), "tls") == 0.0);
}

TEST_CASE("passthrough: hash_key = \"sni\" places a name on one backend whoever asks", "[tls][passthrough]") {
  std::vector<std::unique_ptr<TestBackend>> backends;
  std::vector<std::string> addresses;
  for (int i = 0; i < 4; ++i) {
    backends.push_back(std::make_unique<TestBackend>(TestBackend::named(fmt::format("b{}", i))));
    REQUIRE(backends.back()->ok());
    addresses.push_back(backends.back()->address());
  }
  LbProcess lb(passthrough_config(addresses, "", "selector = \"maglev\"\nhash_key = \"sni\"", 2));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");

  std::set<std::string> seen;
  for (int n = 0; n < 12; ++n) {
    const std::string name = fmt::format("host{}.example.com", n);
    std::string first;
    for (const char* source : {"127.0.0.2", "127.0.0.3", "127.0.0.4"}) {
      // Upper case from one client: the same name.
      const std::string asked = source[8] == '3' ? fmt::format("HOST{}.EXAMPLE.COM", n) : name;
      const std::string got = send_hello(port, hello_bytes(asked), 4096, 2, source).data;
      REQUIRE(got.size() == 2);
      if (first.empty()) first = got;
      CHECK(got == first);
    }
    seen.insert(first);
  }
  CHECK(seen.size() > 1);  // names spread over the pool
  // Without a server name: by source address (the same source, the same backend).
  const std::string a = send_hello(port, hello_bytes(""), 4096, 2, "127.0.0.5").data;
  CHECK(a.size() == 2);
  for (int i = 0; i < 3; ++i) CHECK(send_hello(port, hello_bytes(""), 4096, 2, "127.0.0.5").data == a);
}

TEST_CASE("passthrough: PROXY v2 to the backend carries the server name (PP2_TYPE_AUTHORITY)",
          "[tls][passthrough]") {
  TestBackend echo(TestBackend::echo());
  REQUIRE(echo.ok());
  LbProcess lb(passthrough_config({echo.address()}, "proxy_protocol = \"v2\""));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("tls");

  const std::string sni = "Named.Example.org";
  const std::string hello = hello_bytes(sni);
  const size_t header = 16 + 12 + 3 + sni.size();  // fixed part, IPv4 block, one TLV
  const ReadResult r = send_hello(port, hello, hello.size(), header + hello.size());
  REQUIRE(r.data.size() == header + hello.size());
  const std::string& got = r.data;
  CHECK(got.substr(0, 12) == std::string("\r\n\r\n\0\r\nQUIT\n", 12));
  CHECK(static_cast<uint8_t>(got[12]) == 0x21);  // v2, PROXY
  CHECK(static_cast<uint8_t>(got[13]) == 0x11);  // TCP over IPv4
  CHECK((static_cast<uint8_t>(got[14]) << 8 | static_cast<uint8_t>(got[15])) ==
        static_cast<int>(12 + 3 + sni.size()));
  CHECK(static_cast<uint8_t>(got[28]) == 0x02);  // PP2_TYPE_AUTHORITY
  CHECK((static_cast<uint8_t>(got[29]) << 8 | static_cast<uint8_t>(got[30])) == static_cast<int>(sni.size()));
  CHECK(got.substr(31, sni.size()) == sni);
  CHECK(got.substr(header) == hello);  // then the hello, untouched
}

}  // namespace lb::test
