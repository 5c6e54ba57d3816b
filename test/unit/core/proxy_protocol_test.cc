#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <sys/un.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/proxy_protocol.h"

namespace pp = lb::core::proxy;
using Bytes = std::vector<uint8_t>;

namespace {

// ------------------------------------------------------------------ helpers

Bytes from_hex(const std::string& hex) {
  Bytes out;
  int hi = -1;
  for (char c : hex) {
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      continue;  // spaces group the fields for the reader
    }
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(static_cast<uint8_t>(hi << 4 | v));
      hi = -1;
    }
  }
  REQUIRE(hi < 0);
  return out;
}

Bytes from_str(const std::string& s) { return Bytes(s.begin(), s.end()); }

std::string to_hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}
std::string to_hex(const Bytes& b) { return to_hex(b.data(), b.size()); }

sockaddr_storage sa(const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
  } else {
    ss = sockaddr_storage{};
    REQUIRE(inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
  }
  return ss;
}

const sockaddr* sp(const sockaddr_storage& ss) { return reinterpret_cast<const sockaddr*>(&ss); }

std::string describe(const sockaddr_storage& ss) {
  char text[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
    port = ntohs(sin->sin_port);
    return std::string(text) + ":" + std::to_string(port);
  }
  if (ss.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
    port = ntohs(sin6->sin6_port);
    return "[" + std::string(text) + "]:" + std::to_string(port);
  }
  return "family " + std::to_string(ss.ss_family);
}

// Family, address and port only: the parser must leave every other field zero,
// which is checked separately by comparing against sa().
bool same_endpoint(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) return memcmp(&a, &b, sizeof(sockaddr_in)) == 0;
  if (a.ss_family == AF_INET6) return memcmp(&a, &b, sizeof(sockaddr_in6)) == 0;
  return false;
}

// Parses from an exactly-sized heap copy so AddressSanitizer builds catch any
// read past `len`.
pp::ParseResult parse(const Bytes& b, size_t len) {
  REQUIRE(len <= b.size());
  Bytes exact(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(len));
  return pp::parse(exact.empty() ? nullptr : exact.data(), exact.size());
}
pp::ParseResult parse(const Bytes& b) { return parse(b, b.size()); }

std::string status_name(pp::Status s) {
  switch (s) {
    case pp::Status::NeedMore:
      return "NeedMore";
    case pp::Status::Done:
      return "Done";
    case pp::Status::Invalid:
      return "Invalid";
  }
  return "bad status";
}

Bytes v1_bytes(const sockaddr_storage& s, const sockaddr_storage& d) {
  char buf[pp::kMaxWrittenHeader];
  size_t n = pp::write_v1(sp(s), sp(d), buf, sizeof(buf));
  REQUIRE(n > 0);
  return Bytes(buf, buf + n);
}

Bytes v2_bytes(const sockaddr_storage& s, const sockaddr_storage& d, bool dgram) {
  uint8_t buf[pp::kMaxWrittenHeader];
  size_t n = pp::write_v2(sp(s), sp(d), dgram, buf, sizeof(buf));
  REQUIRE(n > 0);
  return Bytes(buf, buf + n);
}

const char* kSigHex = "0d0a0d0a000d0a515549540a";

// splitmix64: a fixed, seedable generator so a failing random case can be
// reproduced from its iteration number.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(next() % n); }
  uint8_t byte() { return static_cast<uint8_t>(next()); }
};

sockaddr_storage random_endpoint(Rng& r, int family) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    uint32_t a = static_cast<uint32_t>(r.next());
    memcpy(&sin->sin_addr, &a, 4);
    sin->sin_port = static_cast<uint16_t>(r.next());
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    for (auto& b : sin6->sin6_addr.s6_addr) b = r.byte();
    // Runs of zeros exercise the "::" compression in the v1 text form.
    if (r.below(2) == 0) memset(&sin6->sin6_addr.s6_addr[r.below(8) * 2], 0, 2 * (1 + r.below(4)));
    if (r.below(4) == 0) {  // v4-mapped, printed with a dotted tail
      memset(sin6->sin6_addr.s6_addr, 0, 10);
      sin6->sin6_addr.s6_addr[10] = 0xff;
      sin6->sin6_addr.s6_addr[11] = 0xff;
    }
    sin6->sin6_port = static_cast<uint16_t>(r.next());
  }
  return ss;
}

sockaddr_storage map_v4(const sockaddr_storage& v4) {
  const auto* sin = reinterpret_cast<const sockaddr_in*>(&v4);
  sockaddr_storage ss{};
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_addr.s6_addr[10] = 0xff;
  sin6->sin6_addr.s6_addr[11] = 0xff;
  memcpy(&sin6->sin6_addr.s6_addr[12], &sin->sin_addr, 4);
  sin6->sin6_port = sin->sin_port;
  return ss;
}

}  // namespace

// ------------------------------------------------------------- exact bytes

