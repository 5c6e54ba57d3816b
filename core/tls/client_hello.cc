// TLS ClientHello reader; see client_hello.h. Written from RFC 8446 (§4.1.2
// ClientHello, §4.2 extensions, §5.1 record layer), RFC 6066 §3 (server_name),
// RFC 7301 §3.1 (ALPN) and RFC 8701 (GREASE).
#include "core/tls/client_hello.h"

#include <algorithm>
#include <cstring>

namespace lb::tls {

namespace {

constexpr uint8_t kContentHandshake = 22;
constexpr uint8_t kHandshakeClientHello = 1;
constexpr size_t kRecordHeader = 5;
constexpr size_t kMaxRecordPayload = 16384;  // 2^14, RFC 8446 §5.1
constexpr size_t kHandshakeHeader = 4;       // type (1) + length (3)
// Smallest ClientHello body: version (2) + random (32) + empty session id (1)
// + one cipher suite (2 + 2) + one compression method (1 + 1).
constexpr size_t kMinHelloBody = 41;

ParseResult invalid(const char* why) {
  ParseResult r;
  r.status = Status::Invalid;
  r.error = why;
  return r;
}

// Bounds-checked big-endian reader over one contiguous span. Every read
// fails (and leaves the reader failed) when the span is too short.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  size_t left() const { return static_cast<size_t>(end_ - p_); }
  bool u8(uint8_t* v) {
    if (left() < 1) return false;
    *v = p_[0];
    p_ += 1;
    return true;
  }
  bool u16(uint16_t* v) {
    if (left() < 2) return false;
    *v = static_cast<uint16_t>(p_[0] << 8 | p_[1]);
    p_ += 2;
    return true;
  }
  // A sub-reader over the next n bytes, which this reader skips.
  bool take(size_t n, Reader* sub) {
    if (left() < n) return false;
    *sub = Reader(p_, n);
    p_ += n;
    return true;
  }
  // Length-prefixed vectors (RFC 8446 §3.4): the prefix is 1 or 2 bytes.
  bool vec8(Reader* sub) {
    uint8_t n;
    return u8(&n) && take(n, sub);
  }
  bool vec16(Reader* sub) {
    uint16_t n;
    return u16(&n) && take(n, sub);
  }
  const uint8_t* data() const { return p_; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// A list of 16-bit values filling `r` exactly, at least one.
bool read_u16_list(Reader r, std::vector<uint16_t>* out) {
  if (r.left() == 0 || r.left() % 2 != 0) return false;
  out->reserve(r.left() / 2);
  uint16_t v;
  while (r.u16(&v)) out->push_back(v);
  return true;
}

// Extension bodies whose whole content is one length-prefixed vector: the
// prefix must cover the body exactly.
bool whole_vec16(Reader ext, Reader* list) { return ext.vec16(list) && ext.left() == 0; }
bool whole_vec8(Reader ext, Reader* list) { return ext.vec8(list) && ext.left() == 0; }

// RFC 6066 §3: a list of (name_type, name); at most one host_name (type 0).
// Names go to logs and route matching, so only printable ASCII without
// spaces is accepted; IDNs arrive as A-labels ("xn--...").
const char* read_server_name(Reader ext, ClientHello* out) {
  Reader list(nullptr, 0);
  if (!whole_vec16(ext, &list) || list.left() == 0) return "bad server_name extension";
  while (list.left() > 0) {
    uint8_t type;
    Reader name(nullptr, 0);
    if (!list.u8(&type) || !list.vec16(&name)) return "bad server_name extension";
    if (type != 0) continue;  // other name types: none defined, skipped
    if (out->has_sni) return "two host names in server_name";
    if (name.left() == 0 || name.left() > 255) return "bad server name length";
    for (size_t i = 0; i < name.left(); ++i) {
      const uint8_t c = name.data()[i];
      if (c < 0x21 || c > 0x7e) return "bad character in server name";
    }
    out->has_sni = true;
    out->sni.assign(reinterpret_cast<const char*>(name.data()), name.left());
  }
  return nullptr;
}

// RFC 7301 §3.1: ProtocolName protocol_name_list<2..2^16-1>, each 1..255 bytes.
const char* read_alpn(Reader ext, ClientHello* out) {
  Reader list(nullptr, 0);
  if (!whole_vec16(ext, &list) || list.left() == 0) return "bad ALPN extension";
  while (list.left() > 0) {
    Reader proto(nullptr, 0);
    if (!list.vec8(&proto) || proto.left() == 0) return "bad ALPN extension";
    out->alpn.emplace_back(reinterpret_cast<const char*>(proto.data()), proto.left());
  }
  out->has_alpn = true;
  return nullptr;
}

const char* read_extension(uint16_t type, Reader ext, ClientHello* out) {
  Reader list(nullptr, 0);
  switch (type) {
    case kExtServerName:
      // A server echoes an empty server_name; a client never sends one.
      return read_server_name(ext, out);
    case kExtAlpn:
      return read_alpn(ext, out);
    case kExtSupportedVersions:  // RFC 8446 §4.2.1: ProtocolVersion versions<2..254>
      if (!whole_vec8(ext, &list) || !read_u16_list(list, &out->supported_versions)) {
        return "bad supported_versions extension";
      }
      return nullptr;
    case kExtSignatureAlgorithms:  // §4.2.3: SignatureScheme list<2..2^16-2>
      if (!whole_vec16(ext, &list) || !read_u16_list(list, &out->signature_algorithms)) {
        return "bad signature_algorithms extension";
      }
      return nullptr;
    case kExtSupportedGroups:  // §4.2.7: NamedGroup named_group_list<2..2^16-1>
      if (!whole_vec16(ext, &list) || !read_u16_list(list, &out->supported_groups)) {
        return "bad supported_groups extension";
      }
      return nullptr;
    case kExtEcPointFormats:  // RFC 8422 §5.1.2: ECPointFormat list<1..2^8-1>
      if (!whole_vec8(ext, &list) || list.left() == 0) return "bad ec_point_formats extension";
      out->ec_point_formats.assign(list.data(), list.data() + list.left());
      return nullptr;
    default:
      return nullptr;  // carried opaque; only its type is recorded
  }
}

// The ClientHello body (after the 4-byte handshake header), exactly `n` bytes.
const char* read_hello(const uint8_t* body, size_t n, ClientHello* out) {
  Reader r(body, n);
  uint16_t version;
  Reader random(nullptr, 0), session(nullptr, 0), suites(nullptr, 0), comp(nullptr, 0);
  if (!r.u16(&version)) return "truncated ClientHello";
  // SSL 3.0 up to whatever comes after TLS 1.3: major version 3.
  if (version >> 8 != 3) return "bad ClientHello version";
  out->legacy_version = version;
  if (!r.take(32, &random)) return "truncated ClientHello";
  if (!r.vec8(&session) || session.left() > 32) return "bad session id";
  out->session_id_len = session.left();
  if (!r.vec16(&suites) || !read_u16_list(suites, &out->cipher_suites)) return "bad cipher suites";
  if (!r.vec8(&comp) || comp.left() == 0) return "bad compression methods";
  out->compression_methods.assign(comp.data(), comp.data() + comp.left());
  if (r.left() == 0) return nullptr;  // no extensions (TLS 1.2 and older may omit them)

  Reader exts(nullptr, 0);
  if (!r.vec16(&exts) || r.left() != 0) return "bad extensions length";
  // Framing and types first: RFC 8446 §4.2 "There MUST NOT be more than one
  // extension of the same type" (two server_name or ALPN lists would make
  // routing ambiguous), judged before any body is interpreted.
  for (Reader walk = exts; walk.left() > 0;) {
    uint16_t type;
    Reader ext(nullptr, 0);
    if (!walk.u16(&type) || !walk.vec16(&ext)) return "bad extension";
    out->extensions.push_back(type);
  }
  std::vector<uint16_t> sorted = out->extensions;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) return "duplicate extension";
  while (exts.left() > 0) {
    uint16_t type = 0;
    Reader ext(nullptr, 0);
    if (!exts.u16(&type) || !exts.vec16(&ext)) return "bad extension";  // not reached: walked above
    if (const char* why = read_extension(type, ext, out)) return why;
  }
  return nullptr;
}

}  // namespace

uint16_t ClientHello::max_version() const {
  if (supported_versions.empty()) return legacy_version;
  uint16_t best = 0;
  for (uint16_t v : supported_versions) {
    if (!is_grease(v) && v > best) best = v;
  }
  return best;
}

ParseResult parse(const uint8_t* data, size_t len, ClientHello* out) {
  // Walk the records, gathering the handshake header (which may itself be
  // split over records) and counting message bytes, without copying. The
  // body is assembled only once it is whole.
  uint8_t hs[kHandshakeHeader];
  size_t hs_have = 0;    // handshake header bytes seen
  size_t msg_total = 0;  // header + body, known once hs_have == 4
  size_t msg_have = 0;   // message bytes available so far
  size_t pos = 0;        // start of the current record
  size_t records = 0;
  for (;;) {
    if (pos >= kMaxClientHello) return invalid("too large");
    // Record header, judged byte by byte as it arrives.
    const size_t hdr = std::min(len - std::min(len, pos), kRecordHeader);
    const uint8_t* rec = data + pos;
    if (hdr >= 1 && rec[0] != kContentHandshake) {
      return invalid(records == 0 ? "not a TLS handshake" : "record other than handshake inside ClientHello");
    }
    if (hdr >= 2 && rec[1] != 3) return invalid("bad record version");
    if (hdr >= 3 && rec[2] > 4) return invalid("bad record version");
    if (hdr < kRecordHeader) return ParseResult{};
    const size_t rlen = static_cast<size_t>(rec[3] << 8 | rec[4]);
    // RFC 8446 §5.1: handshake records are never empty.
    if (rlen == 0 || rlen > kMaxRecordPayload) return invalid("bad record length");
    if (records == 0) out->record_version = static_cast<uint16_t>(rec[1] << 8 | rec[2]);
    ++records;

    const size_t body = pos + kRecordHeader;
    const size_t avail = std::min(len - std::min(len, body), rlen);
    // Handshake header bytes carried by this record.
    size_t i = 0;
    while (hs_have < kHandshakeHeader && i < avail) hs[hs_have++] = data[body + i++];
    if (hs_have >= 1 && hs[0] != kHandshakeClientHello) return invalid("not a ClientHello");
    if (hs_have < kHandshakeHeader) {
      if (avail < rlen) return ParseResult{};
      msg_have += avail;
      pos = body + rlen;
      continue;
    }
    if (msg_total == 0) {
      const size_t n = static_cast<size_t>(hs[1]) << 16 | static_cast<size_t>(hs[2]) << 8 | hs[3];
      if (n < kMinHelloBody) return invalid("ClientHello too short");
      msg_total = kHandshakeHeader + n;
    }
    // Where the message would end at the earliest: in this record if the
    // rest fits, otherwise after at least one more record header.
    const size_t rest = msg_total - msg_have;
    const size_t earliest_end = rest <= rlen ? body + rest : body + rlen + kRecordHeader + (rest - rlen);
    if (earliest_end > kMaxClientHello) return invalid("too large");
    if (rest > rlen) {
      if (avail < rlen) return ParseResult{};
      msg_have += rlen;
      pos = body + rlen;
      continue;
    }
    if (avail < rest) return ParseResult{};

    // Whole. One record (the usual case): read in place; otherwise gather
    // the fragments.
    *out = ClientHello{out->record_version};
    const char* why;
    if (records == 1) {
      why = read_hello(data + kRecordHeader + kHandshakeHeader, msg_total - kHandshakeHeader, out);
    } else {
      std::vector<uint8_t> msg;
      msg.reserve(msg_total);
      size_t p = 0;
      while (msg.size() < msg_total) {
        const size_t n = static_cast<size_t>(data[p + 3] << 8 | data[p + 4]);
        const size_t take = std::min(n, msg_total - msg.size());
        msg.insert(msg.end(), data + p + kRecordHeader, data + p + kRecordHeader + take);
        p += kRecordHeader + n;
      }
      why = read_hello(msg.data() + kHandshakeHeader, msg_total - kHandshakeHeader, out);
    }
    if (why) return invalid(why);
    ParseResult r;
    r.status = Status::Complete;
    r.consumed = body + rest;
    return r;
  }
}

const char* version_name(uint16_t version) {
  switch (version) {
    case 0x0300:
      return "3.0";
    case 0x0301:
      return "1.0";
    case 0x0302:
      return "1.1";
    case 0x0303:
      return "1.2";
    case 0x0304:
      return "1.3";
    default:
      return nullptr;
  }
}

namespace {
char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
bool iequal(const char* a, const char* b, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}
}  // namespace

bool sni_matches(const std::string& name_in, const std::string& pattern) {
  size_t n = name_in.size();
  if (n > 0 && name_in[n - 1] == '.') --n;
  if (n == 0) return false;
  const char* name = name_in.data();
  if (pattern.size() >= 2 && pattern[0] == '*' && pattern[1] == '.') {
    const size_t suffix = pattern.size() - 1;  // ".example.net"
    if (n <= suffix) return false;
    const size_t label = n - suffix;  // the one label the '*' stands for
    if (std::memchr(name, '.', label) != nullptr) return false;
    return iequal(name + label, pattern.data() + 1, suffix);
  }
  return n == pattern.size() && iequal(name, pattern.data(), n);
}

}  // namespace lb::tls
