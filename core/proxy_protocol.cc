// PROXY protocol v1/v2 codec; see proxy_protocol.h. Written from HAProxy's
// public "The PROXY protocol" specification (doc/proxy-protocol.txt):
// section 2.1 for the v1 text line, 2.2 for the v2 binary header.
#include "core/proxy_protocol.h"

#include <arpa/inet.h>

#include <cstring>

namespace lb::core::proxy {

namespace {

// v2 signature (spec 2.2): chosen so it cannot appear at the start of any
// common text protocol, and its first byte ('\r') tells it apart from v1 ('P').
constexpr uint8_t kV2Sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr char kV1Prefix[] = "PROXY ";
constexpr size_t kV1PrefixLen = sizeof(kV1Prefix) - 1;

constexpr uint8_t kCmdLocal = 0x0;
constexpr uint8_t kCmdProxy = 0x1;
constexpr uint8_t kFamUnspec = 0x0;
constexpr uint8_t kFamInet = 0x1;
constexpr uint8_t kFamInet6 = 0x2;
constexpr uint8_t kFamUnix = 0x3;
constexpr uint8_t kTransStream = 0x1;
constexpr uint8_t kTransDgram = 0x2;
// Address block sizes per family (spec 2.2): two addresses then, for IP, two ports.
constexpr size_t kBlockInet = 4 + 4 + 2 + 2;
constexpr size_t kBlockInet6 = 16 + 16 + 2 + 2;
constexpr size_t kBlockUnix = 108 + 108;
constexpr size_t kTlvHeader = 3;  // type (1) + length (2, big-endian)

ParseResult invalid(const char* why) {
  ParseResult r;
  r.status = Status::Invalid;
  r.error = why;
  return r;
}

ParseResult need_more() { return ParseResult{}; }

size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------- v1 reader

bool v1_addr_char(char c, int family) {
  if (c >= '0' && c <= '9') return true;
  if (c == '.') return true;  // also in IPv6 for the embedded-IPv4 forms
  if (family == AF_INET6) {
    return c == ':' || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }
  return false;
}

// inet_pton needs a NUL-terminated string; the token is copied into a bounded
// stack buffer after checking its alphabet, so an embedded NUL or an overlong
// token can never make inet_pton see something other than the whole token.
bool v1_parse_addr(const char* tok, size_t n, int family, sockaddr_storage* out) {
  char buf[INET6_ADDRSTRLEN];
  if (n == 0 || n >= sizeof(buf)) return false;
  for (size_t i = 0; i < n; ++i) {
    if (!v1_addr_char(tok[i], family)) return false;
  }
  memcpy(buf, tok, n);
  buf[n] = '\0';
  *out = sockaddr_storage{};
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(out);
    sin->sin_family = AF_INET;
    return inet_pton(AF_INET, buf, &sin->sin_addr) == 1;
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(out);
  sin6->sin6_family = AF_INET6;
  return inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1;
}

// Decimal 0..65535, digits only: no sign, no spaces, no leading zeros (the
// spec's senders never emit them, and accepting "00080" would let two
// different lines mean the same header).
bool v1_parse_port(const char* tok, size_t n, uint16_t* out) {
  if (n == 0 || n > 5) return false;
  if (n > 1 && tok[0] == '0') return false;
  uint32_t v = 0;
  for (size_t i = 0; i < n; ++i) {
    if (tok[i] < '0' || tok[i] > '9') return false;
    v = v * 10 + static_cast<uint32_t>(tok[i] - '0');
  }
  if (v > 65535) return false;
  *out = static_cast<uint16_t>(v);
  return true;
}

void set_port(sockaddr_storage* ss, uint16_t port) {
  if (ss->ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(ss)->sin_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in6*>(ss)->sin6_port = htons(port);
  }
}

// Cursor over the line (without its CRLF). Fields are separated by exactly
// one space: an empty field means a doubled, leading or trailing space.
struct V1Fields {
  const char* line;
  size_t end;
  size_t pos;

