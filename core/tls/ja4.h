// JA4 TLS client fingerprint (FoxIO, technical_details/JA4.md), computed from
// a parsed ClientHello for the access log's `ja4` field, in passthrough and
// terminate mode alike.
//
//   t13d1516h2_8daaf6152771_e5627efa2ab1
//   a: transport ('t' = TLS over TCP), version of the hello (highest
//      supported_versions entry, else legacy_version), 'd' with a server_name
//      extension / 'i' without, cipher and extension counts (two digits,
//      capped at 99), first and last character of the first ALPN value;
//   b: SHA-256 of the cipher suites, 4-digit hex, sorted, comma separated,
//      truncated to 12 hex digits;
//   c: the same over the sorted extensions without server_name and ALPN,
//      then "_" and the signature algorithms in the order sent.
// GREASE values (RFC 8701) are ignored everywhere.
//
// Thread: reentrant; uses OpenSSL's EVP SHA-256 (thread-safe in OpenSSL 3).
#pragma once

#include <string>

#include "core/tls/client_hello.h"

namespace lb::tls {

enum class Ja4Form {
  Hashed,       // ja4: the fingerprint above
  Raw,          // ja4_r: the lists that are hashed, sorted, unhashed
  Original,     // ja4_o: hashed over the lists in the order sent (server_name and ALPN kept)
  RawOriginal,  // ja4_ro
};

std::string ja4(const ClientHello& hello, Ja4Form form = Ja4Form::Hashed);

}  // namespace lb::tls
