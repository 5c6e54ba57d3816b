// End-to-end: the PROXY v2 header of TLS listeners, read by a real receiver:
// HAProxy 2.6 (Debian; test/run.sh installs it) with `accept-proxy`, which
// logs and answers `%[fc_pp_authority]`. The client's server name arrives as
// PP2_TYPE_AUTHORITY from passthrough and terminate listeners, and in front
// of a re-encrypted TLS session. (HAProxy 2.6 has no sample fetch for
// PP2_TYPE_SSL or PP2_TYPE_ALPN: their bytes are checked in
// tls_terminate_test.cc and the unit tests.)
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <regex>
#include <string>

#include "test/support/config_builder.h"
#include "test/support/deadline.h"
#include "test/support/lb_process.h"
#include "test/support/tls_backend.h"
#include "test/support/tls_certs.h"
#include "test/support/tls_clients.h"

namespace lb::test {

TEST_CASE("PROXY v2: HAProxy receives the server name as PP2_TYPE_AUTHORITY", "[e2e][tls][proxy][haproxy]") {
  TlsFiles files;
  CertFiles site = files.issue("site", {"www.example.com"});
  const std::string request = "GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n";
  const std::string tls_crt = files.combined(site, "site-with-key.pem");

  ConfigBuilder cfg;
  cfg.global(1, true);
  std::unique_ptr<HaproxyReceiver> haproxy;
  SECTION("passthrough: HAProxy terminates the client's own TLS") {
    haproxy = std::make_unique<HaproxyReceiver>(files.dir().path(), tls_crt);
    INFO(haproxy->check_output());
    REQUIRE(haproxy->ok());
    cfg.listener("tls", "web", "tls = \"passthrough\"\nproxy_protocol = \"v2\"")
        .pool("web")
        .backend(haproxy->address());
  }
  SECTION("terminate: plaintext to HAProxy") {
    haproxy = std::make_unique<HaproxyReceiver>(files.dir().path());
    INFO(haproxy->check_output());
    REQUIRE(haproxy->ok());
    cfg.listener("tls", "web", "tls = \"terminate\"\nproxy_protocol = \"v2\"")
        .certificate(site.cert, site.key)
        .pool("web")
        .backend(haproxy->address());
  }
  SECTION("terminate and re-encrypt: the header in the clear, then lb's TLS session") {
    haproxy = std::make_unique<HaproxyReceiver>(files.dir().path(), tls_crt);
    INFO(haproxy->check_output());
    REQUIRE(haproxy->ok());
    cfg.listener("tls", "web", "tls = \"terminate\"\nproxy_protocol = \"v2\"")
        .certificate(site.cert, site.key)
        .pool("web")
        .pool_tls(fmt::format("sni = \"$client\"\nca_file = \"{}\"", files.ca_path()))
        .backend(haproxy->address());
  }
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());
  ClientRun r = python_fetch(lb.listener_port("tls"), "www.example.com", files.ca_path(), request);
  INFO(r.out);
  CHECK(r.status == 0);
  CHECK(r.out.find("HTTP/1.1 200") != std::string::npos);
  CHECK(r.out.find("authority=www.example.com") != std::string::npos);
  auto line = haproxy->process().wait_for_line(std::regex("^PP authority="), in(seconds(10)));
  REQUIRE(line);
  CHECK(std::regex_search(*line, std::regex(R"(^PP authority=www\.example\.com client=127\.0\.0\.1:\d+$)")));
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
