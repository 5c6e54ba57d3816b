#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "core/source_limiter.h"

using lb::core::SourceLimiter;

namespace {

struct Addr {
  sockaddr_storage ss{};
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
};

Addr ip(const char* text, uint16_t port = 40000) {
  Addr a;
  if (std::strchr(text, ':')) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    REQUIRE(inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&a.ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    REQUIRE(inet_pton(AF_INET, text, &sin->sin_addr) == 1);
  }
  return a;
}

}  // namespace

TEST_CASE("SourceLimiter enforces the limit and release frees a slot", "[source_limiter]") {
  SourceLimiter lim;
  Addr a = ip("192.0.2.1");
  CHECK(lim.count(a.sa()) == 0);
  CHECK(lim.tracked_sources() == 0);
  for (int i = 0; i < 3; ++i) REQUIRE(lim.try_acquire(a.sa(), 3));
  CHECK(lim.count(a.sa()) == 3);
  CHECK_FALSE(lim.try_acquire(a.sa(), 3));
  CHECK_FALSE(lim.try_acquire(a.sa(), 3));
  CHECK(lim.count(a.sa()) == 3);  // refusals count nothing
  CHECK(lim.tracked_sources() == 1);

  lim.release(a.sa());
  CHECK(lim.count(a.sa()) == 2);
  CHECK(lim.try_acquire(a.sa(), 3));
  CHECK_FALSE(lim.try_acquire(a.sa(), 3));

  // A lower limit (after a reload) refuses until enough have closed.
  CHECK_FALSE(lim.try_acquire(a.sa(), 1));
  // A higher one admits more.
  CHECK(lim.try_acquire(a.sa(), 4));
  CHECK(lim.count(a.sa()) == 4);

  for (int i = 0; i < 4; ++i) lim.release(a.sa());
  CHECK(lim.count(a.sa()) == 0);
  CHECK(lim.tracked_sources() == 0);  // the entry is gone, not left at 0

  // Limit 1: exactly one at a time.
  CHECK(lim.try_acquire(a.sa(), 1));
  CHECK_FALSE(lim.try_acquire(a.sa(), 1));
  lim.release(a.sa());
  CHECK(lim.try_acquire(a.sa(), 1));
  lim.release(a.sa());
  CHECK(lim.tracked_sources() == 0);
}

TEST_CASE("SourceLimiter limit 0 is unlimited but still counted", "[source_limiter]") {
  SourceLimiter lim;
  Addr a = ip("2001:db8::5");
  for (int i = 0; i < 1000; ++i) REQUIRE(lim.try_acquire(a.sa(), 0));
  CHECK(lim.count(a.sa()) == 1000);
  // Counts stay exact if the limit is then set (a reload from 0 to N).
  CHECK_FALSE(lim.try_acquire(a.sa(), 1000));
  CHECK(lim.try_acquire(a.sa(), 1001));
  for (int i = 0; i < 1001; ++i) lim.release(a.sa());
  CHECK(lim.count(a.sa()) == 0);
  CHECK(lim.tracked_sources() == 0);
}

TEST_CASE("SourceLimiter keys on the IPv4 address or the IPv6 /64 only", "[source_limiter]") {
  SourceLimiter lim;
  SECTION("different IPs are independent") {
    Addr a = ip("10.0.0.1"), b = ip("10.0.0.2"), c = ip("2001:db8:0:1::1"), d = ip("2001:db8:0:2::1");
    REQUIRE(lim.try_acquire(a.sa(), 2));
    REQUIRE(lim.try_acquire(a.sa(), 2));
    CHECK_FALSE(lim.try_acquire(a.sa(), 2));
    CHECK(lim.try_acquire(b.sa(), 2));
    CHECK(lim.try_acquire(c.sa(), 1));
    CHECK(lim.try_acquire(d.sa(), 1));
    CHECK_FALSE(lim.try_acquire(c.sa(), 1));
    CHECK(lim.count(a.sa()) == 2);
    CHECK(lim.count(b.sa()) == 1);
    CHECK(lim.count(c.sa()) == 1);
    CHECK(lim.count(d.sa()) == 1);
    CHECK(lim.tracked_sources() == 4);
    lim.release(b.sa());
    CHECK(lim.count(a.sa()) == 2);
    CHECK(lim.tracked_sources() == 3);
    lim.release(a.sa());
    lim.release(a.sa());
    lim.release(c.sa());
    lim.release(d.sa());
    CHECK(lim.tracked_sources() == 0);
  }
  SECTION("same IP on different ports is counted together") {
    Addr p1 = ip("198.51.100.7", 1111), p2 = ip("198.51.100.7", 2222), p3 = ip("198.51.100.7", 3333);
    REQUIRE(lim.try_acquire(p1.sa(), 2));
    REQUIRE(lim.try_acquire(p2.sa(), 2));
    CHECK_FALSE(lim.try_acquire(p3.sa(), 2));
    CHECK(lim.count(p3.sa()) == 2);
    CHECK(lim.tracked_sources() == 1);
    lim.release(p3.sa());  // any port releases the IP's slot
    CHECK(lim.try_acquire(p3.sa(), 2));
    lim.release(p1.sa());
    lim.release(p2.sa());
    CHECK(lim.tracked_sources() == 0);
  }
  SECTION("a v4-mapped IPv6 address is the same source as its IPv4") {
    Addr v4 = ip("203.0.113.9", 1), mapped = ip("::ffff:203.0.113.9", 2);
    Addr compat = ip("::203.0.113.9", 3);  // not mapped: a different source
    REQUIRE(lim.try_acquire(v4.sa(), 2));
    REQUIRE(lim.try_acquire(mapped.sa(), 2));
    CHECK_FALSE(lim.try_acquire(v4.sa(), 2));
    CHECK_FALSE(lim.try_acquire(mapped.sa(), 2));
    CHECK(lim.try_acquire(compat.sa(), 2));
    CHECK(lim.count(v4.sa()) == 2);
    CHECK(lim.count(mapped.sa()) == 2);
    CHECK(lim.tracked_sources() == 2);
    lim.release(mapped.sa());
    lim.release(v4.sa());
    lim.release(compat.sa());
    CHECK(lim.tracked_sources() == 0);
  }
}

