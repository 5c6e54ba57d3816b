// The UDP session table and the small UDP staging types: seeded hashing,
// shrinking, the bounded pending queue and the warning limiter.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "core/udp/batch.h"
#include "core/udp/session_table.h"

using namespace lb::core::udp;

namespace {
PeerKey key(uint32_t ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(ip);
  return PeerKey::from(reinterpret_cast<sockaddr*>(&a));
}
}  // namespace

TEST_CASE("PeerKey round-trips IPv4 and IPv6 socket addresses", "[udp][session_table]") {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(5353);
  inet_pton(AF_INET6, "2001:db8::7", &a.sin6_addr);
  PeerKey k = PeerKey::from(reinterpret_cast<sockaddr*>(&a));
  sockaddr_storage back;
  k.to_sockaddr(&back);
  CHECK(std::memcmp(&back, &a, sizeof a) == 0);
  PeerKey k4 = key(0x7f000001, 53);
  k4.to_sockaddr(&back);
  CHECK(PeerKey::from(back) == k4);
  CHECK(addr_len(back) == sizeof(sockaddr_in));
}

TEST_CASE("each session table has its own random seed, so slots differ between processes",
          "[udp][session_table]") {
  SessionTable<int> t1, t2;
  CHECK(t1.seed() != t2.seed());
  SeededHash h1{t1.seed()}, h2{t2.seed()};
  int same = 0;
  for (uint16_t p = 0; p < 64; ++p)
    same += (h1(key(0x7f000001, p)) & 1023) == (h2(key(0x7f000001, p)) & 1023);
  CHECK(same < 8);
}

TEST_CASE("the session table gives memory back as sessions leave", "[udp][session_table]") {
  SessionTable<int> t;
  for (uint32_t i = 0; i < 100000; ++i) t.insert(key(0x7f000000 + i, 1000), static_cast<int>(i));
  const size_t peak = t.capacity();
  CHECK(peak >= 200000);
  for (uint32_t i = 0; i < 99990; ++i) REQUIRE(t.erase(key(0x7f000000 + i, 1000)));
  CHECK(t.size() == 10);
  CHECK(t.capacity() <= 128);
  for (uint32_t i = 99990; i < 100000; ++i) {
    int* v = t.find(key(0x7f000000 + i, 1000));
    REQUIRE(v);
    CHECK(*v == static_cast<int>(i));
  }
}

TEST_CASE("PendingQueue keeps order and destination, bounded in bytes", "[udp][batch]") {
  PendingQueue q;
  sockaddr_storage to{};
  to.ss_family = AF_INET;
  std::string big(60000, 'x');
  size_t pushed = 0;
  while (q.push(to, 3, "H", 1, big.data(), big.size())) ++pushed;
  CHECK(pushed == kMaxQueuedBytes / 60001);
  CHECK(q.bytes() == pushed * 60001);
  CHECK(q.front()->source == 3);
  CHECK(q.front()->data()[0] == 'H');
  while (!q.empty()) q.pop();
  CHECK(q.bytes() == 0);
  CHECK(q.push(to, 0, nullptr, 0, "a", 1));
}
