// UpstreamSet against real loopback sockets: routes are unique per backend
// address, bounded by sockets x sources, replies and ICMP errors reach the
// session that owns the route.
#include "core/udp/upstream_set.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "test/support/deadline.h"

using lb::core::udp::Route;
using lb::core::udp::UpstreamSet;
using namespace lb::test;

namespace {

sockaddr_storage v4(const char* ip, uint16_t port = 0) {
  sockaddr_storage s{};
  auto& in = reinterpret_cast<sockaddr_in&>(s);
  in.sin_family = AF_INET;
  in.sin_port = htons(port);
  inet_pton(AF_INET, ip, &in.sin_addr);
  return s;
}

// A backend: a bound socket on 127.0.0.1.
struct Backend {
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_storage addr = v4("127.0.0.1");
  Backend() {
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(sockaddr_in));
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  }
  ~Backend() { close(); }
  void close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  // Receives one datagram; returns its source as "ip:port" and echoes "re:" + data.
  std::string echo_one() {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return "";
    char buf[512];
    sockaddr_storage from{};
    socklen_t len = sizeof from;
    ssize_t n = ::recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0) return "";
    std::string reply = "re:" + std::string(buf, static_cast<size_t>(n));
    ::sendto(fd, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), len);
    char ip[INET_ADDRSTRLEN];
    auto& in = reinterpret_cast<sockaddr_in&>(from);
    inet_ntop(AF_INET, &in.sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(in.sin_port));
  }
};

struct Recorder final : UpstreamSet::Handler {
  std::vector<char> buf = std::vector<char>(8 * 2048);
  unsigned used = 0;
  std::map<void*, std::vector<std::string>> replies;
  std::map<void*, int> errors;
  char* reply_slots(unsigned* room) override {
    used = 0;
    *room = 8;
    return buf.data();
  }
  void reply_slots_taken(unsigned n) override { used = n; }
  void upstream_reply(void* owner, char* data, size_t len) override {
    replies[owner].emplace_back(data, len);
  }
  void upstream_error(void* owner, int err) override { errors[owner] = err; }
};

// Polls the set until `done` or 5 s.
template <typename Done>
bool pump(UpstreamSet& set, Recorder& rec, Done done) {
  return wait_until(
      [&] {
        pollfd p{set.epoll_fd(), POLLIN, 0};
        ::poll(&p, 1, 10);
        set.poll(rec);
        return done();
      },
      in(seconds(5)), milliseconds(1));
}

void send_one(UpstreamSet& set, const Route& r, const sockaddr_storage& to, const std::string& data) {
  iovec iov{const_cast<char*>(data.data()), data.size()};
  bool taken = false;
  set.send(r, to, nullptr, 0, &iov, 1, &taken);
  REQUIRE(taken);
}

}  // namespace

