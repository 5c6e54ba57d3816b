// flow_hash: the documented key layout (core/hash/flow_hash.h).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "conf/config.h"
#include "core/hash/flow_hash.h"
#include "core/hash/hash.h"
#include "core/select/flow_hash.h"

using namespace lb::hash;

namespace {

sockaddr_in v4(const char* ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  REQUIRE(inet_pton(AF_INET, ip, &a.sin_addr) == 1);
  return a;
}

sockaddr_in6 v6(const char* ip, uint16_t port) {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  REQUIRE(inet_pton(AF_INET6, ip, &a.sin6_addr) == 1);
  return a;
}

const sockaddr* sa(const void* p) { return static_cast<const sockaddr*>(p); }

std::vector<unsigned char> key_of(const sockaddr* a, bool with_port) {
  unsigned char out[kMaxFlowKeyBytes];
  const size_t n = flow_key(a, with_port, out);
  return {out, out + n};
}

}  // namespace

TEST_CASE("flow key of an IPv4 client", "[flow_hash]") {
  const auto a = v4("10.1.2.3", 443);
  CHECK(key_of(sa(&a), false) == std::vector<unsigned char>{10, 1, 2, 3});
  // 443 = 0x01bb, big-endian after the address.
  CHECK(key_of(sa(&a), true) == std::vector<unsigned char>{10, 1, 2, 3, 0x01, 0xbb});

  const unsigned char addr_only[] = {10, 1, 2, 3};
  const unsigned char with_port[] = {10, 1, 2, 3, 0x01, 0xbb};
  CHECK(flow_hash(sa(&a), false) == xxh64(addr_only, 4, 0));
  CHECK(flow_hash(sa(&a), true) == xxh64(with_port, 6, 0));
  CHECK(flow_hash(sa(&a), lb::conf::HashKey::SourceIp) == xxh64(addr_only, 4, 0));
  CHECK(flow_hash(sa(&a), lb::conf::HashKey::SourceIpPort) == xxh64(with_port, 6, 0));
}

TEST_CASE("flow key of an IPv6 client", "[flow_hash]") {
  const auto a = v6("2001:db8::1", 8080);  // 8080 = 0x1f90
  const std::vector<unsigned char> addr = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  CHECK(key_of(sa(&a), false) == addr);
  auto with_port = addr;
  with_port.push_back(0x1f);
  with_port.push_back(0x90);
  CHECK(key_of(sa(&a), true) == with_port);
  CHECK(flow_hash(sa(&a), lb::conf::HashKey::SourceIp) == xxh64(addr.data(), 16, 0));
  CHECK(flow_hash(sa(&a), lb::conf::HashKey::SourceIpPort) == xxh64(with_port.data(), 18, 0));

  // Flow label and scope id are not part of the key.
  auto b = a;
  b.sin6_flowinfo = htonl(0x12345);
  b.sin6_scope_id = 3;
  CHECK(flow_hash(sa(&b), true) == flow_hash(sa(&a), true));
}

TEST_CASE("IPv4-mapped IPv6 hashes like the IPv4 address", "[flow_hash]") {
  const auto a4 = v4("192.0.2.7", 5000);
  const auto a6 = v6("::ffff:192.0.2.7", 5000);
  CHECK(key_of(sa(&a6), true) == key_of(sa(&a4), true));
  CHECK(flow_hash(sa(&a6), lb::conf::HashKey::SourceIp) == flow_hash(sa(&a4), lb::conf::HashKey::SourceIp));
  CHECK(flow_hash(sa(&a6), lb::conf::HashKey::SourceIpPort) ==
        flow_hash(sa(&a4), lb::conf::HashKey::SourceIpPort));
  // Only the ::ffff:0:0/96 prefix is mapped: IPv4-compatible ::a.b.c.d is not.
  const auto compat = v6("::192.0.2.7", 5000);
  CHECK(key_of(sa(&compat), false).size() == 16);
}

TEST_CASE("the key separates what it should", "[flow_hash]") {
  const auto a = v4("10.0.0.1", 1000);
  const auto b = v4("10.0.0.1", 1001);
  const auto c = v4("10.0.0.2", 1000);
  CHECK(flow_hash(sa(&a), lb::conf::HashKey::SourceIp) == flow_hash(sa(&b), lb::conf::HashKey::SourceIp));
  CHECK(flow_hash(sa(&a), lb::conf::HashKey::SourceIpPort) !=
        flow_hash(sa(&b), lb::conf::HashKey::SourceIpPort));
  CHECK(flow_hash(sa(&a), lb::conf::HashKey::SourceIp) != flow_hash(sa(&c), lb::conf::HashKey::SourceIp));
}

TEST_CASE("other families and null give the empty key", "[flow_hash]") {
  sockaddr_un u{};
  u.sun_family = AF_UNIX;
  CHECK(key_of(sa(&u), true).empty());
  CHECK(flow_hash(sa(&u), true) == 0xEF46DB3751D8E999ULL);  // xxh64 of nothing
  CHECK(flow_hash(nullptr, false) == 0xEF46DB3751D8E999ULL);
}