TEST_CASE("SourceLimiter counts an IPv6 /64 as one source", "[source_limiter]") {
  SourceLimiter lim;
  // One host, any interface identifier in its /64: the limit holds.
  Addr h1 = ip("2001:db8:aa:bb::1"), h2 = ip("2001:db8:aa:bb:1234:5678:9abc:def0"),
       h3 = ip("2001:db8:aa:bb:ffff:ffff:ffff:ffff");
  REQUIRE(lim.try_acquire(h1.sa(), 2));
  REQUIRE(lim.try_acquire(h2.sa(), 2));
  CHECK_FALSE(lim.try_acquire(h3.sa(), 2));
  CHECK(lim.count(h3.sa()) == 2);
  CHECK(lim.tracked_sources() == 1);
  // The neighbouring /64s are other sources.
  Addr next = ip("2001:db8:aa:bc::1"), prev = ip("2001:db8:aa:ba::1");
  CHECK(lim.try_acquire(next.sa(), 2));
  CHECK(lim.try_acquire(prev.sa(), 2));
  CHECK(lim.tracked_sources() == 3);
  // Any address of the /64 releases the source's slot.
  lim.release(h3.sa());
  CHECK(lim.try_acquire(h3.sa(), 2));
  for (const Addr* a : {&h1, &h2, &h3}) lim.release(a->sa());
  lim.release(next.sa());
  lim.release(prev.sa());
  CHECK(lim.tracked_sources() == 0);

  // IPv4 clients stay per address, mapped or not: ::ffff:0:0/96 is not one /64.
  Addr m1 = ip("::ffff:192.0.2.1"), m2 = ip("::ffff:192.0.2.2");
  CHECK(lim.try_acquire(m1.sa(), 1));
  CHECK(lim.try_acquire(m2.sa(), 1));
  CHECK(lim.tracked_sources() == 2);
  lim.release(m1.sa());
  lim.release(m2.sa());
}

TEST_CASE("SourceLimiter source_key: IPv4 as mapped, IPv6 as its /64", "[source_limiter]") {
  auto key = [](const Addr& a) {
    std::array<uint8_t, 16> k{};
    REQUIRE(SourceLimiter::source_key(a.sa(), k.data()));
    return k;
  };
  const std::array<uint8_t, 16> v4{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1};
  CHECK(key(ip("192.0.2.1")) == v4);
  CHECK(key(ip("::ffff:192.0.2.1")) == v4);
  const std::array<uint8_t, 16> v6{0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0};
  CHECK(key(ip("2001:db8:1:2:a:b:c:d")) == v6);
  CHECK(key(ip("2001:db8:1:2::")) == v6);
}

// The hash that places sources in shards and buckets is keyed per limiter
// from the OS, so nobody can compute in advance which addresses collide.
TEST_CASE("SourceLimiter seeds its hash per instance from the OS", "[source_limiter][seed]") {
  SourceLimiter a, b;
  CHECK(a.seed() != b.seed());
  CHECK(a.seed() != 0x5eed50c11b17ULL);  // the fixed seed it used to have
  // Where 64 sources land differs between the two: with 64 shards, equal
  // placement of all of them by chance has probability 64^-64.
  std::vector<Addr> sources;
  for (int i = 0; i < 64; ++i) sources.push_back(ip(("10.9.8." + std::to_string(i)).c_str()));
  size_t same = 0;
  for (const Addr& s : sources) same += a.shard_index(s.sa()) == b.shard_index(s.sa()) ? 1 : 0;
  CHECK(same < sources.size());
  // And each still finds its own entries.
  for (const Addr& s : sources) {
    REQUIRE(a.try_acquire(s.sa(), 1));
    REQUIRE(b.try_acquire(s.sa(), 1));
  }
  for (const Addr& s : sources) {
    CHECK(a.count(s.sa()) == 1);
    CHECK(b.count(s.sa()) == 1);
    CHECK_FALSE(a.try_acquire(s.sa(), 1));
    a.release(s.sa());
    b.release(s.sa());
  }
  CHECK(a.tracked_sources() == 0);
  CHECK(b.tracked_sources() == 0);
}

