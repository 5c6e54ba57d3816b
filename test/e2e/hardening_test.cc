// End-to-end: what a hostile client can do to lb's own bookkeeping, not to
// the traffic. A flood of events that each log a warning must not become a
// log flood; access-log lines lost because the writer fell behind must be
// visible on /metrics; a `[::]` bind is IPv6-only, as the README says.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <chrono>
#include <regex>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"

namespace lb::test {
namespace {

size_t count_lines(LbProcess& lb, const std::regex& re) {
  size_t n = 0;
  for (const auto& l : lb.process().lines())
    if (std::regex_search(l.text, re)) ++n;
  return n;
}

// A new connection to lb's `port` sending `msg`: true when echoed; false
// when lb closed it without a byte (a refusal, counted in *refused). It must
// not hang either way.
bool echoed_or_refused(uint16_t port, Socket& s, const std::string& msg, int* refused) {
  s = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(s);  // the kernel completes the handshake whatever lb does next
  ReadResult r = exchange(s, msg, msg.size(), in(seconds(10)));
  INFO(msg << ": " << to_string(r.end) << " errno " << r.error << ", got " << r.data.size() << " bytes");
  REQUIRE(r.end != ReadEnd::Timeout);
  if (r.data == msg) return true;
  CHECK(r.data.empty());
  ++*refused;
  return false;
}

// lb run with at most `nofile` descriptors (soft and hard: lb cannot raise it).
// A TCP listener "web" towards `web_backend` and a UDP one "dns" towards
// `udp_backend` whose sessions last (`udp_extra`: more keys for it).
ConfigBuilder web_and_dns(const std::string& web_backend, const std::string& udp_backend,
                          const std::string& udp_extra) {
  return ConfigBuilder()
      .global(1, true)
      .listener("web", "web")
      .pool("web")
      .backend(web_backend)
      .listener("dns", "dns", "protocol = \"udp\"\nsession_timeout = \"10m\"\n" + udp_extra)
      .pool("dns")
      .backend(udp_backend);
}

// Waits for lb of web_and_dns() to start; its web, dns and admin ports.
void started_web_and_dns(LbProcess& lb, uint16_t* web, uint16_t* dns, uint16_t* admin) {
  REQUIRE(lb.wait_started());
  *web = lb.listener_port("web");
  *dns = lb.listener_port("dns");
  *admin = lb.admin_port();
  REQUIRE(*web != 0);
  REQUIRE(*dns != 0);
  REQUIRE(*admin != 0);
}

LbOptions with_nofile(int nofile) {
  LbOptions options;
  options.prefix = {"/usr/bin/prlimit", fmt::format("--nofile={}:{}", nofile, nofile), "--"};
  return options;
}

// Waits until lb has read every datagram queued on its UDP socket `port`.
bool udp_drained(uint16_t port, Deadline deadline) {
  return wait_until([&] { return udp_receive_queue(port) == 0; }, deadline, milliseconds(2));
}

// New UDP clients of `port`, one question each, until lb logs `full` (it
// opens no more sessions). The warning is rate-limited for the whole
// process (another listener's refusal may hold it back for a second): keep
// asking meanwhile. A client whose session took no descriptor (refused) is
// not kept, so the asking costs the test no descriptors either.
void fill_udp(LbProcess& lb, uint16_t port, const std::regex& full, std::vector<Socket>* clients) {
  const Deadline fill = in(seconds(20));
  while (!lb.process().find_line(full) && !expired(fill)) {
    const int before = lb.fd_count();
    Socket s = udp_bind();
    REQUIRE(udp_send_to(s, "127.0.0.1", port, "q"));
    REQUIRE(udp_drained(port, in(seconds(10))));
    if (lb.fd_count() > before) clients->push_back(std::move(s));
  }
  REQUIRE(lb.wait_for_line(full, in(seconds(5))));
}

}  // namespace

// A UDP session that cannot open (no descriptor left) logs a warning, and it
// happens once per client datagram: a flood of them used to write one line
// per datagram from the worker thread. Now the first is logged, then at most
// one line per second carrying the count of the suppressed ones.
TEST_CASE("hardening: a flood of UDP sessions that cannot open logs a handful of lines, not one each",
          "[e2e][hardening][log]") {
  // The backend only has to exist: it never answers, sessions stay open.
  Socket backend = udp_bind();
  REQUIRE(backend);
  LbProcess lb(ConfigBuilder()
                   .global(1, true)
                   .listener("dns", "p", "protocol = \"udp\"\nsession_timeout = \"10m\"")
                   .pool("p", "")
                   .backend(fmt::format("127.0.0.1:{}", local_port(backend))));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("dns");
  REQUIRE(port != 0);

  // Leave lb a few descriptors (RLIMIT_NOFILE counts descriptor numbers, and
  // lb has settled on its own), then use them up with live sessions.
  const int fds = lb.process().settled_fd_count(milliseconds(300), in(seconds(10)));
  REQUIRE(fds > 0);
  const rlim_t limit = static_cast<rlim_t>(fds) + 8;
  rlimit rl{limit, limit};
  REQUIRE(::prlimit(lb.pid(), RLIMIT_NOFILE, &rl, nullptr) == 0);
  std::vector<Socket> clients;
  for (int i = 0; i < 32; ++i) {
    clients.push_back(udp_bind());
    REQUIRE(udp_send_to(clients.back(), "127.0.0.1", port, "q"));
  }
  REQUIRE(udp_drained(port, in(seconds(10))));
  // Sessions share upstream sockets, but each session to this one backend
  // needs a route of its own: a new socket once the open ones carry one.
  const std::regex warn_re("^warn connection refused: out of file descriptors listener=dns ");
  REQUIRE(lb.wait_for_line(warn_re, in(seconds(5))));

  // The flood: 600 datagrams of a new client, in bursts small enough for the
  // socket buffer, each read by lb before the next (so none is lost).
  Socket flood = udp_bind();
  REQUIRE(flood);
  const auto t0 = Clock::now();
  for (int burst = 0; burst < 30; ++burst) {
    for (int i = 0; i < 20; ++i) REQUIRE(udp_send_to(flood, "127.0.0.1", port, "flood"));
    REQUIRE(udp_drained(port, in(seconds(10))));
  }
  // Every datagram has been read; the last burst may still be being handled
  // when the queue is seen empty, so stop lb (a message the worker takes
  // after that batch) and count in its complete output.
  REQUIRE(lb.terminate() == 0);
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - t0).count();