TEST_CASE("proxy v2 IPv4 TCP header has the spec's exact bytes", "[proxy]") {
  auto s = sa("192.0.2.1", 5000);
  auto d = sa("198.51.100.2", 443);
  // sig | ver 2, cmd PROXY | AF_INET, STREAM | len 12 | src | dst | sport | dport
  const Bytes want = from_hex(std::string(kSigHex) + "21 11 000c c0000201 c6336402 1388 01bb");
  REQUIRE(want.size() == 28);
  CHECK(to_hex(v2_bytes(s, d, false)) == to_hex(want));

  auto r = parse(want);
  REQUIRE(r.status == pp::Status::Done);
  CHECK(r.consumed == 28);
  CHECK(r.error == nullptr);
  CHECK_FALSE(r.header.local);
  CHECK_FALSE(r.header.dgram);
  CHECK(same_endpoint(r.header.src, s));
  CHECK(same_endpoint(r.header.dst, d));
}

TEST_CASE("proxy v2 IPv4 UDP header sets transport DGRAM", "[proxy]") {
  auto s = sa("192.0.2.1", 53000);
  auto d = sa("198.51.100.2", 53);
  const Bytes want = from_hex(std::string(kSigHex) + "21 12 000c c0000201 c6336402 cf08 0035");
  CHECK(to_hex(v2_bytes(s, d, true)) == to_hex(want));
  auto r = parse(want);
  REQUIRE(r.status == pp::Status::Done);
  CHECK(r.header.dgram);
  CHECK(describe(r.header.src) == "192.0.2.1:53000");
  CHECK(describe(r.header.dst) == "198.51.100.2:53");
}

TEST_CASE("proxy v2 IPv6 header has the spec's exact bytes", "[proxy]") {
  auto s = sa("2001:db8::1", 5000);
  auto d = sa("2001:db8:0:0:1::2", 443);
  const Bytes want = from_hex(std::string(kSigHex) +
                              "21 21 0024"
                              " 20010db8000000000000000000000001"
                              " 20010db8000000000001000000000002"
                              " 1388 01bb");
  REQUIRE(want.size() == 52);
  CHECK(to_hex(v2_bytes(s, d, false)) == to_hex(want));
  auto r = parse(want);
  REQUIRE(r.status == pp::Status::Done);
  CHECK(r.consumed == 52);
  CHECK(same_endpoint(r.header.src, s));
  CHECK(same_endpoint(r.header.dst, d));

  const Bytes want_udp = from_hex(std::string(kSigHex) +
                                  "21 22 0024"
                                  " 20010db8000000000000000000000001"
                                  " 20010db8000000000001000000000002"
                                  " 1388 01bb");
  CHECK(to_hex(v2_bytes(s, d, true)) == to_hex(want_udp));
}

TEST_CASE("proxy v2 LOCAL and unknown-origin headers", "[proxy]") {
  uint8_t buf[pp::kMaxWrittenHeader];
  REQUIRE(pp::write_v2_local(buf, sizeof(buf)) == 16);
  CHECK(to_hex(buf, 16) == std::string(kSigHex) + "20000000");
  auto r = pp::parse(buf, 16);
  REQUIRE(r.status == pp::Status::Done);
  CHECK(r.consumed == 16);
  CHECK(r.header.local);

  SECTION("null or non-IP addresses give PROXY + AF_UNSPEC") {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    auto d = sa("198.51.100.2", 443);
    for (const sockaddr* src :
         {static_cast<const sockaddr*>(nullptr), reinterpret_cast<const sockaddr*>(&un)}) {
      size_t n = pp::write_v2(src, sp(d), false, buf, sizeof(buf));
      REQUIRE(n == 16);
      CHECK(to_hex(buf, n) == std::string(kSigHex) + "21000000");
      auto u = pp::parse(buf, n);
      REQUIRE(u.status == pp::Status::Done);
      CHECK(u.header.local);
    }
    CHECK(pp::write_v2(sp(d), nullptr, true, buf, sizeof(buf)) == 16);
  }
}

TEST_CASE("proxy v1 lines have the spec's exact text", "[proxy]") {
  CHECK(v1_bytes(sa("192.0.2.1", 5000), sa("198.51.100.2", 443)) ==
        from_str("PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n"));
  CHECK(v1_bytes(sa("2001:db8::1", 0), sa("2001:db8::2", 65535)) ==
        from_str("PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n"));

  char buf[pp::kMaxWrittenHeader];
  size_t n = pp::write_v1(nullptr, nullptr, buf, sizeof(buf));
  CHECK(std::string(buf, n) == "PROXY UNKNOWN\r\n");
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  auto d = sa("192.0.2.1", 1);
  n = pp::write_v1(reinterpret_cast<const sockaddr*>(&un), sp(d), buf, sizeof(buf));
  CHECK(std::string(buf, n) == "PROXY UNKNOWN\r\n");

  auto r = parse(from_str("PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n"));
  REQUIRE(r.status == pp::Status::Done);
  CHECK(r.consumed == 44);
  CHECK_FALSE(r.header.local);
  CHECK_FALSE(r.header.dgram);
  CHECK(same_endpoint(r.header.src, sa("192.0.2.1", 5000)));
  CHECK(same_endpoint(r.header.dst, sa("198.51.100.2", 443)));
}

