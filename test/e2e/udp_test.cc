// UDP load balancing end to end: real dnsmasq servers and UDP echo servers
// behind the real lb binary, on loopback.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <thread>

#include "test/support/child_process.h"
#include "test/support/deadline.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"

using namespace lb::test;

namespace {

int udp_socket(uint16_t bind_port = 0) {
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(bind_port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  int big = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  return fd;
}

uint16_t udp_local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

bool send_to(int fd, uint16_t port, const std::string& data) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  return ::sendto(fd, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a) ==
         static_cast<ssize_t>(data.size());
}

std::optional<std::string> recv_within(int fd, Deadline deadline) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, poll_timeout_ms(deadline)) <= 0) return std::nullopt;
  std::string buf(70000, '\0');
  ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  if (n < 0) return std::nullopt;
  buf.resize(static_cast<size_t>(n));
  return buf;
}

// A UDP server that answers every datagram with "<name>:" + the datagram.
class UdpEcho {
 public:
  explicit UdpEcho(std::string name) : name_(std::move(name)), fd_(udp_socket()) {
    port_ = udp_local_port(fd_);
    ::pipe(stop_pipe_);
    thread_ = std::thread([this] { run(); });
  }
  ~UdpEcho() { stop(); }
  void stop() {
    if (!thread_.joinable()) return;
    ::write(stop_pipe_[1], "x", 1);
    thread_.join();
    ::close(fd_);
    ::close(stop_pipe_[0]);
    ::close(stop_pipe_[1]);
  }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  uint64_t received() const { return received_.load(); }

