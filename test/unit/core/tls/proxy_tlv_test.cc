#include <catch2/catch.hpp>

#include <string>

#include "core/tls/proxy_tlv.h"

namespace {

std::string hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

}  // namespace

TEST_CASE("PROXY v2 TLS TLVs: known answers", "[tls][proxy]") {
  using lb::tls::TlsFacts;
  // ALPN "h2"; SSL: client = SSL, verify = 1 (no certificate), version "TLSv1.3".
  CHECK(hex(lb::tls::proxy_v2_tls_tlvs(TlsFacts{"TLSv1.3", "h2", false, false, false})) ==
        "01000268322000"
        "0f"
        "0100000001"
        "210007544c5376312e33");
  // No ALPN; a verified client certificate on this connection: CERT_CONN|CERT_SESS|SSL, verify 0.
  CHECK(hex(lb::tls::proxy_v2_tls_tlvs(TlsFacts{"TLSv1.2", "", true, true, false})) ==
        "20000f"
        "0700000000"
        "210007544c5376312e32");
  // Resumed: the certificate came with the session, not this connection.
  CHECK(hex(lb::tls::proxy_v2_tls_tlvs(TlsFacts{"TLSv1.3", "", true, true, true})).substr(6, 10) ==
        "0500000000");
  // Presented but not verified: verify stays non-zero.
  CHECK(hex(lb::tls::proxy_v2_tls_tlvs(TlsFacts{"TLSv1.3", "", true, false, false})).substr(6, 10) ==
        "0700000001");
}