TEST_CASE("UpstreamSet: a route is unique per backend address, bounded by sockets x sources",
          "[udp][upstream]") {
  UpstreamSet set(2, 2048, {v4("127.0.5.1"), v4("127.0.5.2")});
  REQUIRE(set.init() == 0);
  Backend a, b;
  CHECK(set.capacity(AF_INET) == 4);
  int owners[6];
  Route r[6];
  std::set<std::pair<int, int>> pairs;
  for (int i = 0; i < 4; ++i) {
    REQUIRE(set.acquire(a.addr, &owners[i], &r[i]) == 0);
    pairs.insert({r[i].sock, r[i].source});
  }
  CHECK(pairs.size() == 4);  // four distinct (socket, source) towards a
  Route extra;
  CHECK(set.acquire(a.addr, &owners[4], &extra) == -EADDRNOTAVAIL);
  // Another backend reuses the same sockets: no new fd.
  REQUIRE(set.acquire(b.addr, &owners[5], &r[5]) == 0);
  CHECK(set.open_sockets() == 2);
  CHECK(set.routes_in_use() == 5);

  // The backend sees four different (address, port) sources; each reply
  // reaches the owner of its route.
  Recorder rec;
  std::set<std::string> sources;
  for (int i = 0; i < 4; ++i) {
    send_one(set, r[i], a.addr, std::to_string(i));
    sources.insert(a.echo_one());
  }
  CHECK(sources.size() == 4);
  CHECK(sources.count("127.0.5.1:" + sources.begin()->substr(sources.begin()->find(':') + 1)) == 1);
  REQUIRE(pump(set, rec, [&] { return rec.replies.size() == 4; }));
  for (int i = 0; i < 4; ++i)
    CHECK(rec.replies[&owners[i]] == std::vector<std::string>{"re:" + std::to_string(i)});

  // A released route is free at once, and a late reply for it is dropped.
  set.release(a.addr, r[2]);
  CHECK(set.routes_in_use() == 4);
  Route again;
  REQUIRE(set.acquire(a.addr, &owners[4], &again) == 0);
  CHECK(again.sock == r[2].sock);
  CHECK(again.source == r[2].source);
  set.release(a.addr, again);
  send_one(set, r[1], a.addr, "x");
  a.echo_one();
  REQUIRE(pump(set, rec, [&] { return rec.replies[&owners[1]].size() == 2; }));
  CHECK(rec.replies.count(&owners[4]) == 0);

  // ICMP port unreachable from a closed backend ends only its own route.
  b.close();
  send_one(set, r[5], b.addr, "to a closed port");
  REQUIRE(pump(set, rec, [&] { return rec.errors.count(&owners[5]) == 1; }));
  CHECK(rec.errors[&owners[5]] == ECONNREFUSED);
  CHECK(rec.errors.size() == 1);
  // The shared socket still works for the others afterwards.
  send_one(set, r[0], a.addr, "after");
  CHECK(a.echo_one() != "");
  REQUIRE(pump(set, rec, [&] { return rec.replies[&owners[0]].size() == 2; }));
  // A socket still carrying a route stays; unused ones close on the second trim.
  for (int i : {1, 3}) set.release(a.addr, r[i]);
  set.release(b.addr, r[5]);
  set.trim();
  CHECK(set.open_sockets() == 2);
  set.trim();
  CHECK(set.open_sockets() == 1);  // r[0]'s socket
  set.release(a.addr, r[0]);
  CHECK(set.routes_in_use() == 0);
  set.trim();
  set.trim();
  CHECK(set.open_sockets() == 0);
  // And they open again when needed.
  REQUIRE(set.acquire(a.addr, &owners[0], &r[0]) == 0);
  CHECK(set.open_sockets() == 1);
  send_one(set, r[0], a.addr, "reopened");
  CHECK(a.echo_one() != "");
  REQUIRE(pump(set, rec, [&] { return rec.replies[&owners[0]].size() == 3; }));
  set.release(a.addr, r[0]);
}

TEST_CASE("UpstreamSet without source addresses: one route per socket and backend, kernel's source",
          "[udp][upstream]") {
  UpstreamSet set(3, 2048, {});
  REQUIRE(set.init() == 0);
  Backend a;
  CHECK(set.capacity(AF_INET) == 3);
  int o[4];
  Route r[4];
  for (int i = 0; i < 3; ++i) REQUIRE(set.acquire(a.addr, &o[i], &r[i]) == 0);
  CHECK(set.acquire(a.addr, &o[3], &r[3]) == -EADDRNOTAVAIL);
  CHECK(set.open_sockets() == 3);
  Recorder rec;
  for (int i = 0; i < 3; ++i) {
    send_one(set, r[i], a.addr, std::to_string(i));
    CHECK(a.echo_one().rfind("127.0.0.1:", 0) == 0);
  }
  REQUIRE(pump(set, rec, [&] { return rec.replies.size() == 3; }));
  for (int i = 0; i < 3; ++i)
    CHECK(rec.replies[&o[i]] == std::vector<std::string>{"re:" + std::to_string(i)});
}

TEST_CASE("udp_source CIDRs expand to their addresses, bounded", "[udp][upstream]") {
  std::vector<lb::conf::Cidr> cidrs(2);
  cidrs[0].family = AF_INET;
  inet_pton(AF_INET, "127.0.2.254", cidrs[0].bytes);
  cidrs[0].prefix_len = 31;
  cidrs[1].family = AF_INET6;
  inet_pton(AF_INET6, "fd00::", cidrs[1].bytes);
  cidrs[1].prefix_len = 120;
  auto out = lb::core::udp::expand_sources(cidrs, 5);
  REQUIRE(out.size() == 5);
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in&>(out[1]).sin_addr, buf, sizeof buf);
  CHECK(std::string(buf) == "127.0.2.255");
  inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6&>(out[4]).sin6_addr, buf, sizeof buf);
  CHECK(std::string(buf) == "fd00::2");
}