  // Reads the field starting at pos; on success pos is at the following
  // separator (or at end).
  bool next(const char** tok, size_t* n) {
    size_t start = pos;
    while (pos < end && line[pos] != ' ') ++pos;
    *tok = line + start;
    *n = pos - start;
    return *n > 0;
  }
  // Consumes the single space between two fields.
  bool sep() {
    if (pos >= end || line[pos] != ' ') return false;
    ++pos;
    return true;
  }
};

ParseResult parse_v1(const uint8_t* data, size_t len) {
  if (memcmp(data, kV1Prefix, min_size(len, kV1PrefixLen)) != 0) return invalid("bad signature");

  // Find the CRLF within the spec's 107-byte limit, rejecting early on bytes
  // that cannot be part of a valid line so a bad header is not waited on.
  // The last possible terminator has its CR at index 105.
  const size_t last_cr = kV1MaxLine - 2;
  const size_t scan = min_size(len, last_cr + 1);
  size_t line_end = 0;  // index of the CR of the terminating CRLF
  bool found = false;
  for (size_t i = 0; i < scan; ++i) {
    const uint8_t c = data[i];
    if (c == '\r') {
      if (i + 1 >= len) return need_more();
      if (data[i + 1] != '\n') return invalid("bad v1 line");
      line_end = i;
      found = true;
      break;
    }
    if (c < 0x20 || c >= 0x7f) return invalid("bad v1 line");
  }
  if (!found) return len > last_cr ? invalid("oversized") : need_more();

  V1Fields f{reinterpret_cast<const char*>(data), line_end, kV1PrefixLen};
  const char* tok;
  size_t n;
  if (!f.next(&tok, &n)) return invalid("bad v1 protocol");

  ParseResult r;
  r.consumed = line_end + 2;
  if (n == 7 && memcmp(tok, "UNKNOWN", 7) == 0) {
    // Spec: anything may follow UNKNOWN up to the CRLF and is ignored; the
    // receiver uses the real connection's addresses.
    r.status = Status::Done;
    r.header.local = true;
    return r;
  }
  int family;
  if (n == 4 && memcmp(tok, "TCP4", 4) == 0) {
    family = AF_INET;
  } else if (n == 4 && memcmp(tok, "TCP6", 4) == 0) {
    family = AF_INET6;
  } else {
    return invalid("bad v1 protocol");
  }

  if (!f.sep() || !f.next(&tok, &n)) return invalid("bad v1 syntax");
  if (!v1_parse_addr(tok, n, family, &r.header.src)) return invalid("bad v1 address");
  if (!f.sep() || !f.next(&tok, &n)) return invalid("bad v1 syntax");
  if (!v1_parse_addr(tok, n, family, &r.header.dst)) return invalid("bad v1 address");
  uint16_t sport, dport;
  if (!f.sep() || !f.next(&tok, &n)) return invalid("bad v1 syntax");
  if (!v1_parse_port(tok, n, &sport)) return invalid("bad v1 port");
  if (!f.sep() || !f.next(&tok, &n)) return invalid("bad v1 syntax");
  if (!v1_parse_port(tok, n, &dport)) return invalid("bad v1 port");
  if (f.pos != f.end) return invalid("bad v1 syntax");  // trailing space or extra field
  set_port(&r.header.src, sport);
  set_port(&r.header.dst, dport);
  r.status = Status::Done;
  return r;
}

// ---------------------------------------------------------------- v2 reader

uint16_t load_be16(const uint8_t* p) {
  return static_cast<uint16_t>((static_cast<uint16_t>(p[0]) << 8) | p[1]);
}

// One address of a v2 header into `ss`: `addr` (4 or 16 bytes by family) and
// the 2 bytes of `port`, both already in network order.
void store_v2_address(sockaddr_storage* ss, uint8_t family, const uint8_t* addr, const uint8_t* port) {
  if (family == kFamInet) {
    auto* sin = reinterpret_cast<sockaddr_in*>(ss);
    sin->sin_family = AF_INET;
    memcpy(&sin->sin_addr, addr, 4);
    memcpy(&sin->sin_port, port, 2);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(ss);
    sin6->sin6_family = AF_INET6;
    memcpy(&sin6->sin6_addr, addr, 16);
    memcpy(&sin6->sin6_port, port, 2);
  }
}

ParseResult parse_v2(const uint8_t* data, size_t len) {
  if (memcmp(data, kV2Sig, min_size(len, sizeof(kV2Sig))) != 0) return invalid("bad signature");
  if (len < 13) return need_more();

  const uint8_t version = data[12] >> 4;
  const uint8_t command = data[12] & 0x0F;
  if (version != 2) return invalid("bad v2 version");
  if (command != kCmdLocal && command != kCmdProxy) return invalid("bad v2 command");
  if (len < 14) return need_more();

  // LOCAL: the spec says the family and address block are to be ignored, so
  // they are not validated either (only the length bounds the header).
  const uint8_t family = data[13] >> 4;
  const uint8_t transport = data[13] & 0x0F;
  size_t block = 0;
  if (command == kCmdProxy) {
    // The only combinations the spec allows; everything else must be rejected.
    const bool ip_or_unix = family == kFamInet || family == kFamInet6 || family == kFamUnix;
    const bool unspec = family == kFamUnspec && transport == 0;
    const bool good_transport = transport == kTransStream || transport == kTransDgram;
    if (!unspec && !(ip_or_unix && good_transport)) return invalid("bad v2 family");
    block = family == kFamInet    ? kBlockInet
            : family == kFamInet6 ? kBlockInet6
            : family == kFamUnix  ? kBlockUnix
                                  : 0;
  }
  if (len < kV2FixedSize) return need_more();

  const size_t body = load_be16(data + 14);
  const size_t total = kV2FixedSize + body;
  if (total > kMaxHeader) return invalid("oversized");
  if (body < block) return invalid("bad v2 length");
  if (len < total) return need_more();

  ParseResult r;
  r.status = Status::Done;
  r.consumed = total;
  if (command == kCmdLocal || family == kFamUnspec) {
    r.header.local = true;
    return r;
  }

  // TLVs after the address block are skipped, but their framing must hold:
  // a TLV that runs past the declared length means the sender and we
  // disagree on where the payload starts.
  for (size_t off = kV2FixedSize + block; off < total;) {
    if (total - off < kTlvHeader) return invalid("bad v2 tlv");
    const size_t vlen = load_be16(data + off + 1);
    off += kTlvHeader;
    if (vlen > total - off) return invalid("bad v2 tlv");
    off += vlen;
  }

  r.header.dgram = transport == kTransDgram;
  if (family == kFamUnix) {
    // lb only balances IP traffic: a UNIX-socket origin carries nothing we
    // could hash or log, so behave as for LOCAL.
    r.header.local = true;
    return r;
  }

  // Source address, destination address, source port, destination port.
  const uint8_t* a = data + kV2FixedSize;
  const size_t alen = family == kFamInet ? 4 : 16;
  store_v2_address(&r.header.src, family, a, a + 2 * alen);
  store_v2_address(&r.header.dst, family, a + alen, a + 2 * alen + 2);
  return r;
}

// ---------------------------------------------------------------- writers

// An endpoint normalised for writing: both ends end up in the same family.
struct Endpoint {
  int family = AF_UNSPEC;
  uint8_t addr[16]{};  // IPv4 uses the first 4 bytes
  uint16_t port_be = 0;
};

bool load_endpoint(const sockaddr* sa, Endpoint* e) {
  if (sa == nullptr) return false;
  if (sa->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    e->family = AF_INET;
    memcpy(e->addr, &sin->sin_addr, 4);
    e->port_be = sin->sin_port;
    return true;
  }
  if (sa->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    e->family = AF_INET6;
    memcpy(e->addr, &sin6->sin6_addr, 16);
    e->port_be = sin6->sin6_port;
    return true;
  }
  return false;
}

void map_v4_to_v6(Endpoint* e) {
  uint8_t v4[4];
  memcpy(v4, e->addr, 4);
  memset(e->addr, 0, 10);
  e->addr[10] = 0xFF;
  e->addr[11] = 0xFF;
  memcpy(e->addr + 12, v4, 4);
  e->family = AF_INET6;
}

// False when the pair cannot be expressed (missing or non-IP address): the
// caller writes the "unknown origin" form.
bool load_pair(const sockaddr* src, const sockaddr* dst, Endpoint* s, Endpoint* d) {
  if (!load_endpoint(src, s) || !load_endpoint(dst, d)) return false;
  if (s->family != d->family) {
    if (s->family == AF_INET) map_v4_to_v6(s);
    if (d->family == AF_INET) map_v4_to_v6(d);
  }
  return true;
}

// Bounded appender; `ok` turns false (and stays false) on overflow.
struct Appender {
  char* buf;
  size_t cap;
  size_t n = 0;
  bool ok = true;