  const size_t lines = count_lines(lb, warn_re);
  const size_t with_count =
      count_lines(lb, std::regex("^warn connection refused: out of file descriptors .* suppressed=[0-9]+$"));
  INFO("warning lines: " << lines << " (" << with_count << " with a suppressed count) over " << elapsed_s
                         << " s for more than 600 failed sessions");
  // First occurrence, then at most one per second (+1 for rounding at both ends).
  CHECK(lines >= 1);
  CHECK(lines <= 2 + static_cast<size_t>(elapsed_s));
  CHECK(with_count + 1 >= lines);
}

// The access-log writer blocked on its destination (a FIFO nobody reads):
// workers must drop lines rather than wait, and say how many.
TEST_CASE("hardening: access-log lines dropped behind a stalled writer are counted on /metrics",
          "[e2e][hardening][access-log]") {
  TempDir dir;
  REQUIRE(!dir.path().empty());
  const std::string fifo = dir.path() + "/access.fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Opened (not read) before lb opens its end, so lb's open does not block.
  // (A Socket only as the owner of the descriptor: closed on every exit.)
  Socket reader(::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  REQUIRE(reader);

  // Every connection is refused by deny and logged; a long listener name
  // makes each line about 8 KiB, so the 4 MiB worker buffer and the one the
  // blocked writer holds fill after about a thousand connections.
  const std::string name = "l" + std::string(8000, 'x');
  LbProcess lb(fmt::format(R"([global]
workers = 1
access_log = "{}"

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "{}"
bind = "127.0.0.1:0"
pool = "p"
deny = ["127.0.0.0/8"]

[[pool]]
name = "p"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "127.0.0.1:{}"
)",
                           fifo, name, refused_port()));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port(name);
  REQUIRE(port != 0);
  auto dropped = [&]() -> double {
    auto m = fetch_metrics(lb.admin_port());
    if (!m) return -1;
    return m->value("lb_access_log_dropped_total").value_or(-1);
  };
  {
    auto m = fetch_metrics(lb.admin_port());
    REQUIRE(m);
    CHECK(m->type("lb_access_log_dropped_total") == "counter");
    CHECK(m->value("lb_access_log_dropped_total") == 0);
  }

  int connections = 0;
  double seen = 0;
  while (connections < 4000 && seen <= 0) {
    for (int i = 0; i < 100; ++i, ++connections) {
      Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
      REQUIRE(c);
      wait_closed(c, in(seconds(5)));
    }
    seen = dropped();
  }
  INFO(connections << " refused connections, " << seen << " access-log lines dropped");
  CHECK(seen > 0);
  CHECK(seen < connections);
  // More refusals while the writer stays blocked: each one is a dropped line.
  for (int i = 0; i < 50; ++i) {
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    wait_closed(c, in(seconds(5)));
  }
  // (At least: the line of a refusal just before `seen` was read may be
  // counted after it.)
  CHECK(wait_until([&] { return dropped() >= seen + 50; }, in(seconds(5))));

  // Closing the read end unblocks the writer (EPIPE), so lb can stop.
  reader.close();
  CHECK(lb.terminate() == 0);
}

