// UDP at scale, end to end: many client endpoints (a UdpSwarm: many source
// addresses and ports on few sockets) through the real lb binary. The long
// versions (100,000 sessions, resolver and game profiles) are in
// bench/udp_scale.py; these are sized for CI.
#include <unistd.h>

#include <algorithm>
#include <csignal>

#include <catch2/catch.hpp>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "test/support/deadline.h"
#include "test/support/dns.h"
#include "test/support/lb_process.h"
#include "test/support/proc_net.h"
#include "test/support/udp.h"

using namespace lb::test;

namespace {

// Sends payload(i) from every endpoint in [from, to) of the swarm, in windows,
// until each has had a reply (a lost datagram is sent again, at most `tries`
// times). Returns the reply of each endpoint ("" when none came).
std::vector<std::string> ask_all(UdpSwarm& swarm, uint16_t port, size_t from, size_t to, int tries = 6) {
  std::vector<std::string> got(swarm.size());
  constexpr size_t kWindow = 500;
  for (size_t start = from; start < to; start += kWindow) {
    size_t end = std::min(to, start + kWindow);
    for (int attempt = 0; attempt < tries; ++attempt) {
      size_t missing = 0;
      for (size_t i = start; i < end; ++i)
        if (got[i].empty()) {
          swarm.send(i, port, std::to_string(i));
          ++missing;
        }
      if (missing == 0) break;
      for (auto& r : swarm.receive(missing, in(seconds(3))))
        if (r.endpoint < got.size()) got[r.endpoint] = r.data;
    }
  }
  return got;
}

std::string series(const std::string& name, const std::string& labels) { return name + "{" + labels + "}"; }

}  // namespace

TEST_CASE("20,000 UDP sessions share few upstream sockets: all answered, spread even, fds bounded",
          "[udp][scale]") {
  const bool one_backend = GENERATE(false, true);
  std::vector<std::unique_ptr<UdpEcho>> backends;
  std::vector<std::string> addresses;
  for (int b = 0; b < (one_backend ? 1 : 4); ++b) {
    backends.push_back(std::make_unique<UdpEcho>("b" + std::to_string(b)));
    addresses.push_back(backends.back()->address());
  }
  constexpr size_t kSessions = 20000;
  constexpr size_t kSources = 16;
  // UDP health probes must keep passing while the sessions are open.
  LbProcess lb(udp_config("session_timeout = \"300s\"\nudp_source = [\"127.0.2.0/28\"]",
                          "[pool.health_check]\ntype = \"udp\"\nudp_send = \"ping\"\nudp_expect = \"ping\"\n"
                          "interval = \"200ms\"\ntimeout = \"1s\"\n",
                          addresses));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  const int fds_before = lb.fd_count();
  auto probe_series = [](const std::string& address, const std::string& result) {
    return series("lb_health_checks_total",
                  "pool=\"p\",backend=\"" + address + "\",result=\"" + result + "\"");
  };
  for (auto& a : addresses)
    REQUIRE(
        wait_until([&] { return metric(lb.admin_port(), probe_series(a, "pass")) >= 1.0; }, in(seconds(10))));
  std::map<std::string, double> fails_before;
  for (auto& a : addresses) fails_before[a] = metric(lb.admin_port(), probe_series(a, "fail")).value_or(0);
  UdpSwarm swarm(kSessions, "127.3.0.1", 250);
  REQUIRE(swarm.ok());
  auto got = ask_all(swarm, port, 0, kSessions);
  std::map<std::string, size_t> by_backend;
  size_t answered = 0;
  for (size_t i = 0; i < kSessions; ++i) {
    auto colon = got[i].find(':');
    if (colon == std::string::npos || got[i].substr(colon + 1) != std::to_string(i)) continue;
    ++answered;
    by_backend[got[i].substr(0, colon)]++;
  }
  CHECK(answered == kSessions);
  // Round robin with one worker: exactly a share each.
  for (auto& [name, count] : by_backend) CHECK(count == kSessions / backends.size());
  CHECK(metric(lb.admin_port(), series("lb_listener_active", "listener=\"udp\"")) == double(kSessions));
  // A socket carries one session per backend and source address: the
  // busiest backend needs sessions / sources sockets, not one per session.
  const int fds_open = lb.fd_count();
  INFO("lb fds before " << fds_before << ", with the sessions open " << fds_open);
  CHECK(fds_open <= fds_before + int(kSessions / backends.size() / kSources) + 16);
  // Every session keeps its backend: a second datagram of a sample goes to
  // the same one.
  std::vector<std::string> first = got;
  size_t same = 0, asked = 0;
  for (size_t i = 0; i < kSessions; i += 97) {
    ++asked;
    swarm.send(i, port, "again");
  }
  for (auto& r : swarm.receive(asked, in(seconds(10))))
    if (r.data.substr(0, r.data.find(':')) == first[r.endpoint].substr(0, first[r.endpoint].find(':')))
      ++same;
  CHECK(same == asked);
  // Probes still pass with the sessions open (more of them now), and none
  // failed while the sessions opened.
  for (auto& a : addresses) {
    auto before = metric(lb.admin_port(), probe_series(a, "pass"));
    REQUIRE(before);
    CHECK(wait_until([&] { return metric(lb.admin_port(), probe_series(a, "pass")) >= *before + 2; },
                     in(seconds(10))));
    CHECK(metric(lb.admin_port(), probe_series(a, "fail")).value_or(0) == fails_before[a]);
    CHECK(metric(lb.admin_port(), series("lb_backend_up", "pool=\"p\",backend=\"" + a + "\"")) == 1.0);
  }
  CHECK(lb.terminate() == 0);
}

