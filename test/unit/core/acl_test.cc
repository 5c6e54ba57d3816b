#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "conf/config.h"
#include "core/acl.h"

using lb::conf::Cidr;
using lb::core::Acl;
using lb::core::PrefixSet;

namespace {

// Deterministic across standard libraries (the <random> distributions are not).
struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }
};

// Builds a Cidr from "addr/len" the way the config parser would (host bits
// zeroed), unless keep_host_bits.
Cidr cidr(const std::string& text, bool keep_host_bits = false) {
  Cidr c;
  c.text = text;
  auto slash = text.find('/');
  REQUIRE(slash != std::string::npos);
  std::string ip = text.substr(0, slash);
  c.prefix_len = std::stoi(text.substr(slash + 1));
  if (ip.find(':') != std::string::npos) {
    c.family = AF_INET6;
    REQUIRE(inet_pton(AF_INET6, ip.c_str(), c.bytes) == 1);
  } else {
    c.family = AF_INET;
    REQUIRE(inet_pton(AF_INET, ip.c_str(), c.bytes) == 1);
  }
  if (!keep_host_bits) {
    int width = c.family == AF_INET ? 32 : 128;
    for (int bit = c.prefix_len; bit < width; ++bit) c.bytes[bit / 8] &= ~(0x80 >> (bit % 8));
  }
  return c;
}

// A network-order address of either family, as a sockaddr.
struct Addr {
  sockaddr_storage ss{};
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
};

Addr from_bytes(int family, const uint8_t* bytes, uint16_t port = 4242) {
  Addr a;
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&a.ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    std::memcpy(&sin->sin_addr, bytes, 4);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    std::memcpy(&sin6->sin6_addr, bytes, 16);
  }
  return a;
}

Addr ip(const char* text, uint16_t port = 4242) {
  uint8_t b[16]{};
  if (std::strchr(text, ':')) {
    REQUIRE(inet_pton(AF_INET6, text, b) == 1);
    return from_bytes(AF_INET6, b, port);
  }
  REQUIRE(inet_pton(AF_INET, text, b) == 1);
  return from_bytes(AF_INET, b, port);
}

// Reference membership: byte-wise prefix comparison, no range arithmetic,
// v4-mapped handled as documented (IPv6 list, then the embedded IPv4).
bool prefix_match(const Cidr& c, int family, const uint8_t* a) {
  if (c.family != family) return false;
  for (int bit = 0; bit < c.prefix_len; ++bit) {
    uint8_t m = static_cast<uint8_t>(0x80 >> (bit % 8));
    if ((c.bytes[bit / 8] & m) != (a[bit / 8] & m)) return false;
  }
  return true;
}

bool reference_contains(const std::vector<Cidr>& cidrs, int family, const uint8_t* a) {
  for (const Cidr& c : cidrs)
    if (prefix_match(c, family, a)) return true;
  if (family == AF_INET6) {
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(a, kMapped, 12) == 0) return reference_contains(cidrs, AF_INET, a + 12);
  }
  return false;
}

// Adds `delta` (+1 / -1) to a big-endian address of `len` bytes, wrapping.
void add_one(uint8_t* a, int len, int delta) {
  for (int i = len - 1; i >= 0; --i) {
    int v = a[i] + delta;
    a[i] = static_cast<uint8_t>(v);
    if (v >= 0 && v <= 255) break;
  }
}

// Random prefix confined to a small region of the space so that prefixes
// overlap, nest and touch often.
Cidr random_cidr(SplitMix64& rng, int family) {
  Cidr c;
  c.family = family;
  int width = family == AF_INET ? 32 : 128;
  int len = static_cast<int>(rng.below(width + 1));
  if (rng.below(4) != 0) len = width - static_cast<int>(rng.below(family == AF_INET ? 12 : 20));
  c.prefix_len = len;
  int bytes = width / 8;
  for (int i = 0; i < bytes; ++i) c.bytes[i] = static_cast<uint8_t>(rng.next());
  // Common high bits: 10.x for IPv4, 2001:db8::/32 for IPv6, and a narrow
  // third byte, so random prefixes collide.
  if (family == AF_INET) {
    c.bytes[0] = 10;
    c.bytes[1] = static_cast<uint8_t>(rng.below(4));
  } else {
    const uint8_t pfx[4] = {0x20, 0x01, 0x0d, 0xb8};
    std::memcpy(c.bytes, pfx, 4);
    c.bytes[4] = static_cast<uint8_t>(rng.below(4));
    for (int i = 5; i < 14; ++i) c.bytes[i] = static_cast<uint8_t>(rng.below(2));
  }
  for (int bit = len; bit < width; ++bit) c.bytes[bit / 8] &= ~(0x80 >> (bit % 8));
  return c;
}

