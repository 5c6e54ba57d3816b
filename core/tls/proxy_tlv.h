// PROXY protocol v2 TLVs that describe a terminated TLS connection
// (haproxy's proxy-protocol.txt §2.2.5-2.2.6): PP2_TYPE_ALPN, and
// PP2_TYPE_SSL with its PP2_SUBTYPE_SSL_VERSION sub-TLV.
//
// Thread rules: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lb::tls {

inline constexpr uint8_t kPp2TypeAlpn = 0x01;
inline constexpr uint8_t kPp2TypeSsl = 0x20;
inline constexpr uint8_t kPp2SubtypeSslVersion = 0x21;
inline constexpr uint8_t kPp2ClientSsl = 0x01;
inline constexpr uint8_t kPp2ClientCertConn = 0x02;
inline constexpr uint8_t kPp2ClientCertSess = 0x04;

struct TlsFacts {
  std::string_view version;     // "TLSv1.3"
  std::string_view alpn;        // empty: none negotiated (no ALPN TLV)
  bool cert_presented = false;  // the client sent a certificate in this TLS session
  bool cert_verified = false;   // ... and it verified against client_ca
  bool resumed = false;         // the session was resumed (the certificate came earlier)
};

// The TLV bytes, to be appended after the address block of a v2 header
// (whose length field then grows by their size).
std::string proxy_v2_tls_tlvs(const TlsFacts& facts);

}  // namespace lb::tls