TEST_CASE("proxy mixed families are written as v4-mapped IPv6", "[proxy]") {
  auto v4 = sa("192.0.2.1", 5000);
  auto v6 = sa("2001:db8::2", 443);

  CHECK(v1_bytes(v4, v6) == from_str("PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 5000 443\r\n"));
  CHECK(v1_bytes(v6, v4) == from_str("PROXY TCP6 2001:db8::2 ::ffff:192.0.2.1 443 5000\r\n"));
  CHECK(to_hex(v2_bytes(v4, v6, false)) ==
        to_hex(from_hex(std::string(kSigHex) + "21 21 0024"
                                               " 00000000000000000000ffffc0000201"
                                               " 20010db8000000000000000000000002"
                                               " 1388 01bb")));

  // The receiver leaves the mapped address as it is.
  for (const Bytes& b : {v1_bytes(v4, v6), v2_bytes(v4, v6, false)}) {
    auto r = parse(b);
    REQUIRE(r.status == pp::Status::Done);
    CHECK(r.header.src.ss_family == AF_INET6);
    CHECK(describe(r.header.src) == "[::ffff:192.0.2.1]:5000");
    CHECK(same_endpoint(r.header.src, map_v4(v4)));
    CHECK(same_endpoint(r.header.dst, v6));
  }
}