// `[::]` means IPv6 only (IPV6_V6ONLY, nginx's ipv6only=on): an IPv4 client
// is not served on it, and `0.0.0.0` can be bound beside it on the same port.
TEST_CASE("hardening: a [::] bind is IPv6-only and coexists with 0.0.0.0 on the same port",
          "[e2e][hardening][ipv6]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  LbProcess lb(
      ConfigBuilder().global(1, true).listener("v6", "p", "", "[::]:0").pool("p").backend(backend.address()));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("v6");
  REQUIRE(port != 0);
  {
    Socket c = tcp_connect("::1", port, in(seconds(5)));
    REQUIRE(c);
    CHECK(read_exact(c, 2, in(seconds(5))).data == "b\n");
  }
  int err = 0;
  Socket v4 = tcp_connect("127.0.0.1", port, in(seconds(5)), &err);
  CHECK_FALSE(v4);
  CHECK(err == ECONNREFUSED);
  // The backend counts a connection after its greeting is written, which
  // may be just after the client read it.
  CHECK(backend.wait_accepted(1, in(seconds(5))));
  CHECK(backend.accepted() == 1);

  // An IPv4 socket on the same port binds beside it.
  Socket beside = tcp_listen("0.0.0.0", port);
  CHECK(beside);
  CHECK(lb.terminate() == 0);
}