  void put(const char* s, size_t len) {
    if (!ok || len > cap - n) {
      ok = false;
      return;
    }
    memcpy(buf + n, s, len);
    n += len;
  }
  void put(const char* s) { put(s, strlen(s)); }
  void put_port(uint16_t port) {
    char digits[5];
    size_t i = sizeof(digits);
    do {
      digits[--i] = static_cast<char>('0' + port % 10);
      port = static_cast<uint16_t>(port / 10);
    } while (port != 0);
    put(digits + i, sizeof(digits) - i);
  }
  void put_addr(const Endpoint& e) {
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(e.family, e.addr, text, sizeof(text)) == nullptr) {
      ok = false;
      return;
    }
    put(text);
  }
};

void put_v2_fixed(uint8_t* out, uint8_t ver_cmd, uint8_t fam, uint16_t body) {
  memcpy(out, kV2Sig, sizeof(kV2Sig));
  out[12] = ver_cmd;
  out[13] = fam;
  out[14] = static_cast<uint8_t>(body >> 8);
  out[15] = static_cast<uint8_t>(body & 0xFF);
}

}  // namespace

ParseResult parse(const uint8_t* data, size_t len) {
  if (len == 0) return need_more();
  if (data[0] == 'P') return parse_v1(data, len);
  if (data[0] == '\r') return parse_v2(data, len);
  return invalid("bad signature");
}

