// PROXY protocol codec (HAProxy's "PROXY protocol" spec, versions 1 and 2).
//
// A PROXY header is the first thing on a connection (or, for UDP, at the head
// of every datagram) and carries the original client and destination
// addresses across a proxy hop. lb writes one towards backends
// (`proxy_protocol = "v1" | "v2"`) and, with `accept_proxy_protocol`, reads
// one from clients that are themselves load balancers.
//
// The codec is pure: no I/O, no allocation, no exceptions, no state between
// calls. The reader is stateless on purpose: the session keeps the bytes it
// has received and calls parse() again on the whole prefix after each read,
// so a header split across any number of reads needs no resumable state
// machine, and the same bytes always give the same answer.
//
// Hostile input: parse() never reads past `len`, bounds every copy, and
// rejects as early as the bytes allow so a client cannot hold a session open
// by trickling a header that is already known to be bad.
//
// Thread: every function is reentrant and may be called from any thread.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

namespace lb::core::proxy {

// Largest header accepted from a client: v1 is at most 107 bytes by the spec;
// v2 is 16 bytes + length, accepted up to kMaxHeader in total (TLVs skipped).
// Longer = Invalid ("oversized").
inline constexpr size_t kMaxHeader = 2048;
// Largest header write_v1/write_v2 produce (no TLVs): buffers of this size
// always suffice.
inline constexpr size_t kMaxWrittenHeader = 108;

// Spec limits, exposed for callers sizing their receive buffers.
inline constexpr size_t kV1MaxLine = 107;   // "PROXY UNKNOWN <ipv6> <ipv6> <port> <port>\r\n"
inline constexpr size_t kV2FixedSize = 16;  // signature + ver/cmd + fam + len

enum class Status { NeedMore, Done, Invalid };

struct Header {
  // v2 LOCAL command, or v1 "UNKNOWN"/v2 AF_UNSPEC/AF_UNIX: keep the real
  // connection addresses.
  bool local = false;
  sockaddr_storage src{};  // valid when !local: client address (IPv4 or IPv6; v4-mapped v6 is left as is)
  sockaddr_storage dst{};  // valid when !local
  bool dgram = false;      // v2 transport was DGRAM
};

struct ParseResult {
  Status status = Status::NeedMore;
  size_t consumed = 0;  // header length when Done
  Header header;
  const char* error = nullptr;  // static string when Invalid, e.g. "bad signature", "oversized"
};

// Stateless: pass everything received so far (from the first byte of the
// connection). NeedMore until a full header is present; decides Invalid as
// early as the bytes allow: first byte neither 'P' nor '\r' -> Invalid at
// once; a v1 line that cannot end with CRLF within 107 bytes -> Invalid as
// soon as 106 bytes hold no CR; a v2 header is judged on its 16 fixed bytes
// before its body arrives. Once a prefix is Invalid or Done, every longer
// buffer starting with it gives the same answer. Bytes after the header
// (payload) are never looked at.
ParseResult parse(const uint8_t* data, size_t len);

// Write a header for a connection from `src` to `dst` (both AF_INET or both
// AF_INET6; if families differ, the IPv4 one is mapped to v4-mapped IPv6).
// Returns bytes written (0 if cap is too small; nothing is written then).
// If either address is null or neither IPv4 nor IPv6, the spec's "unknown
// origin" form is written instead ("PROXY UNKNOWN\r\n"; v2 PROXY command with
// AF_UNSPEC), which tells the receiver to use its own view of the
// connection, as HAProxy does.
size_t write_v1(const sockaddr* src, const sockaddr* dst, char* out, size_t cap);
size_t write_v2(const sockaddr* src, const sockaddr* dst, bool dgram, uint8_t* out, size_t cap);
// Appends one TLV (type, 16-bit length, value) to the v2 header of `len`
// bytes at `hdr` (written by write_v2) and raises its length field. Returns
// the new length, or 0 (nothing changed) when `cap` is too small or the
// value is longer than 65535 bytes.
size_t append_v2_tlv(uint8_t* hdr, size_t len, size_t cap, uint8_t type, const void* value, size_t vlen);
// PP2_TYPE_AUTHORITY: the host name the client asked for (TLS SNI).
inline constexpr uint8_t kTlvAuthority = 0x02;

// v2 LOCAL header (health checks): 16 bytes.
size_t write_v2_local(uint8_t* out, size_t cap);

}  // namespace lb::core::proxy