TEST_CASE("proxy writers respect cap and kMaxWrittenHeader suffices", "[proxy]") {
  // The longest possible v1 line: full-length IPv6 text and 5-digit ports.
  auto s = sa("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535);
  auto d = sa("fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65534);
  char line[pp::kMaxWrittenHeader];
  size_t n1 = pp::write_v1(sp(s), sp(d), line, sizeof(line));
  REQUIRE(n1 == 104);
  CHECK(n1 <= pp::kV1MaxLine);
  CHECK(parse(Bytes(line, line + n1)).status == pp::Status::Done);

  struct Case {
    const char* name;
    size_t need;
    std::function<size_t(uint8_t*, size_t)> write;
  };
  auto v4a = sa("255.255.255.255", 65535);
  auto v4b = sa("255.255.255.254", 65534);
  const std::vector<Case> cases = {
      {"v1 tcp6", n1,
       [&](uint8_t* o, size_t c) { return pp::write_v1(sp(s), sp(d), reinterpret_cast<char*>(o), c); }},
      {"v1 tcp4", 56,
       [&](uint8_t* o, size_t c) { return pp::write_v1(sp(v4a), sp(v4b), reinterpret_cast<char*>(o), c); }},
      {"v1 unknown", 15,
       [&](uint8_t* o, size_t c) { return pp::write_v1(nullptr, nullptr, reinterpret_cast<char*>(o), c); }},
      {"v2 ipv4", 28, [&](uint8_t* o, size_t c) { return pp::write_v2(sp(v4a), sp(v4b), false, o, c); }},
      {"v2 ipv6", 52, [&](uint8_t* o, size_t c) { return pp::write_v2(sp(s), sp(d), true, o, c); }},
      {"v2 unspec", 16, [&](uint8_t* o, size_t c) { return pp::write_v2(nullptr, sp(d), true, o, c); }},
      {"v2 local", 16, [&](uint8_t* o, size_t c) { return pp::write_v2_local(o, c); }},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    REQUIRE(c.need <= pp::kMaxWrittenHeader);
    for (size_t cap = 0; cap <= pp::kMaxWrittenHeader; ++cap) {
      uint8_t out[pp::kMaxWrittenHeader + 8];
      memset(out, 0xAA, sizeof(out));
      size_t n = c.write(out, cap);
      INFO("cap " << cap);
      if (cap < c.need) {
        REQUIRE(n == 0);
      } else {
        REQUIRE(n == c.need);
      }
      // Nothing is ever written past cap.
      for (size_t i = cap; i < sizeof(out); ++i) REQUIRE(out[i] == 0xAA);
    }
  }
}

// --------------------------------------------------------------- round trips

TEST_CASE("proxy round trips v1 and v2 for IPv4, IPv6 and mixed families", "[proxy]") {
  Rng rng{42};
  int checked = 0;
  for (int i = 0; i < 2000; ++i) {
    const int fs = rng.below(2) ? AF_INET : AF_INET6;
    const int fd = rng.below(2) ? AF_INET : AF_INET6;
    auto s = random_endpoint(rng, fs);
    auto d = random_endpoint(rng, fd);
    // What the receiver must see: same family as sent, or both mapped.
    auto want_s = (fs != fd && fs == AF_INET) ? map_v4(s) : s;
    auto want_d = (fs != fd && fd == AF_INET) ? map_v4(d) : d;
    const bool dgram = rng.below(2) == 0;
    INFO("src " << describe(s) << " dst " << describe(d));

    Bytes v1 = v1_bytes(s, d);
    auto r1 = parse(v1);
    INFO(std::string(v1.begin(), v1.end()));
    REQUIRE(r1.status == pp::Status::Done);
    REQUIRE(r1.consumed == v1.size());
    REQUIRE_FALSE(r1.header.local);
    REQUIRE(same_endpoint(r1.header.src, want_s));
    REQUIRE(same_endpoint(r1.header.dst, want_d));

    Bytes v2 = v2_bytes(s, d, dgram);
    auto r2 = parse(v2);
    REQUIRE(r2.status == pp::Status::Done);
    REQUIRE(r2.consumed == v2.size());
    REQUIRE(v2.size() == (fs == AF_INET && fd == AF_INET ? 28u : 52u));
    REQUIRE_FALSE(r2.header.local);
    REQUIRE(r2.header.dgram == dgram);
    REQUIRE(same_endpoint(r2.header.src, want_s));
    REQUIRE(same_endpoint(r2.header.dst, want_d));
    ++checked;
  }
  CHECK(checked == 2000);
}

// ------------------------------------------------- incremental and payload

TEST_CASE("proxy every prefix is NeedMore, the full header Done, payload untouched", "[proxy]") {
  Bytes tlvs = from_hex("01 0002 6832  02 000b 6578616d706c652e636f6d  04 0000  03 0004 deadbeef");
  REQUIRE(tlvs.size() == 29);
  Bytes v2_tlv = from_hex(std::string(kSigHex) + "21 11" + "0029" + "c0000201 c6336402 1388 01bb");
  v2_tlv.insert(v2_tlv.end(), tlvs.begin(), tlvs.end());
  REQUIRE(v2_tlv.size() == 16 + 12 + 29);

  Bytes unix_hdr = from_hex(std::string(kSigHex) + "21 31 00d8");
  unix_hdr.resize(16 + 216, 0);

  struct Case {
    const char* name;
    Bytes hdr;
    bool local;
  };
  const std::vector<Case> cases = {
      {"v1 tcp4", from_str("PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n"), false},
      {"v1 tcp6", from_str("PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 0 65535\r\n"), false},
      {"v1 unknown", from_str("PROXY UNKNOWN\r\n"), true},
      {"v1 unknown+junk", from_str("PROXY UNKNOWN ffff:: whatever 1 2\r\n"), true},
      {"v2 ipv4", v2_bytes(sa("192.0.2.1", 5000), sa("198.51.100.2", 443), false), false},
      {"v2 ipv6", v2_bytes(sa("2001:db8::1", 5000), sa("2001:db8::2", 443), true), false},
      {"v2 ipv4 + tlvs", v2_tlv, false},
      {"v2 local", from_hex(std::string(kSigHex) + "20 00 0000"), true},
      {"v2 local with body", from_hex(std::string(kSigHex) + "20 11 0005 0102030405"), true},
      {"v2 unspec", from_hex(std::string(kSigHex) + "21 00 0000"), true},
      {"v2 unix", unix_hdr, true},
  };
  // Payloads that look like headers themselves must not be read as such.
  const std::vector<Bytes> payloads = {
      from_str("GET / HTTP/1.1\r\n\r\n"),
      from_hex(std::string(kSigHex) + "21 11 000c"),
      from_str("PROXY TCP4 x\r\n"),
      from_hex("00"),
  };
  for (const auto& c : cases) {
    INFO(c.name);
    const size_t n = c.hdr.size();
    for (size_t len = 0; len < n; ++len) {
      INFO("prefix " << len);
      auto r = parse(c.hdr, len);
      REQUIRE(status_name(r.status) == "NeedMore");
      REQUIRE(r.consumed == 0);
      REQUIRE(r.error == nullptr);
    }
    auto full = parse(c.hdr);
    REQUIRE(status_name(full.status) == "Done");
    REQUIRE(full.consumed == n);
    REQUIRE(full.header.local == c.local);
    for (const auto& p : payloads) {
      Bytes b = c.hdr;
      b.insert(b.end(), p.begin(), p.end());
      for (size_t len = n; len <= b.size(); ++len) {
        auto r = parse(b, len);
        REQUIRE(status_name(r.status) == "Done");
        REQUIRE(r.consumed == n);
        REQUIRE(r.header.local == full.header.local);
        REQUIRE(r.header.dgram == full.header.dgram);
        if (!c.local) {
          REQUIRE(same_endpoint(r.header.src, full.header.src));
          REQUIRE(same_endpoint(r.header.dst, full.header.dst));
        }
      }
    }
  }
}

TEST_CASE("proxy v2 TLVs are skipped but their framing is checked", "[proxy]") {
  const std::string base = std::string(kSigHex) + "21 11";
  const std::string addrs = "c0000201 c6336402 1388 01bb";

  SECTION("well-formed TLVs") {
    auto b = from_hex(base + "001c" + addrs + "01 0002 6832  04 0000  02 0005 612e636f6d");
    REQUIRE(b.size() == 16 + 28);
    auto r = parse(b);
    REQUIRE(r.status == pp::Status::Done);
    CHECK(r.consumed == 16 + 28);
    CHECK(describe(r.header.src) == "192.0.2.1:5000");
    CHECK(describe(r.header.dst) == "198.51.100.2:443");
  }
  SECTION("a TLV running past the length") {
    auto r = parse(from_hex(base + "0011" + addrs + "01 0003 6832"));
    REQUIRE(r.status == pp::Status::Invalid);
    CHECK(std::string(r.error) == "bad v2 tlv");
  }
  SECTION("trailing bytes shorter than a TLV header") {
    for (const char* tail : {"01", "01 00"}) {
      INFO(tail);
      auto body = from_hex(addrs + tail);
      char len[5];
      snprintf(len, sizeof(len), "%04zx", body.size());
      auto r = parse(from_hex(base + len + addrs + tail));
      REQUIRE(r.status == pp::Status::Invalid);
      CHECK(std::string(r.error) == "bad v2 tlv");
    }
  }
  SECTION("the largest accepted header is kMaxHeader bytes") {
    // One TLV filling everything after the 12-byte address block.
    const size_t body = pp::kMaxHeader - 16;
    const size_t vlen = body - 12 - 3;
    Bytes b = from_hex(base);
    b.push_back(static_cast<uint8_t>(body >> 8));
    b.push_back(static_cast<uint8_t>(body & 0xff));
    Bytes a = from_hex(addrs);
    b.insert(b.end(), a.begin(), a.end());
    b.push_back(0x04);  // PP2_TYPE_NOOP
    b.push_back(static_cast<uint8_t>(vlen >> 8));
    b.push_back(static_cast<uint8_t>(vlen & 0xff));
    b.resize(pp::kMaxHeader, 0x5a);
    auto r = parse(b);
    REQUIRE(r.status == pp::Status::Done);
    CHECK(r.consumed == pp::kMaxHeader);
    CHECK(parse(b, pp::kMaxHeader - 1).status == pp::Status::NeedMore);

    // One byte more is refused as soon as the length field is readable.
    b[14] = static_cast<uint8_t>((body + 1) >> 8);
    b[15] = static_cast<uint8_t>((body + 1) & 0xff);
    auto o = parse(b, 16);
    REQUIRE(o.status == pp::Status::Invalid);
    CHECK(std::string(o.error) == "oversized");
  }
}

// ----------------------------------------------------------------- malformed

TEST_CASE("proxy malformed headers are Invalid with a precise reason", "[proxy]") {
  const std::string sig = kSigHex;
  const std::string a4 = "c0000201 c6336402 1388 01bb";
  const std::string v1pad(93, 'a');  // "PROXY UNKNOWN " (14) + 93 = 107 bytes, no CRLF
  struct Case {
    const char* name;
    Bytes in;
    const char* error;
  };
  const std::vector<Case> cases = {
      // v1 / first byte
      {"http request", from_str("GET / HTTP/1.1\r\n"), "bad signature"},
      {"tls hello", from_hex("16 03 01 00 a5"), "bad signature"},
      {"lower-case proxy", from_str("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "bad signature"},
      {"PROXX", from_str("PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "bad signature"},
      {"no space after PROXY", from_str("PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "bad signature"},
      {"v1 without CRLF in 107 bytes", from_str("PROXY UNKNOWN " + v1pad), "oversized"},
      {"v1 line of 108 bytes", from_str("PROXY UNKNOWN " + v1pad + "\r\n"), "oversized"},
      {"LF without CR", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), "bad v1 line"},
      {"CR without LF", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), "bad v1 line"},
      {"NUL in address", from_str(std::string("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", 33)), "bad v1 line"},
      {"tab separator", from_str("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"), "bad v1 line"},
      {"8-bit byte", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xc3\xa9\r\n"), "bad v1 line"},
      {"UDP4", from_str("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), "bad v1 protocol"},
      {"TCP5", from_str("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), "bad v1 protocol"},
      {"UNKNOWNX", from_str("PROXY UNKNOWNX\r\n"), "bad v1 protocol"},
      {"empty protocol", from_str("PROXY \r\n"), "bad v1 protocol"},
      {"double space after PROXY", from_str("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "bad v1 protocol"},
      {"double space after TCP4", from_str("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), "bad v1 syntax"},
      {"double space between ports", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n"), "bad v1 syntax"},
      {"trailing space", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), "bad v1 syntax"},
      {"missing port", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), "bad v1 syntax"},
      {"extra field", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), "bad v1 syntax"},
      {"TCP4 alone", from_str("PROXY TCP4\r\n"), "bad v1 syntax"},
      {"TCP4 with IPv6 address", from_str("PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n"), "bad v1 address"},
      {"TCP4 with v4-mapped IPv6", from_str("PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n"), "bad v1 address"},
      {"TCP6 with IPv4 address", from_str("PROXY TCP6 2001:db8::1 5.6.7.8 1 2\r\n"), "bad v1 address"},
      {"IPv4 octet 256", from_str("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"), "bad v1 address"},
      {"IPv4 three parts", from_str("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), "bad v1 address"},
      {"IPv4 leading zero", from_str("PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n"), "bad v1 address"},
      {"IPv4 hostname", from_str("PROXY TCP4 localhost 5.6.7.8 1 2\r\n"), "bad v1 address"},
      {"IPv6 zone id", from_str("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), "bad v1 address"},
      {"IPv6 bracketed", from_str("PROXY TCP6 [::1] ::1 1 2\r\n"), "bad v1 address"},
      {"IPv6 two ::", from_str("PROXY TCP6 1::2::3 ::1 1 2\r\n"), "bad v1 address"},
      {"IPv6 token over 45 chars",
       from_str("PROXY TCP6 1111:2222:3333:4444:5555:6666:7777:8888:9999:0 ::1 1 2\r\n"), "bad v1 address"},
      {"port 65536", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n"), "bad v1 port"},
      {"port 99999", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"), "bad v1 port"},
      {"port six digits", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n"), "bad v1 port"},
      {"port with plus", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n"), "bad v1 port"},
      {"port with minus", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"), "bad v1 port"},
      {"port hex", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n"), "bad v1 port"},
      {"port leading zero", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"), "bad v1 port"},
      {"port with junk", from_str("PROXY TCP4 1.2.3.4 5.6.7.8 80a 2\r\n"), "bad v1 port"},
      // v2
      {"v2 signature byte 5", from_hex("0d0a0d0a00 0e"), "bad signature"},
      {"v2 signature last byte", from_hex("0d0a0d0a000d0a5155495400 21 11 000c" + a4), "bad signature"},
      {"v2 version 1", from_hex(sig + "11 11 000c" + a4), "bad v2 version"},
      {"v2 version 3", from_hex(sig + "31 11 000c" + a4), "bad v2 version"},
      {"v2 version 0", from_hex(sig + "01"), "bad v2 version"},
      {"v2 command 2", from_hex(sig + "22 11 000c" + a4), "bad v2 command"},
      {"v2 command 15", from_hex(sig + "2f"), "bad v2 command"},
      {"v2 family 4", from_hex(sig + "21 41 000c" + a4), "bad v2 family"},
      {"v2 family 15", from_hex(sig + "21 f1"), "bad v2 family"},
      {"v2 transport 3", from_hex(sig + "21 13 000c" + a4), "bad v2 family"},
      {"v2 inet transport unspec", from_hex(sig + "21 10 000c" + a4), "bad v2 family"},
      {"v2 unspec family with stream", from_hex(sig + "21 01 0000"), "bad v2 family"},
      {"v2 ipv4 length 11", from_hex(sig + "21 11 000b c0000201 c6336402 1388 01"), "bad v2 length"},
      {"v2 ipv4 length 0", from_hex(sig + "21 11 0000"), "bad v2 length"},
      {"v2 ipv6 length 35", from_hex(sig + "21 21 0023"), "bad v2 length"},
      {"v2 ipv6 with ipv4 length", from_hex(sig + "21 22 000c" + a4), "bad v2 length"},
      {"v2 unix length 215", from_hex(sig + "21 31 00d7"), "bad v2 length"},
      {"v2 length makes total 2049", from_hex(sig + "21 11 0801"), "oversized"},
      {"v2 length 65535", from_hex(sig + "21 11 ffff"), "oversized"},
      {"v2 local oversized", from_hex(sig + "20 00 ffff"), "oversized"},
  };
  for (const auto& c : cases) {
    INFO(c.name << ": " << to_hex(c.in));
    auto r = parse(c.in);
    REQUIRE(status_name(r.status) == "Invalid");
    REQUIRE(r.error != nullptr);
    CHECK(std::string(r.error) == c.error);
    CHECK(r.consumed == 0);
    // Invalid is final: more bytes never rescue a bad header.
    Bytes more = c.in;
    more.insert(more.end(), {'\r', '\n', 0, 0, 0, 0});
    auto m = parse(more);
    CHECK(status_name(m.status) == "Invalid");
    CHECK(std::string(m.error ? m.error : "") == c.error);
  }
}

TEST_CASE("proxy bad input is refused as early as the bytes allow", "[proxy]") {
  auto first = [](const Bytes& b) -> size_t {
    // Length of the shortest prefix that is Invalid; asserts it stays Invalid.
    size_t at = SIZE_MAX;
    for (size_t len = 0; len <= b.size(); ++len) {
      auto r = parse(b, len);
      if (at == SIZE_MAX && r.status == pp::Status::Invalid) at = len;
      if (at != SIZE_MAX) REQUIRE(r.status == pp::Status::Invalid);
      if (at == SIZE_MAX) REQUIRE(r.status == pp::Status::NeedMore);
    }
    return at;
  };
  CHECK(first(from_str("X")) == 1);
  CHECK(first(from_str("\n")) == 1);
  CHECK(first(from_str("PROXY")) == SIZE_MAX);
  CHECK(first(from_str("PRO!Y TCP4")) == 4);
  CHECK(first(from_str("PROXY TCP4 1.2.3.4\t")) == 19);
  CHECK(first(from_str("PROXY TCP4 1.2.3.4\n")) == 19);
  CHECK(first(from_str("PROXY TCP4 1.2.3.4\rx")) == 20);
  // 105 printable bytes may still end with CRLF (107 in all) ...
  Bytes long_line = from_str("PROXY UNKNOWN " + std::string(91, 'a'));
  REQUIRE(long_line.size() == 105);
  CHECK(first(long_line) == SIZE_MAX);
  Bytes ok = long_line;
  ok.push_back('\r');
  CHECK(parse(ok).status == pp::Status::NeedMore);
  ok.push_back('\n');
  auto r = parse(ok);
  REQUIRE(r.status == pp::Status::Done);
  CHECK(r.consumed == 107);
  ok[106] = 'a';
  CHECK(first(ok) == 107);
  // ... 106 bytes without a CR cannot: refused before the 107th arrives.
  long_line.push_back('a');
  CHECK(first(long_line) == 106);
  REQUIRE(std::string(parse(long_line).error) == "oversized");
  long_line.push_back('\r');
  CHECK(first(long_line) == 106);

  const std::string sig = kSigHex;
  CHECK(first(from_hex("0d0a0d0a000d0a51554954 0b")) == 12);
  CHECK(first(from_hex("0d 0d")) == 2);
  CHECK(first(from_hex(sig + "11")) == 13);
  CHECK(first(from_hex(sig + "23")) == 13);
  CHECK(first(from_hex(sig + "21 51")) == 14);
  CHECK(first(from_hex(sig + "21 11 000b")) == 16);
  CHECK(first(from_hex(sig + "21 11 0801")) == 16);
  CHECK(first(from_hex(sig + "21 11 000c")) == SIZE_MAX);  // waits for the addresses
}

TEST_CASE("proxy v1 accepts the spec's edge values", "[proxy]") {
  struct Case {
    const char* line;
    const char* src;
    const char* dst;
  };
  const std::vector<Case> cases = {
      {"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", "0.0.0.0:0", "255.255.255.255:65535"},
      {"PROXY TCP6 :: ::1 1 2\r\n", "[::]:1", "[::1]:2"},
      {"PROXY TCP6 ::FFFF:10.0.0.1 FE80::A 10 20\r\n", "[::ffff:10.0.0.1]:10", "[fe80::a]:20"},
      {"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 1:2:3:4:5:6:7:8 65535 9\r\n",
       "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[1:2:3:4:5:6:7:8]:9"},
  };
  for (const auto& c : cases) {
    INFO(c.line);
    auto r = parse(from_str(c.line));
    REQUIRE(r.status == pp::Status::Done);
    CHECK(r.consumed == strlen(c.line));
    CHECK(describe(r.header.src) == c.src);
    CHECK(describe(r.header.dst) == c.dst);
  }
  // The longest legal v1 line (107 bytes) is accepted.
  std::string longest =
      "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 "
      "65535\r\n";
  REQUIRE(longest.size() == 107);
  auto r = parse(from_str(longest));
  REQUIRE(r.status == pp::Status::Done);
  CHECK(r.consumed == 107);
  CHECK(r.header.local);
}

// ------------------------------------------------------------------ random

TEST_CASE("proxy parser survives 100000 random and mutated buffers", "[proxy]") {
  Rng rng{0x5eed};
  std::vector<Bytes> seeds = {
      from_str("PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n"),
      from_str("PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 0 65535\r\n"),
      from_str("PROXY UNKNOWN\r\n"),
      v2_bytes(sa("192.0.2.1", 5000), sa("198.51.100.2", 443), false),
      v2_bytes(sa("2001:db8::1", 5000), sa("2001:db8::2", 443), true),
      from_hex(std::string(kSigHex) + "21 11 0013 c0000201 c6336402 1388 01bb 01 0004 68322f31"),
      from_hex(std::string(kSigHex) + "20 00 0000"),
      from_hex(std::string(kSigHex) + "21 00 0000"),
  };
  static const char kV1Alphabet[] = "0123456789abcdefABCDEF.: PROXYTCP46UNKOWN\r\n+-";

  size_t counts[3] = {0, 0, 0};
  size_t remote = 0;
  for (int iter = 0; iter < 100000; ++iter) {
    Bytes b;
    switch (rng.below(5)) {
      case 0: {  // pure noise
        b.resize(rng.below(80));
        for (auto& x : b) x = rng.byte();
        break;
      }
      case 1: {  // a valid header with a few bytes flipped, maybe truncated or extended
        b = seeds[rng.below(static_cast<uint32_t>(seeds.size()))];
        for (uint32_t k = rng.below(4); k > 0; --k)
          b[rng.below(static_cast<uint32_t>(b.size()))] = rng.byte();
        if (rng.below(3) == 0) b.resize(rng.below(static_cast<uint32_t>(b.size()) + 1));
        for (uint32_t k = rng.below(3) == 0 ? rng.below(40) : 0; k > 0; --k) b.push_back(rng.byte());
        break;
      }
      case 2: {  // v2 prefix, random fixed fields and body
        b = from_hex(kSigHex);
        b.push_back(rng.below(2) ? static_cast<uint8_t>(0x20 | rng.below(3)) : rng.byte());
        static const uint8_t fams[] = {0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x10, 0x13, 0x41};
        b.push_back(rng.below(4) ? fams[rng.below(sizeof(fams))] : rng.byte());
        const uint32_t body = rng.below(4) ? rng.below(80) : rng.below(0x10000);
        b.push_back(static_cast<uint8_t>(body >> 8));
        b.push_back(static_cast<uint8_t>(body));
        for (uint32_t k = rng.below(std::min<uint32_t>(body, 300) + 20); k > 0; --k) b.push_back(rng.byte());
        break;
      }
      case 3: {  // v1-shaped text
        b = from_str(rng.below(2) ? "PROXY TCP4 " : rng.below(2) ? "PROXY TCP6 " : "PROXY ");
        for (uint32_t k = rng.below(110); k > 0; --k)
          b.push_back(static_cast<uint8_t>(kV1Alphabet[rng.below(sizeof(kV1Alphabet) - 1)]));
        if (rng.below(2)) b.insert(b.end(), {'\r', '\n'});
        break;
      }
      default: {  // a well-formed v1 line with one field replaced by noise
        auto s = random_endpoint(rng, rng.below(2) ? AF_INET : AF_INET6);
        auto d = random_endpoint(rng, s.ss_family);
        const Bytes valid = v1_bytes(s, d);
        std::string line(valid.begin(), valid.end());
        size_t at = rng.below(static_cast<uint32_t>(line.size()));
        line.insert(at, 1, kV1Alphabet[rng.below(sizeof(kV1Alphabet) - 1)]);
        b = from_str(line);
        break;
      }
    }
    INFO("iteration " << iter << ": " << to_hex(b));
    auto r = parse(b);
    counts[static_cast<int>(r.status)]++;

    // Consistent fields for each status.
    switch (r.status) {
      case pp::Status::NeedMore:
        REQUIRE(r.consumed == 0);
        REQUIRE(r.error == nullptr);
        REQUIRE(b.size() < pp::kMaxHeader);
        break;
      case pp::Status::Invalid:
        REQUIRE(r.consumed == 0);
        REQUIRE(r.error != nullptr);
        REQUIRE(strlen(r.error) > 0);
        break;
      case pp::Status::Done:
        REQUIRE(r.error == nullptr);
        REQUIRE(r.consumed > 0);
        REQUIRE(r.consumed <= b.size());
        REQUIRE(r.consumed <= pp::kMaxHeader);
        if (!r.header.local) {
          const int f = r.header.src.ss_family;
          REQUIRE((f == AF_INET || f == AF_INET6));
          REQUIRE(r.header.dst.ss_family == f);
        }
        break;
    }

    // Stateless and prefix-stable: the same bytes give the same answer, and
    // the answer for a Done header depends only on the header's own bytes.
    auto again = parse(b);
    REQUIRE(again.status == r.status);
    REQUIRE(again.consumed == r.consumed);
    REQUIRE(again.error == r.error);
    if (r.status == pp::Status::Done) {
      auto exact = parse(b, r.consumed);
      REQUIRE(exact.status == pp::Status::Done);
      REQUIRE(exact.consumed == r.consumed);
      REQUIRE(exact.header.local == r.header.local);
      REQUIRE(exact.header.dgram == r.header.dgram);
      REQUIRE(parse(b, r.consumed - 1).status == pp::Status::NeedMore);
      if (!r.header.local) {
        REQUIRE(same_endpoint(exact.header.src, r.header.src));
        REQUIRE(same_endpoint(exact.header.dst, r.header.dst));
        // Whatever we accepted, we can write back and read again.
        const bool v1 = b[0] == 'P';
        Bytes out =
            v1 ? v1_bytes(r.header.src, r.header.dst) : v2_bytes(r.header.src, r.header.dst, r.header.dgram);
        auto back = parse(out);
        REQUIRE(back.status == pp::Status::Done);
        REQUIRE(same_endpoint(back.header.src, r.header.src));
        REQUIRE(same_endpoint(back.header.dst, r.header.dst));
        ++remote;
      }
    }
    // Invalid and Done are final: extra bytes do not change them.
    if (r.status != pp::Status::NeedMore && iter % 4 == 0) {
      Bytes more = b;
      for (uint32_t k = 1 + rng.below(16); k > 0; --k) more.push_back(rng.byte());
      auto m = parse(more);
      REQUIRE(m.status == r.status);
      REQUIRE(m.consumed == r.consumed);
      REQUIRE(m.error == r.error);
    }
  }
  // The generator must reach every outcome often, or the test proves little.
  INFO("NeedMore " << counts[0] << " Done " << counts[1] << " Invalid " << counts[2] << " with addresses "
                   << remote);
  CHECK(counts[0] > 2000);
  CHECK(counts[1] > 2000);
  CHECK(counts[2] > 20000);
  CHECK(remote > 1000);
}
