// What a TLS session learns for re-encryption and routing: the server name
// sent to (and verified for) a [pool.tls] backend, and the ClientHello a
// terminate listener observes for JA4 while OpenSSL consumes the bytes.
#include <arpa/inet.h>
#include <catch2/catch.hpp>

#include <memory>
#include <string>

#include "core/tls/client_context.h"
#include "core/tls/ja4.h"
#include "core/tls/passthrough.h"
#include "core/tls/settings.h"
#include "test/support/tls_hello.h"

namespace {

std::unique_ptr<lb::tls::ClientContext> context(const std::string& sni) {
  lb::tls::ClientSettings s;
  s.verify = false;
  s.server_name = sni;
  std::string error;
  auto ctx = lb::tls::ClientContext::load(s, &error);
  INFO(error);
  REQUIRE(ctx);
  return ctx;
}

lb::conf::Endpoint endpoint(const std::string& ip, const std::string& host = "") {
  lb::conf::Endpoint e;
  e.host = host;
  if (ip.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&e.addr);
    a->sin6_family = AF_INET6;
    REQUIRE(inet_pton(AF_INET6, ip.c_str(), &a->sin6_addr) == 1);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&e.addr);
    a->sin_family = AF_INET;
    REQUIRE(inet_pton(AF_INET, ip.c_str(), &a->sin_addr) == 1);
  }
  return e;
}

}  // namespace

TEST_CASE("backend server name: the pool's, the client's, the host, or the IP", "[tls][reencrypt]") {
  using lb::tls::backend_server_name;
  const auto by_ip = endpoint("10.0.0.11"), by_v6 = endpoint("::1"),
             by_host = endpoint("10.0.0.12", "b.internal");

  SECTION("default: the backend's host name, else its address") {
    auto ctx = context("");
    CHECK(backend_server_name(*ctx, by_host) == "b.internal");
    CHECK(backend_server_name(*ctx, by_ip) == "10.0.0.11");
    CHECK(backend_server_name(*ctx, by_v6) == "::1");
    CHECK(backend_server_name(*ctx, by_ip, "client.example.com") == "10.0.0.11");
  }
  SECTION("a fixed name, whoever connects") {
    auto ctx = context("api.internal");
    CHECK(backend_server_name(*ctx, by_host, "client.example.com") == "api.internal");
    CHECK(backend_server_name(*ctx, by_ip) == "api.internal");
  }
  SECTION("$client: the client's name as sent; without one, the default") {
    auto ctx = context("$client");
    CHECK(backend_server_name(*ctx, by_ip, "Www.Example.com") == "Www.Example.com");
    CHECK(backend_server_name(*ctx, by_host, "") == "b.internal");
    CHECK(backend_server_name(*ctx, by_ip) == "10.0.0.11");
  }
}

TEST_CASE("terminate: the ClientHello observed in pieces gives the passthrough JA4", "[tls][reencrypt]") {
  namespace th = lb::test::tls_hello;
  const std::string bytes = th::records(th::message(th::typical("Shop.Example.com")), 100);
  lb::tls::Passthrough whole, pieces;
  lb::tls::ClientHello parsed;
  REQUIRE(lb::tls::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &parsed).status ==
          lb::tls::Status::Complete);
  whole.learn(parsed, true);

  size_t at = 0;
  bool decided = false;
  while (at < bytes.size() && !decided) {
    decided = pieces.observe(bytes.data() + at, std::min<size_t>(7, bytes.size() - at));
    at += 7;
  }
  CHECK(decided);
  CHECK(at >= bytes.size() - 7);  // decided with the hello's last piece, not before
  CHECK(pieces.ja4 == whole.ja4);
  CHECK(pieces.ja4 == lb::tls::ja4(parsed));
  CHECK(pieces.sni == "Shop.Example.com");
  CHECK(pieces.sni_key == "shop.example.com");
  // Later bytes (the rest of the handshake) change nothing.
  CHECK(pieces.observe("\x16\x03\x03", 3));
  CHECK(pieces.ja4 == whole.ja4);

  SECTION("without a consumer for JA4 it is not computed; the rest is learnt") {
    lb::tls::Passthrough lean;
    lean.learn(parsed, false);
    CHECK(lean.ja4.empty());
    CHECK(lean.sni == "Shop.Example.com");
    CHECK(lean.sni_key == "shop.example.com");
    CHECK(lean.tls_version == whole.tls_version);
    CHECK(lean.alpn == whole.alpn);
    lb::tls::Passthrough skipped;
    skipped.skip_observe();
    CHECK(skipped.observe(bytes.data(), bytes.size()));
    CHECK(skipped.ja4.empty());
  }
  SECTION("not a hello: decided at once, nothing learnt") {
    lb::tls::Passthrough junk;
    CHECK(junk.observe("GET / HTTP/1.1\r\n", 16));
    CHECK(junk.ja4.empty());
    CHECK(junk.sni.empty());
  }
  SECTION("the handshake's accepted name replaces the routing key") {
    pieces.set_sni("Other.Example.NET.");
    CHECK(pieces.sni == "Other.Example.NET.");
    CHECK(pieces.sni_key == "other.example.net");
  }
}