TEST_CASE("SourceLimiter ignores what it cannot key", "[source_limiter]") {
  SourceLimiter lim;
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  const auto* sa = reinterpret_cast<const sockaddr*>(&un);
  CHECK(lim.try_acquire(sa, 1));
  CHECK(lim.try_acquire(sa, 1));
  CHECK(lim.count(sa) == 0);
  CHECK(lim.tracked_sources() == 0);
  lim.release(sa);

  // An unmatched release neither wraps the count nor creates an entry.
  Addr a = ip("192.0.2.77");
  lim.release(a.sa());
  CHECK(lim.count(a.sa()) == 0);
  CHECK(lim.tracked_sources() == 0);
  CHECK(lim.try_acquire(a.sa(), 1));
  CHECK_FALSE(lim.try_acquire(a.sa(), 1));
  lim.release(a.sa());
  CHECK(lim.tracked_sources() == 0);
}

TEST_CASE("SourceLimiter does not grow with the number of clients seen", "[source_limiter]") {
  SourceLimiter lim;
  std::vector<Addr> open;
  for (uint32_t i = 0; i < 5000; ++i) {
    Addr a;
    auto* sin = reinterpret_cast<sockaddr_in*>(&a.ss);
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(0x0a000000u + i);
    REQUIRE(lim.try_acquire(a.sa(), 1));
    open.push_back(a);
  }
  CHECK(lim.tracked_sources() == 5000);
  for (const Addr& a : open) lim.release(a.sa());
  CHECK(lim.tracked_sources() == 0);
}

TEST_CASE("SourceLimiter never exceeds the limit under concurrent use", "[source_limiter]") {
  // Each thread tries to hold up to kLimit connections per IP at once, so with
  // four threads every IP is oversubscribed and refusals are the norm. A
  // thread bumps the IP's in-flight counter only after a successful acquire
  // and drops it before releasing, so in-flight never exceeds the limiter's
  // own count: observing more than kLimit means the limiter let one too many
  // through.
  constexpr uint64_t kLimit = 3;
  constexpr int kThreads = 4;
  constexpr int kIterations = 200000;
  const std::array<Addr, 4> ips = {ip("192.0.2.1"), ip("192.0.2.2"), ip("2001:db8::1"),
                                   ip("::ffff:192.0.2.1")};  // same source as ips[0]
  constexpr std::array<int, 4> kSource = {0, 1, 2, 0};
  std::array<std::atomic<int64_t>, 3> in_flight{};
  std::array<std::atomic<int64_t>, 3> max_seen{};
  std::atomic<uint64_t> acquired{0};
  std::atomic<bool> go{false};

  SourceLimiter lim;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      std::array<std::deque<int>, 3> held;  // by source: index into ips used to acquire
      uint64_t state = 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(t + 1);
      uint64_t ok = 0;
      for (int i = 0; i < kIterations; ++i) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        int which = static_cast<int>(state % ips.size());
        int src = kSource[which];
        if (held[src].size() < kLimit && lim.try_acquire(ips[which].sa(), kLimit)) {
          ++ok;
          int64_t now = in_flight[src].fetch_add(1) + 1;
          int64_t prev = max_seen[src].load();
          while (now > prev && !max_seen[src].compare_exchange_weak(prev, now)) {
          }
          held[src].push_back(which);
        } else {
          if (!held[src].empty()) {
            in_flight[src].fetch_sub(1);
            // Oldest first; for source 0 this is either spelling of the IP.
            lim.release(ips[held[src].front()].sa());
            held[src].pop_front();
          }
        }
      }
      for (int s = 0; s < 3; ++s) {
        for (int which : held[s]) {
          in_flight[s].fetch_sub(1);
          lim.release(ips[which].sa());
        }
      }
      acquired += ok;
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();

  for (int s = 0; s < 3; ++s) {
    INFO("source " << s);
    CHECK(max_seen[s].load() <= static_cast<int64_t>(kLimit));
    CHECK(max_seen[s].load() >= 1);
    CHECK(in_flight[s].load() == 0);
  }
  CHECK(acquired.load() > 0);
  CHECK(lim.tracked_sources() == 0);
  for (const Addr& a : ips) CHECK(lim.count(a.sa()) == 0);
}