// lb started with few descriptors (a low LimitNOFILE / ulimit -n, which lb
// can only raise up to the hard limit) and more clients than they allow: a
// new connection past the limit is refused cleanly (closed at once, counted
// in lb_listener_rejected_total{reason="limit"}, one rate-limited warning),
// the connections already open keep working, and once clients close lb
// serves new ones by itself.
TEST_CASE("hardening: at its descriptor limit lb refuses new connections, counted, and recovers by itself",
          "[e2e][hardening][nofile]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  constexpr int kNofile = 160;  // room for fewer than 80 proxied connections
  LbProcess lb(web_config(backend.address(), 1, true), with_nofile(kNofile));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  REQUIRE(port != 0);
  REQUIRE(admin != 0);

  // One connection: echoed (true) or closed by lb (false); never left hanging.
  int refused_seen = 0;
  auto attempt = [&](Socket& s, const std::string& msg) {
    return echoed_or_refused(port, s, msg, &refused_seen);
  };

  const auto t0 = Clock::now();
  std::vector<Socket> held;
  for (int i = 0; i < kNofile; ++i) {
    Socket s;
    if (!attempt(s, fmt::format("held {}", i))) break;
    held.push_back(std::move(s));
  }
  INFO(held.size() << " connections held when lb first refused");
  REQUIRE(refused_seen == 1);
  REQUIRE(held.size() >= 20);

  // At the limit: every new connection is refused, none hangs.
  for (int i = 0; i < 20; ++i) {
    Socket s;
    CHECK_FALSE(attempt(s, fmt::format("over the limit {}", i)));
  }
  // The open ones are unaffected.
  size_t still = 0;
  for (size_t i = 0; i < held.size(); ++i) {
    const std::string msg = fmt::format("still {}", i);
    still += exchange(held[i], msg, msg.size(), in(seconds(10))).data == msg;
  }
  CHECK(still == held.size());

  // Half the clients leave: lb serves new connections again by itself.
  held.resize(held.size() / 2);
  bool served = false;
  const Deadline recover = in(seconds(20));
  while (!served && !expired(recover)) {
    Socket s;
    served = attempt(s, "after some closed");
  }
  CHECK(served);
  for (int i = 0; i < 10; ++i) {
    Socket s;
    CHECK(attempt(s, fmt::format("served again {}", i)));
    held.push_back(std::move(s));
  }
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - t0).count();

  // Every refusal the clients saw was counted, with the reason "limit".
  auto m = fetch_metrics(admin);
  REQUIRE(m);
  CHECK(m->value("lb_listener_rejected_total", {{"listener", "web"}, {"reason", "limit"}}).value_or(0) ==
        refused_seen);
  CHECK(m->value("lb_backend_connect_failures_total", {{"pool", "web"}, {"backend", backend.address()}})
            .value_or(0) == 0);
  held.clear();
  REQUIRE(lb.terminate() == 0);
  // One warning, then at most one a second (+1 for rounding at both ends).
  const size_t warnings = count_lines(lb, std::regex("^warn .*listener=web"));
  INFO(lb.output());
  CHECK(warnings >= 1);
  CHECK(warnings <= 2 + static_cast<size_t>(elapsed_s));
}

// The accept reserve keeps lb's descriptors from running out in the usual
// case; when something else (here UDP sessions) has taken the reserve and a
// client's accept still finds a free low descriptor, the backend socket
// cannot be made: that is lb's limit too, not a backend failure (no
// connect_failures, no passive-health report, no other backend tried).
TEST_CASE(
    "hardening: a backend socket lb cannot make for lack of descriptors is its limit, not the backend's "
    "failure",
    "[e2e][hardening][nofile]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  Socket udp_backend = udp_bind();  // never answers: its sessions stay open
  REQUIRE(udp_backend);
  constexpr int kNofile = 160;
  LbProcess lb(web_and_dns(backend.address(), fmt::format("127.0.0.1:{}", local_port(udp_backend)), ""),
               with_nofile(kNofile));
  uint16_t port = 0, dns = 0, admin = 0;
  started_web_and_dns(lb, &port, &dns, &admin);

  // TCP connections up to the accept reserve.
  int refused = 0;
  std::vector<Socket> held;
  for (int i = 0; i < kNofile && refused == 0; ++i) {
    Socket s;
    if (echoed_or_refused(port, s, fmt::format("held {}", i), &refused)) held.push_back(std::move(s));
  }
  REQUIRE(refused == 1);
  REQUIRE(held.size() >= 20);
  // UDP sessions (a socket each) take the reserve, until only the accept
  // floor is left (core/descriptors.h).
  std::vector<Socket> udp_clients;
  const std::regex no_route("^warn connection refused: out of file descriptors listener=dns ");
  fill_udp(lb, dns, no_route, &udp_clients);

  // One client leaves (two low descriptors free), a new UDP session takes
  // one of them: the next client's accept finds the other, its backend
  // socket finds none.
  const int full = lb.fd_count();
  held.erase(held.begin());
  REQUIRE(wait_until([&] { return lb.fd_count() == full - 2; }, in(seconds(10))));
  udp_clients.push_back(udp_bind());
  REQUIRE(udp_send_to(udp_clients.back(), "127.0.0.1", dns, "q"));
  REQUIRE(wait_until([&] { return lb.fd_count() == full - 1; }, in(seconds(10))));
  {
    Socket s;
    CHECK_FALSE(echoed_or_refused(port, s, "no backend socket", &refused));
  }
  CHECK(lb.wait_for_line(std::regex("^warn connection refused: out of file descriptors listener=web "),
                         in(seconds(5))));

  // The admin API needs descriptors too: wait until lb has closed the
  // held connections (two descriptors each) before asking it.
  const size_t nheld = held.size();
  held.clear();
  udp_clients.clear();
  REQUIRE(wait_until([&] { return lb.fd_count() <= full - static_cast<int>(nheld); }, in(seconds(10))));
  auto m = fetch_metrics(admin);
  REQUIRE(m);
  CHECK(m->value("lb_listener_rejected_total", {{"listener", "web"}, {"reason", "limit"}}).value_or(0) ==
        refused);
  CHECK(m->value("lb_backend_connect_failures_total", {{"pool", "web"}, {"backend", backend.address()}})
            .value_or(0) == 0);
  CHECK(lb.terminate() == 0);
}

