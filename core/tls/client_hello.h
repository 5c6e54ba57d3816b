// TLS ClientHello reader (RFC 8446 §4.1.2 and §5.1, RFC 5246 §7.4.1.2).
//
// On a `tls = "passthrough"` listener lb must learn the server name (SNI)
// before it chooses a pool, without consuming or answering anything: the
// backend performs the handshake. OpenSSL cannot parse a ClientHello it will
// not answer, so this is a small hand-written reader.
//
// Like the PROXY codec (core/proxy_protocol.h) it is pure: no I/O, no state
// between calls. The session keeps every byte received so far (it peeks, so
// they stay in the socket anyway) and calls parse() on the whole prefix after
// each read; a hello fragmented over any number of TCP segments and TLS
// records needs no resumable state machine.
//
// What is accepted: one or more handshake records (content type 22, record
// version 3.x, 1..2^14 bytes each, none empty) whose concatenated payload
// begins with a ClientHello message; the message must lie within the first
// kMaxClientHello bytes of the connection. Everything after the message's
// last byte is never looked at (TLS 1.3 early data may follow).
//
// Hostile input: parse() never reads past `len`, checks every length against
// what contains it, and decides Invalid as early as the bytes allow (first
// byte not 22, a bad record header, a handshake type other than ClientHello,
// a declared length that cannot fit), so a client cannot hold a session open
// by trickling bytes already known to be bad. Once a prefix is Invalid or
// Complete, every longer buffer starting with it gives the same answer.
// The body itself (lists, extensions) is judged once the message is whole;
// on Complete it is well formed down to the extensions lb reads.
//
// Thread: every function is reentrant and may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lb::tls {

// Most bytes lb reads from a client before it must have a whole ClientHello
// (record headers included). Past it: Invalid ("too large").
inline constexpr size_t kMaxClientHello = 16384;

enum class Status { NeedMore, Complete, Invalid };

// Extension code points lb interprets (IANA "TLS ExtensionType Values").
inline constexpr uint16_t kExtServerName = 0x0000;
inline constexpr uint16_t kExtSupportedGroups = 0x000a;
inline constexpr uint16_t kExtEcPointFormats = 0x000b;
inline constexpr uint16_t kExtSignatureAlgorithms = 0x000d;
inline constexpr uint16_t kExtAlpn = 0x0010;
inline constexpr uint16_t kExtSupportedVersions = 0x002b;

// RFC 8701 GREASE values (0x?a?a with both bytes equal): clients send them so
// servers keep tolerating unknown values; fingerprints ignore them.
constexpr bool is_grease(uint16_t v) { return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff); }

struct ClientHello {
  uint16_t record_version = 0;  // of the first record (often 0x0301 whatever is offered)
  uint16_t legacy_version = 0;  // ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3 clients)
  // supported_versions (0x002b), in the client's order, GREASE included;
  // empty when the extension is absent.
  std::vector<uint16_t> supported_versions;
  std::vector<uint16_t> cipher_suites;       // in order, GREASE and SCSVs included
  std::vector<uint8_t> compression_methods;  // in order
  std::vector<uint16_t> extensions;          // extension types in the order sent, GREASE included
  // server_name (0x0000): the first host_name entry, as sent (case kept).
  bool has_sni = false;
  std::string sni;
  // application_layer_protocol_negotiation (0x0010), in order; each non-empty.
  bool has_alpn = false;
  std::vector<std::string> alpn;
  std::vector<uint16_t> signature_algorithms;  // 0x000d, in order
  std::vector<uint16_t> supported_groups;      // 0x000a, in order
  std::vector<uint8_t> ec_point_formats;       // 0x000b, in order
  size_t session_id_len = 0;

  // Highest non-GREASE version offered: from supported_versions when
  // present, else legacy_version. 0x0304 = TLS 1.3.
  uint16_t max_version() const;
};

struct ParseResult {
  Status status = Status::NeedMore;
  // Complete: bytes from the start of the input up to and including the
  // hello's last byte (its record may go on; a passthrough session never
  // consumes anything, so this is for tests and logs).
  size_t consumed = 0;
  const char* error = nullptr;  // static string when Invalid, e.g. "not a TLS handshake", "too large"
};

// Stateless: pass everything received so far, from the connection's first
// byte. On Complete, *out holds the parsed hello (it is left unspecified
// otherwise; nothing is allocated before the message is whole, so calling
// this after every read costs a walk over the record headers).
ParseResult parse(const uint8_t* data, size_t len, ClientHello* out);

// "1.0" | "1.1" | "1.2" | "1.3" for 0x0301..0x0304, "3.0" for SSL 3.0,
// nullptr for anything else (the access log's tls_version).
const char* version_name(uint16_t version);

// ASCII-case-insensitive match of a server name against a route pattern:
// an exact name, or "*." + suffix matching exactly one more label
// ("*.example.net" matches "a.example.net", not "example.net" nor
// "a.b.example.net"). A trailing dot on the name is ignored.
bool sni_matches(const std::string& name, const std::string& pattern);

}  // namespace lb::tls
