// UDP load balancing end to end: real dnsmasq servers and UDP echo servers
// behind the real lb binary, on loopback.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <thread>

#include "test/support/child_process.h"
#include "test/support/deadline.h"
#include "test/support/dns.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"
#include "test/support/udp.h"

using namespace lb::test;

TEST_CASE("DNS through lb: correct answers, every backend used, no session left", "[udp][dns]") {
  Dnsmasq a("10.0.0.1"), b("10.0.0.2");
  REQUIRE(a.start(in(seconds(30))));
  REQUIRE(b.start(in(seconds(30))));
  LbProcess lb(udp_config("udp_responses = 1\nsession_timeout = \"30s\"", "", {a.address(), b.address()}));
  REQUIRE(lb.wait_started());
  uint16_t port = lb.listener_port("udp");

  std::map<std::string, int> answers;
  for (int i = 0; i < 40; ++i) {
    // A new socket per query, as a stub resolver does: a new session each time.
    int fd = udp_socket();
    uint16_t id = static_cast<uint16_t>(1000 + i);
    REQUIRE(send_to(fd, port, dns_query(id, "example.test")));
    auto r = recv_within(fd, in(seconds(5)));
    ::close(fd);
    REQUIRE(r);
    CHECK(dns_id(*r) == id);
    answers[dns_first_a(*r)]++;
  }
  CHECK(answers.size() == 2);
  CHECK(answers["10.0.0.1"] + answers["10.0.0.2"] == 40);
  // udp_responses = 1: each session ended with its answer, long before session_timeout.
  CHECK(wait_until([&] { return metric(lb.admin_port(), "lb_listener_active{listener=\"udp\"}") == 0.0; },
                   in(seconds(5))));
  CHECK(metric(lb.admin_port(), "lb_listener_connections_total{listener=\"udp\"}") == 40.0);
  CHECK(metric(lb.admin_port(), "lb_udp_datagrams_total{listener=\"udp\",direction=\"in\"}") == 40.0);
  CHECK(metric(lb.admin_port(), "lb_udp_datagrams_total{listener=\"udp\",direction=\"out\"}") == 40.0);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a resolver with several queries in flight keeps one session until the last answer", "[udp][dns]") {
  // The backend answers only once all five queries are in, so they are truly in flight together:
  // with a prompt backend, a slow client (or a sanitizer build) may see the first answer before it
  // sends the second query, and then a second session is correct.
  UdpEcho a("dns", "127.0.0.1", 5);
  LbProcess lb(udp_config("udp_responses = 1", "", {a.address()}));
  REQUIRE(lb.wait_started());
  int fd = udp_socket();
  for (uint16_t id = 1; id <= 5; ++id)
    REQUIRE(send_to(fd, lb.listener_port("udp"), dns_query(id, "example.test")));
  std::set<uint16_t> ids;
  for (int i = 0; i < 5; ++i) {
    auto r = recv_within(fd, in(seconds(5)));
    REQUIRE(r);
    REQUIRE(r->rfind("dns:", 0) == 0);
    ids.insert(dns_id(r->substr(4)));
  }
  ::close(fd);
  CHECK(ids == std::set<uint16_t>{1, 2, 3, 4, 5});
  CHECK(metric(lb.admin_port(), "lb_listener_connections_total{listener=\"udp\"}") == 1.0);
  CHECK(wait_until([&] { return metric(lb.admin_port(), "lb_listener_active{listener=\"udp\"}") == 0.0; },
                   in(seconds(5))));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a game client sticks to one backend and gets every reply", "[udp]") {
  UdpEcho e1("one"), e2("two"), e3("three");
  LbProcess lb(udp_config("session_timeout = \"30s\"", "selector = \"maglev\"",
                          {e1.address(), e2.address(), e3.address()}, 2));
  REQUIRE(lb.wait_started());
  int fd = udp_socket();
  std::set<std::string> servers;
  for (int i = 0; i < 300; ++i) {
    std::string payload = "tick " + std::to_string(i);
    REQUIRE(send_to(fd, lb.listener_port("udp"), payload));
    auto r = recv_within(fd, in(seconds(5)));
    REQUIRE(r);
    auto colon = r->find(':');
    REQUIRE(colon != std::string::npos);
    CHECK(r->substr(colon + 1) == payload);
    servers.insert(r->substr(0, colon));
  }
  ::close(fd);
  CHECK(servers.size() == 1);
  CHECK(metric(lb.admin_port(), "lb_listener_connections_total{listener=\"udp\"}") == 1.0);
  CHECK(metric(lb.admin_port(), "lb_listener_active{listener=\"udp\"}") == 1.0);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a silent session expires after session_timeout", "[udp]") {
  UdpEcho e("one");
  LbProcess lb(udp_config("session_timeout = \"300ms\"", "", {e.address()}));
  REQUIRE(lb.wait_started());
  int fd = udp_socket();
  REQUIRE(send_to(fd, lb.listener_port("udp"), "hello"));
  REQUIRE(recv_within(fd, in(seconds(5))));
  CHECK(metric(lb.admin_port(), "lb_listener_active{listener=\"udp\"}") == 1.0);
  CHECK(wait_until([&] { return metric(lb.admin_port(), "lb_listener_active{listener=\"udp\"}") == 0.0; },
                   in(seconds(5))));
  // The client is served again, in a new session.
  REQUIRE(send_to(fd, lb.listener_port("udp"), "again"));
  auto r = recv_within(fd, in(seconds(5)));
  ::close(fd);
  REQUIRE(r);
  CHECK(*r == "one:again");
  CHECK(metric(lb.admin_port(), "lb_listener_connections_total{listener=\"udp\"}") == 2.0);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("large datagrams are forwarded intact both ways", "[udp]") {
  UdpEcho e("e");
  LbProcess lb(udp_config("", "", {e.address()}));
  REQUIRE(lb.wait_started());
  int fd = udp_socket();
  for (size_t size : {size_t(8 * 1024), size_t(60 * 1024), size_t(65507 - 2)}) {
    std::string payload(size, '\0');
    for (size_t i = 0; i < size; ++i) payload[i] = static_cast<char>((i * 131 + size) & 0xff);
    REQUIRE(send_to(fd, lb.listener_port("udp"), payload));
    auto r = recv_within(fd, in(seconds(5)));
    REQUIRE(r);
    REQUIRE(r->size() == size + 2);
    CHECK(r->substr(2) == payload);
  }
  ::close(fd);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a burst of replies to several clients arrives intact, each reply once", "[udp]") {
  // The backend holds every answer until all 160 requests are in, then sends them at once: lb
  // finds several sessions ready with many replies each, more than one sendmmsg batch holds, so
  // replies are staged, flushed and staged again within one wake-up. Every reply must reach its
  // own client byte for byte, none twice.
  constexpr int kClients = 4, kEach = 40;
  UdpEcho e("e", "127.0.0.1", kClients * kEach);
  LbProcess lb(udp_config("session_timeout = \"30s\"", "", {e.address()}));
  REQUIRE(lb.wait_started());
  auto payload = [](int c, int i) {
    std::string p = "c" + std::to_string(c) + "-" + std::to_string(i) + "-";
    p.append(static_cast<size_t>((i * 37 + c * 11) % 300), static_cast<char>('a' + (i + c) % 26));
    return p;
  };
  int fds[kClients];
  for (int c = 0; c < kClients; ++c) {
    fds[c] = udp_socket();
    REQUIRE(fds[c] >= 0);
  }
  for (int i = 0; i < kEach; ++i)
    for (int c = 0; c < kClients; ++c) REQUIRE(send_to(fds[c], lb.listener_port("udp"), payload(c, i)));
  for (int c = 0; c < kClients; ++c) {
    std::multiset<std::string> got, want;
    for (int i = 0; i < kEach; ++i) want.insert("e:" + payload(c, i));
    for (int i = 0; i < kEach; ++i) {
      auto r = recv_within(fds[c], in(seconds(5)));
      INFO("client " << c << " reply " << i << "; the backend received " << e.received());
      REQUIRE(r);
      got.insert(*r);
    }
    CHECK(got == want);
    CHECK_FALSE(recv_within(fds[c], in(milliseconds(50))));  // nothing more, no duplicate
    ::close(fds[c]);
  }
  CHECK(metric(lb.admin_port(), "lb_udp_datagrams_total{listener=\"udp\",direction=\"out\"}") ==
        double(kClients * kEach));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a backend that fails moves its live client to another backend", "[udp]") {
  auto e1 = std::make_unique<UdpEcho>("one");
  UdpEcho e2("two");
  LbProcess lb(udp_config("session_timeout = \"30s\"", "", {e1->address(), e2.address()}));
  REQUIRE(lb.wait_started());
  int fd = udp_socket();
  // Find a client socket that lands on "one".
  std::string first;
  REQUIRE(send_to(fd, lb.listener_port("udp"), "x"));
  auto r = recv_within(fd, in(seconds(5)));
  REQUIRE(r);
  if (r->rfind("one:", 0) != 0) {
    ::close(fd);
    fd = udp_socket();  // round robin: the next session goes to "one"
    REQUIRE(send_to(fd, lb.listener_port("udp"), "x"));
    r = recv_within(fd, in(seconds(5)));
    REQUIRE(r);
  }
  REQUIRE(r->rfind("one:", 0) == 0);
  const std::string dead = e1->address();
  e1.reset();  // the port now answers with ICMP port unreachable
  // Keep sending: the ICMP error ends the session, a later datagram re-picks
  // and lands on "two" (round robin moves on past the failed backend).
  bool moved = wait_until(
      [&] {
        send_to(fd, lb.listener_port("udp"), "y");
        auto reply = recv_within(fd, in(milliseconds(200)));
        return reply && *reply == "two:y";
      },
      in(seconds(10)), milliseconds(1));
  ::close(fd);
  CHECK(moved);
  // The ICMP error counted against the dead backend.
  auto failures =
      metric(lb.admin_port(), "lb_backend_connect_failures_total{pool=\"p\",backend=\"" + dead + "\"}");
  REQUIRE(failures);
  CHECK(*failures >= 1.0);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("UDP over IPv6: a client on ::1 is balanced and answered", "[udp][ipv6]") {
  UdpEcho e1("one", "::1"), e2("two", "::1");
  LbProcess lb(udp_config("udp_responses = 1", "", {e1.address(), e2.address()}, 1, "[::1]:0"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  std::map<std::string, int> by_server;
  for (int i = 0; i < 20; ++i) {
    int fd = udp_socket(0, "::1");
    REQUIRE(fd >= 0);
    const std::string payload = "v6 " + std::to_string(i);
    REQUIRE(send_to(fd, port, payload, "::1"));
    auto r = recv_within(fd, in(seconds(5)));
    ::close(fd);
    REQUIRE(r);
    auto colon = r->find(':');
    REQUIRE(colon != std::string::npos);
    CHECK(r->substr(colon + 1) == payload);
    by_server[r->substr(0, colon)]++;
  }
  CHECK(by_server["one"] == 10);
  CHECK(by_server["two"] == 10);
  CHECK(wait_until([&] { return metric(lb.admin_port(), "lb_listener_active{listener=\"udp\"}") == 0.0; },
                   in(seconds(5))));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("past max_connections new UDP clients are dropped and counted, live sessions go on",
          "[udp][limits]") {
  UdpEcho e("e");
  // [global] max_connections counts live UDP sessions.
  LbProcess lb(
      udp_config("session_timeout = \"30s\"", "", {e.address()}, 1, "127.0.0.1:0", "max_connections = 2"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  int a = udp_socket(), b = udp_socket(), c = udp_socket();
  REQUIRE(send_to(a, port, "a1"));
  REQUIRE(recv_within(a, in(seconds(5))) == std::optional<std::string>("e:a1"));
  REQUIRE(send_to(b, port, "b1"));
  REQUIRE(recv_within(b, in(seconds(5))) == std::optional<std::string>("e:b1"));
  // The third client is over the limit: dropped, never forwarded.
  const uint64_t before = e.received();
  for (int i = 0; i < 3; ++i) REQUIRE(send_to(c, port, "c"));
  CHECK(wait_until(
      [&] {
        return metric(lb.admin_port(), "lb_listener_rejected_total{listener=\"udp\",reason=\"limit\"}") ==
               3.0;
      },
      in(seconds(5))));
  CHECK_FALSE(recv_within(c, in(milliseconds(200))));
  CHECK(e.received() == before);
  // The two live sessions keep working.
  for (int i = 0; i < 10; ++i) {
    REQUIRE(send_to(a, port, "a"));
    CHECK(recv_within(a, in(seconds(5))) == std::optional<std::string>("e:a"));
    REQUIRE(send_to(b, port, "b"));
    CHECK(recv_within(b, in(seconds(5))) == std::optional<std::string>("e:b"));
  }
  CHECK(metric(lb.admin_port(), "lb_listener_active{listener=\"udp\"}") == 2.0);
  ::close(a);
  ::close(b);
  ::close(c);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a listener's own max_connections and max_connections_per_source bound UDP sessions",
          "[udp][limits]") {
  UdpEcho e("e");
  LbProcess lb(udp_config("session_timeout = \"30s\"\nmax_connections = 3\nmax_connections_per_source = 2",
                          "", {e.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  // Per source: 127.0.0.2 gets two sessions (two ports), not a third.
  int s1 = udp_socket(0, "127.0.0.2"), s2 = udp_socket(0, "127.0.0.2"), s3 = udp_socket(0, "127.0.0.2");
  REQUIRE(send_to(s1, port, "1"));
  CHECK(recv_within(s1, in(seconds(5))));
  REQUIRE(send_to(s2, port, "2"));
  CHECK(recv_within(s2, in(seconds(5))));
  REQUIRE(send_to(s3, port, "3"));
  CHECK_FALSE(recv_within(s3, in(milliseconds(300))));
  // Listener: a third source gets the third and last session.
  int o1 = udp_socket(0, "127.0.0.3"), o2 = udp_socket(0, "127.0.0.4");
  REQUIRE(send_to(o1, port, "o1"));
  CHECK(recv_within(o1, in(seconds(5))));
  REQUIRE(send_to(o2, port, "o2"));
  CHECK_FALSE(recv_within(o2, in(milliseconds(300))));
  CHECK(metric(lb.admin_port(), "lb_listener_rejected_total{listener=\"udp\",reason=\"limit\"}") == 2.0);
  for (int fd : {s1, s2, s3, o1, o2}) ::close(fd);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("UDP allow/deny is checked before a session exists", "[udp][acl]") {
  UdpEcho e("e");
  LbProcess lb(udp_config("allow = [\"127.0.0.0/24\"]\ndeny = [\"127.0.0.3\"]", "", {e.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  int ok = udp_socket(0, "127.0.0.2"), denied = udp_socket(0, "127.0.0.3"),
      outside = udp_socket(0, "127.0.1.2");
  REQUIRE(send_to(denied, port, "x"));
  REQUIRE(send_to(outside, port, "x"));
  REQUIRE(send_to(ok, port, "y"));
  CHECK(recv_within(ok, in(seconds(5))) == std::optional<std::string>("e:y"));
  CHECK(wait_until(
      [&] {
        return metric(lb.admin_port(), "lb_listener_rejected_total{listener=\"udp\",reason=\"acl\"}") == 2.0;
      },
      in(seconds(5))));
  CHECK_FALSE(recv_within(denied, in(milliseconds(200))));
  CHECK_FALSE(recv_within(outside, in(milliseconds(10))));
  CHECK(e.received() == 1);
  CHECK(metric(lb.admin_port(), "lb_listener_connections_total{listener=\"udp\"}") == 1.0);
  for (int fd : {ok, denied, outside}) ::close(fd);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a denied UDP client past max_connections is refused as a limit, in the documented order",
          "[udp][acl][limits]") {
  // docs/configuration.md: the limits come first, then allow/deny, for a new
  // UDP client as for a TCP connection.
  UdpEcho e("e");
  LbProcess lb(udp_config("session_timeout = \"30s\"\nmax_connections = 1\ndeny = [\"127.0.0.3\"]", "",
                          {e.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  int ok = udp_socket(0, "127.0.0.2"), denied = udp_socket(0, "127.0.0.3");
  REQUIRE(send_to(ok, port, "y"));
  CHECK(recv_within(ok, in(seconds(5))) == std::optional<std::string>("e:y"));
  REQUIRE(send_to(denied, port, "x"));
  CHECK(wait_until(
      [&] {
        return metric(lb.admin_port(), "lb_listener_rejected_total{listener=\"udp\",reason=\"limit\"}") ==
               1.0;
      },
      in(seconds(5))));
  CHECK(metric(lb.admin_port(), "lb_listener_rejected_total{listener=\"udp\",reason=\"acl\"}") == 0.0);
  CHECK(e.received() == 1);
  for (int fd : {ok, denied}) ::close(fd);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("proxy_protocol v2 on UDP: every datagram to the backend carries the client's address",
          "[udp][proxy]") {
  UdpEcho e("e");  // answers "e:" + the whole datagram it got, header included
  LbProcess lb(udp_config("proxy_protocol = \"v2\"\nsession_timeout = \"30s\"", "", {e.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  int fd = udp_socket(0, "127.0.0.5");
  const uint16_t client_port = udp_local_port(fd);
  for (const std::string& payload : {std::string("first"), std::string("second"), std::string(60000, 'z')}) {
    REQUIRE(send_to(fd, port, payload));
    auto r = recv_within(fd, in(seconds(5)));
    REQUIRE(r);
    REQUIRE(r->rfind("e:", 0) == 0);
    std::string got = r->substr(2);
    REQUIRE(got.size() == 28 + payload.size());
    CHECK(std::memcmp(got.data(), "\r\n\r\n\0\r\nQUIT\n", 12) == 0);
    CHECK(static_cast<uint8_t>(got[12]) == 0x21);  // v2, PROXY
    CHECK(static_cast<uint8_t>(got[13]) == 0x12);  // IPv4, DGRAM
    CHECK(static_cast<uint8_t>(got[14]) == 0);
    CHECK(static_cast<uint8_t>(got[15]) == 12);
    char src[INET_ADDRSTRLEN], dst[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, got.data() + 16, src, sizeof src);
    inet_ntop(AF_INET, got.data() + 20, dst, sizeof dst);
    CHECK(std::string(src) == "127.0.0.5");
    CHECK(std::string(dst) == "127.0.0.1");
    auto port_at = [&](size_t i) {
      return static_cast<uint16_t>((static_cast<uint8_t>(got[i]) << 8) | static_cast<uint8_t>(got[i + 1]));
    };
    CHECK(port_at(24) == client_port);
    CHECK(port_at(26) == port);
    CHECK(got.substr(28) == payload);
  }
  ::close(fd);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("every ended UDP session writes one access log line", "[udp][access_log]") {
  Dnsmasq d("10.0.0.9");
  REQUIRE(d.start(in(seconds(30))));
  TempDir dir;
  const std::string log_path = dir.path() + "/access.log";
  LbProcess lb(udp_config("udp_responses = 1", "", {d.address()}, 1, "127.0.0.1:0",
                          "access_log = \"" + log_path + "\""));
  REQUIRE(lb.wait_started());
  int fd = udp_socket(0, "127.0.0.6");
  const uint16_t client_port = udp_local_port(fd);
  REQUIRE(send_to(fd, lb.listener_port("udp"), dns_query(77, "example.test")));
  auto r = recv_within(fd, in(seconds(5)));
  ::close(fd);
  REQUIRE(r);
  std::string line;
  CHECK(wait_until(
      [&] {
        std::ifstream in_file(log_path);
        std::getline(in_file, line);
        return !line.empty();
      },
      in(seconds(5))));
  INFO(line);
  CHECK(line.find("\"listener\":\"udp\"") != std::string::npos);
  CHECK(line.find("\"client\":\"127.0.0.6:" + std::to_string(client_port) + "\"") != std::string::npos);
  CHECK(line.find("\"backend\":\"" + d.address() + "\"") != std::string::npos);
  CHECK(line.find("\"bytes_to_backend\":" + std::to_string(dns_query(77, "example.test").size())) !=
        std::string::npos);
  CHECK(line.find("\"bytes_to_client\":" + std::to_string(r->size())) != std::string::npos);
  CHECK(line.find("\"result\":\"ok\"") != std::string::npos);
  CHECK(lb.terminate() == 0);
}