// Checks one address against both implementations; returns the verdict.
bool check(const PrefixSet& set, const std::vector<Cidr>& cidrs, int family, const uint8_t* a) {
  Addr addr = from_bytes(family, a);
  bool want = reference_contains(cidrs, family, a);
  bool got = set.contains(addr.sa());
  if (got != want) {
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(family, a, buf, sizeof buf);
    FAIL_CHECK("mismatch for " << buf << ": got " << got << " want " << want);
  }
  return want;
}

}  // namespace

TEST_CASE("PrefixSet agrees with a brute-force reference", "[acl]") {
  SplitMix64 rng{12345};
  size_t lookups = 0, hits = 0;
  for (int round = 0; round < 40; ++round) {
    std::vector<Cidr> cidrs;
    size_t n = 1 + rng.below(60);
    for (size_t i = 0; i < n; ++i) cidrs.push_back(random_cidr(rng, rng.below(2) ? AF_INET : AF_INET6));
    PrefixSet set(cidrs);
    REQUIRE(set.range_count() <= cidrs.size());
    REQUIRE_FALSE(set.empty());

    for (const Cidr& c : cidrs) {
      int len = c.family == AF_INET ? 4 : 16;
      int width = len * 8;
      uint8_t first[16], last[16];
      std::memcpy(first, c.bytes, 16);
      std::memcpy(last, c.bytes, 16);
      for (int bit = c.prefix_len; bit < width; ++bit) last[bit / 8] |= (0x80 >> (bit % 8));
      // The exact ends are inside by definition.
      CHECK(check(set, cidrs, c.family, first));
      CHECK(check(set, cidrs, c.family, last));
      // One step outside each end: inside only if another prefix covers it.
      uint8_t before[16], after[16];
      std::memcpy(before, first, 16);
      std::memcpy(after, last, 16);
      add_one(before, len, -1);
      add_one(after, len, +1);
      hits += check(set, cidrs, c.family, before);
      hits += check(set, cidrs, c.family, after);
      // A random address within the prefix.
      uint8_t mid[16];
      std::memcpy(mid, c.bytes, 16);
      for (int bit = c.prefix_len; bit < width; ++bit)
        if (rng.below(2)) mid[bit / 8] |= (0x80 >> (bit % 8));
      CHECK(check(set, cidrs, c.family, mid));
      lookups += 5;
    }
    // Random addresses in the same crowded regions, of both families, plus
    // v4-mapped forms of IPv4 ones.
    for (int i = 0; i < 250; ++i) {
      int family = rng.below(2) ? AF_INET : AF_INET6;
      Cidr probe = random_cidr(rng, family);  // only its address is used
      uint8_t a[16];
      std::memcpy(a, probe.bytes, 16);
      for (int k = (family == AF_INET ? 2 : 14); k < (family == AF_INET ? 4 : 16); ++k)
        a[k] = static_cast<uint8_t>(rng.next());
      hits += check(set, cidrs, family, a);
      if (family == AF_INET) {
        uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        std::memcpy(mapped + 12, a, 4);
        hits += check(set, cidrs, AF_INET6, mapped);
        ++lookups;
      }
      ++lookups;
    }
  }
  REQUIRE(lookups >= 10000);
  // Both verdicts must have been exercised for the comparison to mean much.
  REQUIRE(hits > lookups / 20);
  REQUIRE(hits < lookups - lookups / 20);
}