 private:
  void run() {
    std::string buf(70000, '\0');
    for (;;) {
      pollfd p[2] = {{fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
      if (::poll(p, 2, -1) < 0) continue;
      if (p[1].revents) return;
      sockaddr_storage from{};
      socklen_t len = sizeof from;
      ssize_t n = ::recvfrom(fd_, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) continue;
      ++received_;
      std::string reply = name_ + ":" + buf.substr(0, static_cast<size_t>(n));
      ::sendto(fd_, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  }
  std::string name_;
  int fd_;
  uint16_t port_ = 0;
  int stop_pipe_[2] = {-1, -1};
  std::atomic<uint64_t> received_{0};
  std::thread thread_;
};

// --- DNS wire format, just enough for A queries ----------------------------
std::string dns_query(uint16_t id, const std::string& name) {
  std::string q;
  q += static_cast<char>(id >> 8);
  q += static_cast<char>(id & 0xff);
  q += std::string("\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", 10);  // RD, 1 question
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    q += static_cast<char>(dot - start);
    q += name.substr(start, dot - start);
    start = dot + 1;
  }
  q += std::string("\x00\x00\x01\x00\x01", 5);  // root, type A, class IN
  return q;
}

uint16_t dns_id(const std::string& r) {
  return r.size() >= 2 ? static_cast<uint16_t>((static_cast<uint8_t>(r[0]) << 8) | static_cast<uint8_t>(r[1])) : 0;
}

// The first A record's address in a reply (the question is echoed first).
std::string dns_first_a(const std::string& r) {
  if (r.size() < 12) return "";
  size_t i = 12;
  while (i < r.size() && r[i] != 0) i += static_cast<uint8_t>(r[i]) + 1;
  i += 5;  // root label, type, class
  // Answer: name (a pointer, 2 bytes), type, class, ttl, rdlength, rdata.
  if (i + 16 > r.size()) return "";
  i += 2 + 2 + 2 + 4;
  uint16_t len = static_cast<uint16_t>((static_cast<uint8_t>(r[i]) << 8) | static_cast<uint8_t>(r[i + 1]));
  i += 2;
  if (len != 4 || i + 4 > r.size()) return "";
  char buf[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, r.data() + i, buf, sizeof buf);
  return buf;
}

// A port below the ephemeral range (32768+) free for both TCP and UDP on
// 127.0.0.1 right now.
uint16_t free_port_pair() {
  static uint32_t seed = static_cast<uint32_t>(::getpid()) * 2654435761u;
  for (int tries = 0; tries < 200; ++tries) {
    seed = seed * 1103515245u + 12345u;
    uint16_t port = static_cast<uint16_t>(20000 + (seed >> 8) % 12000);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int u = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int t = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok = ::bind(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
              ::bind(t, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(u);
    ::close(t);
    if (ok) return port;
  }
  return 0;
}

// dnsmasq on a loopback port, answering example.test with `answer`.
class Dnsmasq {
 public:
  explicit Dnsmasq(std::string answer) : answer_(std::move(answer)) {}
  // Starts dnsmasq and waits until it answers a query. dnsmasq binds TCP and
  // UDP on its port, so the port must be free for both; it is taken below the
  // kernel's ephemeral range, where the suite's own connections never are.
  // Another process may still take it first: then try again on another port.
  bool start(Deadline deadline) {
    for (int attempt = 0; attempt < 3; ++attempt) {
      port_ = free_port_pair();
      proc_ = std::make_unique<ChildProcess>(std::vector<std::string>{
          "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
          "--port=" + std::to_string(port_), "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
          "--no-hosts", "--pid-file=", "--user=root", "--address=/example.test/" + answer_,
          "--log-facility=-"});
      if (answers(std::min(deadline, in(seconds(10))))) return true;
      WARN("dnsmasq on port " << port_ << " did not answer: " << proc_->output());
      proc_.reset();
    }
    return false;
  }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  bool answers(Deadline deadline) {
    int fd = udp_socket();
    bool ok = wait_until(
        [&] {
          send_to(fd, port_, dns_query(1, "example.test"));
          auto r = recv_within(fd, in(milliseconds(100)));
          return r && dns_id(*r) == 1;
        },
        deadline, milliseconds(1));
    ::close(fd);
    return ok;
  }
  std::string answer_;
  uint16_t port_ = 0;
  std::unique_ptr<ChildProcess> proc_;
};

// Value of the sample `series` (name{labels}) in a /metrics body.
std::optional<double> metric(uint16_t admin_port, const std::string& series) {
  auto r = http_get(admin_port, "/metrics");
  if (r.status != 200) return std::nullopt;
  size_t pos = 0;
  while ((pos = r.body.find(series + " ", pos)) != std::string::npos) {
    if (pos == 0 || r.body[pos - 1] == '\n') return std::stod(r.body.substr(pos + series.size() + 1));
    ++pos;
  }
  return std::nullopt;
}

std::string udp_config(const std::string& listener_extra, const std::string& pool_extra,
                       const std::vector<std::string>& backends, unsigned workers = 1) {
  std::string c = global_section(workers) +
                  "[[listener]]\nname = \"udp\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n" +
                  listener_extra + "\n[[pool]]\nname = \"p\"\n" + pool_extra + "\n";
  for (auto& b : backends) c += "[[pool.backend]]\naddress = \"" + b + "\"\n";
  return c;
}

}  // namespace

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

TEST_CASE("a resolver with several queries in flight keeps one session until the last answer",
          "[udp][dns]") {
  Dnsmasq a("10.0.0.1");
  REQUIRE(a.start(in(seconds(30))));
  LbProcess lb(udp_config("udp_responses = 1", "", {a.address()}));
  REQUIRE(lb.wait_started());
  int fd = udp_socket();
  for (uint16_t id = 1; id <= 5; ++id) REQUIRE(send_to(fd, lb.listener_port("udp"), dns_query(id, "example.test")));
  std::set<uint16_t> ids;
  for (int i = 0; i < 5; ++i) {
    auto r = recv_within(fd, in(seconds(5)));
    REQUIRE(r);
    ids.insert(dns_id(*r));
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
  auto failures = metric(lb.admin_port(), "lb_backend_connect_failures_total{pool=\"p\",backend=\"" + dead + "\"}");
  REQUIRE(failures);
  CHECK(*failures >= 1.0);
  CHECK(lb.terminate() == 0);
}
