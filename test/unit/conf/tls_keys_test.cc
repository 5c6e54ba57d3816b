// The TLS keys of a valid file (test/data/conf/tls.toml) and their defaults.
#include <catch2/catch.hpp>

#include "conf/load.h"

using namespace lb::conf;
using std::chrono::seconds;

namespace {

std::string errors_text(const LoadResult& r) {
  std::string out;
  for (const auto& d : r.errors) out += d.str() + "\n";
  return out;
}

Config load(const std::string& name) {
  LoadResult r = load_file(std::string(LB_TEST_DATA_DIR) + "/conf/" + name);
  INFO(errors_text(r));
  REQUIRE(r.ok());
  return *r.config;
}

}  // namespace

TEST_CASE("tls.toml: every TLS key is read", "[conf][tls]") {
  const Config cfg = load("tls.toml");
  REQUIRE(cfg.listeners.size() == 2);

  const Listener& sni = cfg.listeners[0];
  CHECK(sni.tls == TlsMode::Passthrough);
  CHECK(sni.tls_handshake_timeout == seconds(3));
  REQUIRE(sni.routes.size() == 2);
  // Lower-cased at load: matching ignores case.
  CHECK(sni.routes[0].sni == std::vector<std::string>{"api.example.com", "*.example.net"});
  CHECK(sni.routes[0].pool == "api");
  CHECK(sni.routes[0].pos.line == 9);
  CHECK(sni.routes[1].sni == std::vector<std::string>{"static.example.com"});  // a single string
  CHECK(sni.routes[1].pool == "static");
  CHECK(sni.certificates.empty());

  const Listener& edge = cfg.listeners[1];
  CHECK(edge.tls == TlsMode::Terminate);
  CHECK(edge.tls_handshake_timeout == seconds(2));
  CHECK(edge.tls_min_version == TlsVersion::V1_3);
  CHECK(edge.tls_ciphers == "ECDHE+AESGCM");
  CHECK(edge.alpn == std::vector<std::string>{"h2", "http/1.1"});
  CHECK(edge.client_ca == "/etc/lb/tls/clients.pem");
  CHECK_FALSE(edge.session_tickets);
  REQUIRE(edge.routes.size() == 1);
  CHECK(edge.routes[0].pool == "reencrypt");
  REQUIRE(edge.certificates.size() == 2);
  CHECK(edge.certificates[0].cert == "/etc/lb/tls/rsa.pem");
  CHECK(edge.certificates[0].key == "/etc/lb/tls/rsa.key");
  CHECK(edge.certificates[1].cert == "/etc/lb/tls/ecdsa.pem");
  CHECK(edge.certificates[1].key == "/etc/lb/tls/ecdsa.key");

  const Pool* def = cfg.find_pool("default");
  REQUIRE(def != nullptr);
  CHECK(def->hash_key == HashKey::Sni);
  CHECK(std::string(to_string(def->hash_key)) == "sni");
  CHECK_FALSE(def->tls.enabled);
  // A pool reached only through a route of a tcp listener is probed with tcp.
  CHECK(cfg.find_pool("api")->health_check.type == HealthType::Tcp);

  const Pool* re = cfg.find_pool("reencrypt");
  REQUIRE(re != nullptr);
  CHECK(re->tls.enabled);
  CHECK(re->tls.sni == "$client");
  CHECK(re->tls.verify);
  CHECK(re->tls.ca_file == "/etc/lb/tls/backends-ca.pem");
  CHECK(re->tls.cert == "/etc/lb/tls/lb-client.pem");
  CHECK(re->tls.key == "/etc/lb/tls/lb-client.key");
}

TEST_CASE("TLS defaults of the spec", "[conf][tls]") {
  const Config cfg = load("minimal.toml");
  const Listener& l = cfg.listeners[0];
  CHECK(l.tls == TlsMode::Off);
  CHECK(l.tls_handshake_timeout == seconds(5));
  CHECK(l.tls_min_version == TlsVersion::V1_2);
  CHECK(l.tls_ciphers.empty());
  CHECK(l.alpn.empty());
  CHECK(l.client_ca.empty());
  CHECK(l.session_tickets);
  CHECK(l.routes.empty());
  CHECK(l.certificates.empty());
  const PoolTls& t = cfg.pools[0].tls;
  CHECK_FALSE(t.enabled);
  CHECK(t.sni.empty());
  CHECK(t.verify);
  CHECK(t.ca_file == "/etc/ssl/certs/ca-certificates.crt");
  CHECK(t.cert.empty());
  CHECK(t.key.empty());
}