// UDP sessions (a socket each for one backend) are the one thing that can
// take lb's descriptors in bulk besides accepted connections. They must
// leave the last few to accept(): when accept() itself fails with EMFILE,
// libuv accepts and closes the waiting clients on its own (its "emfile
// trick"), with nothing counted or logged. So once UDP can open no more,
// a TCP client is still accepted by lb and refused by it, counted; and the
// UDP sessions lb could not open are its limit too, not the backend's
// connect failures.
TEST_CASE("hardening: UDP sessions leave accept() its descriptors: refusals stay counted",
          "[e2e][hardening][nofile]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  Socket udp_backend = udp_bind();  // answers only when the test says so
  REQUIRE(udp_backend);
  const std::string udp_addr = fmt::format("127.0.0.1:{}", local_port(udp_backend));
  constexpr int kNofile = 160;
  LbProcess lb(web_and_dns(backend.address(), udp_addr, "udp_responses = 1\n"), with_nofile(kNofile));
  uint16_t port = 0, dns = 0, admin = 0;
  started_web_and_dns(lb, &port, &dns, &admin);

  // New UDP clients until lb opens no more sessions for them.
  std::vector<Socket> udp_clients;
  const std::regex udp_full(
      "^warn (udp cannot open a route|connection refused: out of file descriptors) listener=dns ");
  fill_udp(lb, dns, udp_full, &udp_clients);
  INFO(udp_clients.size() << " UDP clients sent, lb holds " << lb.fd_count() << " descriptors of "
                          << kNofile);

  // TCP clients now: each one refused, none hangs.
  int refused = 0;
  for (int i = 0; i < 10; ++i) {
    Socket s;
    CHECK_FALSE(echoed_or_refused(port, s, fmt::format("tcp {}", i), &refused));
  }
  CHECK(refused == 10);

  // The UDP backend answers every question: each session ends with its
  // answer (udp_responses = 1) and gives its descriptor back.
  const int full = lb.fd_count();
  size_t answered = 0;
  for (;;) {
    sockaddr_storage from{};
    const std::string q = udp_receive_within(udp_backend, Clock::now(), &from);
    if (q.empty()) break;
    REQUIRE(udp_reply_to(udp_backend, from, q));
    ++answered;
  }
  INFO(answered << " UDP sessions answered");
  REQUIRE(answered > 0);
  REQUIRE(
      wait_until([&] { return lb.fd_count() <= full - static_cast<int>(answered) + 2; }, in(seconds(10))));

  auto m = fetch_metrics(admin);
  REQUIRE(m);
  // Every TCP refusal the clients saw was lb's, counted.
  CHECK(m->value("lb_listener_rejected_total", {{"listener", "web"}, {"reason", "limit"}}).value_or(0) ==
        refused);
  // A UDP session lb could not open for lack of descriptors is its limit,
  // not the backend's failure.
  CHECK(m->value("lb_backend_connect_failures_total", {{"pool", "dns"}, {"backend", udp_addr}}).value_or(0) ==
        0);
  CHECK(m->value("lb_listener_rejected_total", {{"listener", "dns"}, {"reason", "limit"}}).value_or(0) >= 1);
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