TEST_CASE("resolver-style DNS: 20,000 queries, each from a new address and port, through lb to dnsmasq",
          "[udp][scale][dns]") {
  Dnsmasq dns("192.0.2.1");
  REQUIRE(dns.start(in(seconds(30))));
  // No udp_source: the kernel picks the source, one route per query in
  // flight. A DNS health check on the pool must keep passing under the load.
  LbProcess lb(udp_config("udp_responses = 1\nsession_timeout = \"30s\"",
                          "[pool.health_check]\ntype = \"dns\"\ndns_query = \"example.test\"\n"
                          "interval = \"200ms\"\ntimeout = \"1s\"\n",
                          {dns.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  const uint16_t admin = lb.admin_port();
  const std::string labels = "pool=\"p\",backend=\"" + dns.address() + "\"";
  const std::string passes = series("lb_health_checks_total", labels + ",result=\"pass\"");
  const std::string fails = series("lb_health_checks_total", labels + ",result=\"fail\"");
  REQUIRE(wait_until([&] { return metric(admin, series("lb_backend_up", labels)) == 1.0; }, in(seconds(10))));
  const double fails_before = metric(admin, fails).value_or(0);
  const double passes_before = metric(admin, passes).value_or(0);
  const int fds_before = lb.fd_count();

  // Query i is sent once, from endpoint i (its own source address and port,
  // never used again), at most kWindow unanswered at a time: the pace is the
  // machine's, and no socket buffer on the way can fill up.
  constexpr size_t kQueries = 20000;
  constexpr size_t kWindow = 100;
  UdpSwarm swarm(kQueries, "127.8.0.1", 250);
  REQUIRE(swarm.ok());
  std::vector<bool> answered(kQueries);
  size_t sent = 0, answers = 0, in_flight = 0, wrong = 0, unsent = 0, next_sample = 0;
  int fds_max = fds_before;
  while (sent < kQueries || in_flight > 0) {
    for (; sent < kQueries && in_flight < kWindow; ++sent, ++in_flight)
      unsent += !swarm.send(sent, port, dns_query(static_cast<uint16_t>(sent), "example.test"));
    auto replies = swarm.receive(1, in(seconds(5)));
    if (replies.empty()) break;  // what is still in flight is lost
    for (auto& r : replies) {
      if (r.endpoint >= kQueries || answered[r.endpoint] ||
          dns_id(r.data) != static_cast<uint16_t>(r.endpoint) || dns_first_a(r.data) != "192.0.2.1") {
        ++wrong;
        continue;
      }
      answered[r.endpoint] = true;
      ++answers;
      --in_flight;
    }
    if (answers >= next_sample) {
      fds_max = std::max(fds_max, lb.fd_count());
      next_sample += 500;
    }
  }
  // Whatever the kernel dropped on dnsmasq's or on this process's sockets is
  // not lb's loss; with kWindow in flight there should be none anyway.
  const uint64_t dropped_outside = udp_drops(dns.pid()) + udp_drops(::getpid());
  INFO("sent " << sent << ", answered " << answers << ", dropped by dnsmasq's and the client's sockets "
               << dropped_outside << ", dropped on lb's sockets " << udp_drops(lb.pid()) << ", lb fds before "
               << fds_before << ", at most " << fds_max);
  CHECK(sent == kQueries);
  CHECK(unsent == 0);
  CHECK(wrong == 0);
  CHECK(answers + dropped_outside == kQueries);
  CHECK(metric(admin, series("lb_udp_datagrams_total", "listener=\"udp\",direction=\"in\"")) ==
        double(kQueries));
  CHECK(metric(admin, series("lb_udp_datagrams_total", "listener=\"udp\",direction=\"out\"")) ==
        double(answers));
  // A session per query, and each ended with its answer (session_timeout is
  // 30 s; a session that did not end would stay visible here).
  CHECK(metric(admin, series("lb_listener_connections_total", "listener=\"udp\"")) == double(kQueries));
  CHECK(wait_until([&] { return metric(admin, series("lb_listener_active", "listener=\"udp\"")) == 0.0; },
                   in(seconds(10))));
  // The routes of ended sessions are reused: lb's fds follow the queries in
  // flight, not the queries sent (20,000 would exceed the process's limit).
  CHECK(fds_max <= fds_before + int(kWindow) + 16);
  // The DNS probes kept passing all along.
  CHECK(wait_until([&] { return metric(admin, passes) >= passes_before + 2; }, in(seconds(10))));
  CHECK(metric(admin, fails).value_or(0) == fails_before);
  CHECK(metric(admin, series("lb_backend_up", labels)) == 1.0);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("past a listener's max_connections exactly the first sessions are served, one warning a second",
          "[udp][limits][scale]") {
  UdpEcho e("e");
  LbProcess lb(udp_config("session_timeout = \"300s\"\nmax_connections = 1000", "", {e.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  const uint16_t admin = lb.admin_port();
  UdpSwarm swarm(5000, "127.4.0.1", 100);
  REQUIRE(swarm.ok());
  // The first 1,000 clients get sessions and their replies.
  auto got = ask_all(swarm, port, 0, 1000);
  size_t answered = 0;
  for (size_t i = 0; i < 1000; ++i) answered += got[i] == "e:" + std::to_string(i);
  REQUIRE(answered == 1000);
  const std::string in_series = series("lb_udp_datagrams_total", "listener=\"udp\",direction=\"in\"");
  const double in_before = metric(admin, in_series).value_or(-1);
  const uint64_t backend_before = e.received();
  // The next 4,000 are refused, paced so that none is lost before lb saw it.
  for (size_t start = 1000; start < 5000; start += 250) {
    for (size_t i = start; i < start + 250; ++i) REQUIRE(swarm.send(i, port, std::to_string(i)));
    REQUIRE(wait_until([&] { return metric(admin, in_series) == in_before + double(start + 250 - 1000); },
                       in(seconds(10))));
  }
  CHECK(metric(admin, series("lb_listener_rejected_total", "listener=\"udp\",reason=\"limit\"")) == 4000.0);
  CHECK(swarm.receive(1, in(milliseconds(300))).empty());
  CHECK(e.received() == backend_before);
  CHECK(metric(admin, series("lb_listener_active", "listener=\"udp\"")) == 1000.0);
  // Existing sessions are untouched.
  size_t asked = 0;
  for (size_t i = 0; i < 1000; i += 10, ++asked) swarm.send(i, port, "still");
  size_t ok = 0;
  for (auto& r : swarm.receive(asked, in(seconds(10)))) ok += r.endpoint < 1000 && r.data == "e:still";
  CHECK(ok == asked);
  // 4,000 refusals, a handful of warning lines (one a second at most).
  const std::string out = lb.output();
  size_t lines = 0;
  for (size_t pos = 0; (pos = out.find("udp new sessions refused", pos)) != std::string::npos; ++pos) ++lines;
  INFO(out.substr(0, 2000));
  CHECK(lines >= 1);
  CHECK(lines <= 5);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a backend killed under 400 sessions: its sessions move, every other keeps its backend",
          "[udp][scale]") {
  std::vector<std::unique_ptr<UdpEcho>> backends;
  std::vector<std::string> addresses;
  for (int b = 0; b < 4; ++b) {
    backends.push_back(std::make_unique<UdpEcho>("b" + std::to_string(b)));
    addresses.push_back(backends.back()->address());
  }
  LbProcess lb(udp_config("session_timeout = \"300s\"", "", addresses));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  constexpr size_t kSessions = 400;
  UdpSwarm swarm(kSessions, "127.5.0.1", 100);
  REQUIRE(swarm.ok());
  auto name = [](const std::string& reply) { return reply.substr(0, reply.find(':')); };
  auto before = ask_all(swarm, port, 0, kSessions);
  for (size_t i = 0; i < kSessions; ++i) REQUIRE_FALSE(before[i].empty());
  // Sessions of several backends share each upstream socket: the ICMP errors
  // of the dead one must end only its own sessions.
  backends[0].reset();
  auto after = ask_all(swarm, port, 0, kSessions);
  size_t moved = 0, kept = 0;
  for (size_t i = 0; i < kSessions; ++i) {
    REQUIRE_FALSE(after[i].empty());
    if (name(before[i]) == "b0")
      moved += name(after[i]) != "b0";
    else
      kept += name(after[i]) == name(before[i]);
  }
  CHECK(moved == kSessions / 4);
  CHECK(kept == kSessions - kSessions / 4);
  auto failures = metric(lb.admin_port(),
                         "lb_backend_connect_failures_total{pool=\"p\",backend=\"" + addresses[0] + "\"}");
  REQUIRE(failures);
  CHECK(*failures >= 1.0);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("a reload that changes udp_source says that open binds keep theirs until a restart",
          "[udp][reload]") {
  UdpEcho e("e");
  LbProcess lb(udp_config("udp_source = [\"127.0.6.1\"]", "", {e.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("udp");
  const auto sockets = bound_socket_inodes(lb.pid(), "udp", port);
  REQUIRE(sockets.size() == 1);
  // Clients enough that, were a second socket bound beside the first, the
  // kernel would hash some of them to each.
  constexpr size_t kClients = 32;
  UdpSwarm swarm(kClients, "127.7.0.1", 1);
  REQUIRE(swarm.ok());
  auto before = ask_all(swarm, port, 0, kClients);
  for (size_t i = 0; i < kClients; ++i) REQUIRE(before[i] == "e:" + std::to_string(i));
  // The configuration now names the port lb chose: the same bind, so its
  // socket is kept (not a second SO_REUSEPORT socket beside it).
  std::string next =
      udp_config("udp_source = [\"127.0.6.2\"]", "", {e.address()}, 1, "127.0.0.1:" + std::to_string(port));
  REQUIRE(lb.write_config(next));
  REQUIRE(lb.signal(SIGHUP));
  CHECK(lb.wait_for_line(std::regex("udp_source changes need a restart.*listener=udp"), in(seconds(10))));
  REQUIRE(lb.wait_for_line(std::regex("reloaded generation=2"), in(seconds(10))));
  CHECK(bound_socket_inodes(lb.pid(), "udp", port) == sockets);
  // The listener goes on serving every client with the sources it opened with.
  size_t answered = 0;
  for (size_t i = 0; i < kClients; ++i) swarm.send(i, port, "again" + std::to_string(i));
  for (const auto& r : swarm.receive(kClients, in(seconds(5)))) answered += r.data.rfind("e:again", 0) == 0;
  CHECK(answered == kClients);
  CHECK(lb.terminate() == 0);
}