TEST_CASE("PrefixSet merges overlapping and adjacent prefixes", "[acl]") {
  CHECK(PrefixSet({cidr("10.0.0.0/9"), cidr("10.128.0.0/9")}).range_count() == 1);
  CHECK(PrefixSet({cidr("10.128.0.0/9"), cidr("10.0.0.0/9")}).range_count() == 1);
  CHECK(PrefixSet({cidr("10.0.0.0/8"), cidr("10.1.0.0/16"), cidr("10.1.2.3/32")}).range_count() == 1);
  CHECK(PrefixSet({cidr("10.1.0.0/16"), cidr("10.0.0.0/8")}).range_count() == 1);
  CHECK(PrefixSet({cidr("10.0.0.0/24"), cidr("10.0.2.0/24")}).range_count() == 2);
  CHECK(PrefixSet({cidr("10.0.0.0/24"), cidr("10.0.2.0/24"), cidr("10.0.1.0/24")}).range_count() == 1);
  CHECK(PrefixSet({cidr("192.0.2.1/32"), cidr("192.0.2.1/32")}).range_count() == 1);
  // The top of the space: last + 1 would wrap.
  CHECK(PrefixSet({cidr("255.255.255.254/32"), cidr("255.255.255.255/32")}).range_count() == 1);
  CHECK(PrefixSet({cidr("0.0.0.0/0"), cidr("255.255.255.255/32"), cidr("1.2.3.0/24")}).range_count() == 1);
  CHECK(PrefixSet({cidr("2001:db8::/33"), cidr("2001:db8:8000::/33")}).range_count() == 1);
  CHECK(PrefixSet({cidr("::/0"), cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")}).range_count() == 1);
  CHECK(PrefixSet({cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/128"),
                   cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")})
            .range_count() == 1);
  // Families never merge with each other.
  CHECK(PrefixSet({cidr("0.0.0.0/0"), cidr("::/0")}).range_count() == 2);

  PrefixSet merged({cidr("10.0.0.0/9"), cidr("10.128.0.0/9")});
  CHECK(merged.contains(ip("10.0.0.0").sa()));
  CHECK(merged.contains(ip("10.127.255.255").sa()));
  CHECK(merged.contains(ip("10.128.0.0").sa()));
  CHECK(merged.contains(ip("10.255.255.255").sa()));
  CHECK_FALSE(merged.contains(ip("9.255.255.255").sa()));
  CHECK_FALSE(merged.contains(ip("11.0.0.0").sa()));
}

TEST_CASE("PrefixSet edge prefixes and families", "[acl]") {
  SECTION("empty set contains nothing") {
    PrefixSet set;
    CHECK(set.empty());
    CHECK(set.range_count() == 0);
    CHECK_FALSE(set.contains(ip("0.0.0.0").sa()));
    CHECK_FALSE(set.contains(ip("::").sa()));
    CHECK(PrefixSet(std::vector<Cidr>{}).empty());
  }
  SECTION("0.0.0.0/0 is every IPv4 address and no IPv6 one") {
    PrefixSet set({cidr("0.0.0.0/0")});
    CHECK(set.contains(ip("0.0.0.0").sa()));
    CHECK(set.contains(ip("255.255.255.255").sa()));
    CHECK(set.contains(ip("127.0.0.1").sa()));
    CHECK_FALSE(set.contains(ip("::1").sa()));
    CHECK_FALSE(set.contains(ip("2001:db8::1").sa()));
    CHECK(set.contains(ip("::ffff:203.0.113.9").sa()));  // v4-mapped
  }
  SECTION("::/0 is every IPv6 address and no AF_INET one") {
    PrefixSet set({cidr("::/0")});
    CHECK(set.contains(ip("::").sa()));
    CHECK(set.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").sa()));
    CHECK(set.contains(ip("::ffff:1.2.3.4").sa()));
    CHECK_FALSE(set.contains(ip("1.2.3.4").sa()));
  }
  SECTION("/32 and /128 are single addresses") {
    PrefixSet set({cidr("192.0.2.7/32"), cidr("2001:db8::7/128")});
    CHECK(set.range_count() == 2);
    CHECK(set.contains(ip("192.0.2.7").sa()));
    CHECK_FALSE(set.contains(ip("192.0.2.6").sa()));
    CHECK_FALSE(set.contains(ip("192.0.2.8").sa()));
    CHECK(set.contains(ip("2001:db8::7").sa()));
    CHECK_FALSE(set.contains(ip("2001:db8::6").sa()));
    CHECK_FALSE(set.contains(ip("2001:db8::8").sa()));
  }
  SECTION("IPv4 and IPv6 in one list") {
    PrefixSet set({cidr("2001:db8:1::/48"), cidr("198.51.100.0/24"), cidr("fe80::/10")});
    CHECK(set.range_count() == 3);
    CHECK(set.contains(ip("198.51.100.200").sa()));
    CHECK(set.contains(ip("2001:db8:1:ffff::1").sa()));
    CHECK(set.contains(ip("febf::1").sa()));
    CHECK_FALSE(set.contains(ip("fec0::1").sa()));
    CHECK_FALSE(set.contains(ip("2001:db8:2::1").sa()));
    CHECK_FALSE(set.contains(ip("198.51.101.0").sa()));
  }
  SECTION("v4-mapped IPv6 is looked up as IPv4 too") {
    PrefixSet set({cidr("203.0.113.0/24")});
    CHECK(set.contains(ip("::ffff:203.0.113.1").sa()));
    CHECK_FALSE(set.contains(ip("::ffff:203.0.114.1").sa()));
    // Not mapped: the IPv4-compatible form and a NAT64 prefix are plain IPv6.
    CHECK_FALSE(set.contains(ip("::203.0.113.1").sa()));
    CHECK_FALSE(set.contains(ip("64:ff9b::203.0.113.1").sa()));
    // And a mapped prefix in the IPv6 list matches mapped addresses.
    PrefixSet v6({cidr("::ffff:0:0/96")});
    CHECK(v6.contains(ip("::ffff:8.8.8.8").sa()));
    CHECK_FALSE(v6.contains(ip("8.8.8.8").sa()));
  }
  SECTION("host bits left in the input are ignored") {
    PrefixSet set({cidr("10.1.2.3/8", true), cidr("2001:db8::1/32", true)});
    CHECK(set.contains(ip("10.200.0.0").sa()));
    CHECK(set.contains(ip("2001:db8:ffff::").sa()));
    CHECK_FALSE(set.contains(ip("11.0.0.0").sa()));
  }
  SECTION("unknown family and null are not contained") {
    PrefixSet set({cidr("0.0.0.0/0"), cidr("::/0")});
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    CHECK_FALSE(set.contains(reinterpret_cast<const sockaddr*>(&un)));
    CHECK_FALSE(set.contains(nullptr));
    Cidr bogus = cidr("10.0.0.0/8");
    bogus.family = AF_UNIX;
    CHECK(PrefixSet({bogus}).empty());
  }
}

TEST_CASE("PrefixSet builds and looks up 10,000 prefixes", "[acl]") {
  // Distinct random /24s and /64s: membership is then exactly "is the
  // address's /24 (/64) one of them", which a std::set answers independently.
  SplitMix64 rng{777};
  std::vector<Cidr> cidrs;
  std::set<uint32_t> nets4;
  std::set<uint64_t> nets6;
  while (cidrs.size() < 10000) {
    Cidr c;
    if (rng.below(2)) {
      // One of the 65,536 /24s of 10.0.0.0/8: about 5,000 are picked, so
      // some are consecutive (and merge) and most lookups miss.
      uint32_t net = 0x0a000000u | static_cast<uint32_t>(rng.below(1u << 16)) << 8;
      if (!nets4.insert(net >> 8).second) continue;
      c.family = AF_INET;
      c.prefix_len = 24;
      uint32_t be = htonl(net);
      std::memcpy(c.bytes, &be, 4);
    } else {
      uint64_t hi = 0x20010db800000000ULL | rng.below(1u << 16);
      if (!nets6.insert(hi).second) continue;
      c.family = AF_INET6;
      c.prefix_len = 64;
      for (int i = 0; i < 8; ++i) c.bytes[i] = static_cast<uint8_t>(hi >> (56 - 8 * i));
    }
    cidrs.push_back(c);
  }
  PrefixSet set(cidrs);
  // Consecutive /24s (/64s) merge: one range per run of consecutive networks.
  size_t runs = 0;
  uint64_t prev = UINT64_MAX - 1;
  for (uint64_t n : nets4) {
    runs += (n != prev + 1);
    prev = n;
  }
  prev = UINT64_MAX - 1;
  for (uint64_t n : nets6) {
    runs += (n != prev + 1);
    prev = n;
  }
  CHECK(set.range_count() == runs);

  size_t hits = 0;
  for (int i = 0; i < 20000; ++i) {
    if (i % 2) {
      uint32_t a = 0x0a000000u | static_cast<uint32_t>(rng.below(1u << 24));
      uint32_t be = htonl(a);
      Addr addr = from_bytes(AF_INET, reinterpret_cast<const uint8_t*>(&be));
      bool want = nets4.count(a >> 8) != 0;
      hits += want;
      REQUIRE(set.contains(addr.sa()) == want);
    } else {
      uint64_t hi = 0x20010db800000000ULL | rng.below(1u << 16);
      uint64_t lo = rng.next();
      uint8_t b[16];
      for (int k = 0; k < 8; ++k) b[k] = static_cast<uint8_t>(hi >> (56 - 8 * k));
      for (int k = 0; k < 8; ++k) b[8 + k] = static_cast<uint8_t>(lo >> (56 - 8 * k));
      Addr addr = from_bytes(AF_INET6, b);
      bool want = nets6.count(hi) != 0;
      hits += want;
      REQUIRE(set.contains(addr.sa()) == want);
    }
  }
  CHECK(hits > 1000);
  CHECK(hits < 19000);
}

TEST_CASE("Acl: allow, deny, deny wins", "[acl]") {
  SECTION("no lists: disabled, everything permitted") {
    Acl acl;
    CHECK_FALSE(acl.enabled());
    CHECK(acl.permits(ip("1.2.3.4").sa()));
    CHECK(acl.permits(ip("::1").sa()));
    CHECK_FALSE(Acl({}, {}).enabled());
  }
  SECTION("allow only") {
    Acl acl({cidr("10.0.0.0/8"), cidr("2001:db8::/32")}, {});
    CHECK(acl.enabled());
    CHECK(acl.permits(ip("10.9.8.7").sa()));
    CHECK(acl.permits(ip("2001:db8::99").sa()));
    CHECK(acl.permits(ip("::ffff:10.1.1.1").sa()));
    CHECK_FALSE(acl.permits(ip("11.0.0.1").sa()));
    CHECK_FALSE(acl.permits(ip("2001:db9::1").sa()));
    CHECK_FALSE(acl.permits(ip("::ffff:11.1.1.1").sa()));
  }
  SECTION("deny only") {
    Acl acl({}, {cidr("192.0.2.0/24")});
    CHECK(acl.enabled());
    CHECK_FALSE(acl.permits(ip("192.0.2.55").sa()));
    CHECK_FALSE(acl.permits(ip("::ffff:192.0.2.55").sa()));
    CHECK(acl.permits(ip("192.0.3.1").sa()));
    CHECK(acl.permits(ip("::1").sa()));
  }
  SECTION("deny wins over a broader and an identical allow") {
    Acl acl({cidr("0.0.0.0/0"), cidr("10.1.0.0/16"), cidr("::/0")},
            {cidr("10.1.0.0/16"), cidr("2001:db8::/32")});
    CHECK(acl.permits(ip("10.2.0.1").sa()));
    CHECK_FALSE(acl.permits(ip("10.1.0.1").sa()));
    CHECK_FALSE(acl.permits(ip("10.1.255.255").sa()));
    CHECK(acl.permits(ip("10.0.255.255").sa()));
    CHECK(acl.permits(ip("10.2.0.0").sa()));
    CHECK_FALSE(acl.permits(ip("2001:db8:5::1").sa()));
    CHECK(acl.permits(ip("2001:db9::1").sa()));
    CHECK_FALSE(acl.permits(ip("::ffff:10.1.2.3").sa()));
  }
  SECTION("deny everything") {
    Acl acl({cidr("10.0.0.0/8")}, {cidr("0.0.0.0/0"), cidr("::/0")});
    CHECK_FALSE(acl.permits(ip("10.0.0.1").sa()));
    CHECK_FALSE(acl.permits(ip("::1").sa()));
  }
  SECTION("unknown family: refused by an allow list, not by a deny list") {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    const auto* sa = reinterpret_cast<const sockaddr*>(&un);
    CHECK_FALSE(Acl({cidr("0.0.0.0/0")}, {}).permits(sa));
    CHECK(Acl({}, {cidr("0.0.0.0/0")}).permits(sa));
  }
}