size_t write_v1(const sockaddr* src, const sockaddr* dst, char* out, size_t cap) {
  // Built in a local buffer so a too-small `cap` leaves `out` untouched and
  // the line can be checked against the spec's limit before it is copied.
  char line[kMaxWrittenHeader];
  Appender a{line, sizeof(line)};
  Endpoint s, d;
  if (!load_pair(src, dst, &s, &d)) {
    a.put("PROXY UNKNOWN\r\n");
  } else {
    a.put(s.family == AF_INET ? "PROXY TCP4 " : "PROXY TCP6 ");
    a.put_addr(s);
    a.put(" ");
    a.put_addr(d);
    a.put(" ");
    a.put_port(ntohs(s.port_be));
    a.put(" ");
    a.put_port(ntohs(d.port_be));
    a.put("\r\n");
  }
  if (!a.ok || a.n > kV1MaxLine || a.n > cap) return 0;
  memcpy(out, line, a.n);
  return a.n;
}

size_t write_v2(const sockaddr* src, const sockaddr* dst, bool dgram, uint8_t* out, size_t cap) {
  const uint8_t ver_cmd = static_cast<uint8_t>(0x20 | kCmdProxy);
  const uint8_t trans = dgram ? kTransDgram : kTransStream;
  Endpoint s, d;
  if (!load_pair(src, dst, &s, &d)) {
    if (cap < kV2FixedSize) return 0;
    put_v2_fixed(out, ver_cmd, kFamUnspec << 4, 0);
    return kV2FixedSize;
  }
  // The address block: source address, destination address (4 or 16 bytes
  // each), source port, destination port.
  const bool v4 = s.family == AF_INET;
  const size_t alen = v4 ? 4 : 16;
  const size_t block = v4 ? kBlockInet : kBlockInet6;
  const size_t total = kV2FixedSize + block;
  if (cap < total) return 0;
  put_v2_fixed(out, ver_cmd, static_cast<uint8_t>((v4 ? kFamInet : kFamInet6) << 4 | trans),
               static_cast<uint16_t>(block));
  uint8_t* a = out + kV2FixedSize;
  memcpy(a, s.addr, alen);
  memcpy(a + alen, d.addr, alen);
  memcpy(a + 2 * alen, &s.port_be, 2);
  memcpy(a + 2 * alen + 2, &d.port_be, 2);
  return total;
}

size_t append_v2_tlv(uint8_t* hdr, size_t len, size_t cap, uint8_t type, const void* value, size_t vlen) {
  if (len < kV2FixedSize || vlen > 0xFFFF || cap < len || cap - len < kTlvHeader + vlen) return 0;
  const size_t body = static_cast<size_t>(hdr[14] << 8 | hdr[15]) + kTlvHeader + vlen;
  if (body > 0xFFFF) return 0;
  hdr[len] = type;
  hdr[len + 1] = static_cast<uint8_t>(vlen >> 8);
  hdr[len + 2] = static_cast<uint8_t>(vlen & 0xFF);
  if (vlen > 0) memcpy(hdr + len + kTlvHeader, value, vlen);
  hdr[14] = static_cast<uint8_t>(body >> 8);
  hdr[15] = static_cast<uint8_t>(body & 0xFF);
  return len + kTlvHeader + vlen;
}

size_t write_v2_local(uint8_t* out, size_t cap) {
  if (cap < kV2FixedSize) return 0;
  put_v2_fixed(out, static_cast<uint8_t>(0x20 | kCmdLocal), kFamUnspec << 4, 0);
  return kV2FixedSize;
}

}  // namespace lb::core::proxy
