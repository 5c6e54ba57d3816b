// End-to-end: active and passive health checking, backup backends, backend
// limits, the admin API's backend control, slow start and the hash table
// digest — all observed from outside the real lb binary: through client
// connections, /api/v1/status, /metrics and lb's log.
//
// Health checks here are fast (interval 100ms, fall 2, rise 2, timeout 200ms)
// so state changes happen within a fraction of a second; every wait is still
// bounded by a deadline.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

using nlohmann::json;

// A small TCP server that, unlike TestBackend, can bind a given port: a test
// "restarts" a backend by stopping one server and starting another on the
// same port, which is what a health checker sees when a process comes back.
//   Name: writes "<name>\n" on accept, then echoes what it receives.
//   Http: answers each request with the current status (set_status), closes.
// Thread rules: construct, query and destroy from the test thread; a private
// thread serves the sockets (poll(2), non-blocking). Counters are atomics.
class MiniServer {
 public:
  enum class Mode { Name, Http };

  MiniServer(Mode mode, std::string name, uint16_t port = 0) : mode_(mode), name_(std::move(name)) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    listener_ = Socket(fd);
    // The port may still have TIME_WAIT connections from the previous server.
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 128) != 0) {
      listener_.close();
      return;
    }
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) {
      listener_.close();
      return;
    }
    port_ = local_port(listener_);
    thread_ = std::thread([this] { run(); });
  }
  ~MiniServer() { stop(); }
  MiniServer(const MiniServer&) = delete;
  MiniServer& operator=(const MiniServer&) = delete;

  bool ok() const { return port_ != 0; }
  uint16_t port() const { return port_; }
  std::string address() const { return fmt::format("127.0.0.1:{}", port_); }
  uint64_t accepted() const { return accepted_.load(); }
  uint64_t http_requests() const { return http_requests_.load(); }
  void set_status(int status) { status_.store(status); }
  std::string last_request_line() const {
    std::lock_guard lk(mu_);
    return last_request_line_;
  }

  // Closes the listener and every connection; idempotent.
  void stop() {
    if (thread_.joinable()) {
      uint64_t one = 1;
      (void)!::write(wake_fd_, &one, sizeof one);
      thread_.join();
    }
    listener_.close();
    if (wake_fd_ >= 0) ::close(wake_fd_);
    wake_fd_ = -1;
  }

 private:
  struct Conn {
    Socket s;
    std::string in;
    std::string out;
    bool close_after_flush = false;
  };

  // Writes what it can; false when the connection is finished.
  static bool flush(Conn& c) {
    while (!c.out.empty()) {
      ssize_t n = ::send(c.s.fd(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      c.out.erase(0, static_cast<size_t>(n));
    }
    return !c.close_after_flush;
  }

  // Reads what is there; false when the connection is finished.
  bool receive(Conn& c) {
    char buf[16384];
    for (;;) {
      ssize_t n = ::recv(c.s.fd(), buf, sizeof buf, 0);
      if (n == 0) return false;
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      if (mode_ == Mode::Name) {
        c.out.append(buf, static_cast<size_t>(n));
        continue;
      }
      c.in.append(buf, static_cast<size_t>(n));
      if (c.in.find("\r\n\r\n") != std::string::npos && !c.close_after_flush) {
        {
          std::lock_guard lk(mu_);
          last_request_line_ = c.in.substr(0, c.in.find("\r\n"));
        }
        ++http_requests_;
        c.out =
            fmt::format("HTTP/1.1 {} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status_.load());
        c.close_after_flush = true;
      }
    }
  }

  void run() {
    std::vector<std::unique_ptr<Conn>> conns;
    std::vector<pollfd> pfds;
    for (;;) {
      pfds.clear();
      pfds.push_back({wake_fd_, POLLIN, 0});
      pfds.push_back({listener_.fd(), POLLIN, 0});
      for (auto& c : conns)
        pfds.push_back({c->s.fd(), static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
      if (::poll(pfds.data(), pfds.size(), -1) < 0) continue;
      if (pfds[0].revents) return;  // stop(): the connections close with `conns`
      std::vector<std::unique_ptr<Conn>> next;
      for (size_t i = 0; i < conns.size(); ++i) {
        Conn& c = *conns[i];
        const short re = pfds[i + 2].revents;
        bool alive = true;
        if (re & (POLLIN | POLLHUP | POLLERR)) alive = receive(c);
        if (alive) alive = flush(c);
        if (alive) next.push_back(std::move(conns[i]));
      }
      if (pfds[1].revents & POLLIN) {
        for (;;) {
          int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          ++accepted_;
          auto c = std::make_unique<Conn>();
          c->s = Socket(fd);
          if (mode_ == Mode::Name) c->out = name_ + "\n";
          if (flush(*c)) next.push_back(std::move(c));
        }
      }
      conns = std::move(next);
    }
  }

  Mode mode_;
  std::string name_;
  Socket listener_;
  int wake_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<int> status_{200};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> http_requests_{0};
  mutable std::mutex mu_;
  std::string last_request_line_;
  std::thread thread_;
};

constexpr auto kName = MiniServer::Mode::Name;
constexpr auto kHttp = MiniServer::Mode::Http;

// Fast active checks: a refused backend is down after 2 failed probes.
constexpr const char* kFastTcpHealth = R"(type = "tcp"
interval = "100ms"
timeout = "200ms"
fall = 2
rise = 2)";

struct BackendSpec {
  std::string id;
  std::string address;
  std::string extra;  // more [[pool.backend]] keys, one per line
};

// Listener "web" (with `listener_extra` keys) in front of round-robin pool
// "web"; `pool_extra` goes before [pool.health_check], `health` is that
// table's body (and may end with further pool sub-tables such as [pool.outlier]).
std::string health_config(const std::vector<BackendSpec>& backends, const std::string& health,
                          const std::string& pool_extra = "",
                          const std::string& listener_extra = "retries = 0", unsigned workers = 1) {
  std::string out = global_section(workers) + fmt::format(R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"
connect_timeout = "10s"
{}

[[pool]]
name = "web"
selector = "round_robin"
{}
[pool.health_check]
{}
)",
                                                          listener_extra, pool_extra, health);
  for (const auto& b : backends) {
    out += fmt::format("\n[[pool.backend]]\nid = \"{}\"\naddress = \"{}\"\n{}\n", b.id, b.address, b.extra);
  }
  return out;
}

// Connects through lb and reads a Name server's greeting; "" when the
// connection ended without one. `keep`, when given, receives the socket.
std::string served_by(uint16_t port, Deadline deadline, Socket* keep = nullptr) {
  Socket s = tcp_connect("127.0.0.1", port, deadline);
  if (!s) return "";
  ReadResult r = read_until(s, "\n", deadline);
  if (r.end != ReadEnd::Complete) return "";
  r.data.pop_back();
  if (keep) *keep = std::move(s);
  return r.data;
}

// `n` sequential connections: how many each backend name served ("" counts
// connections that got no greeting).
std::map<std::string, int> spread(uint16_t port, int n) {
  std::map<std::string, int> out;
  for (int i = 0; i < n; ++i) ++out[served_by(port, in(seconds(5)))];
  return out;
}

std::string to_text(const std::map<std::string, int>& m) {
  std::string out;
  for (const auto& [k, v] : m)
    out += fmt::format("{}{}={}", out.empty() ? "" : " ", k.empty() ? "<none>" : k, v);
  return out;
}

json status(uint16_t admin) {
  HttpResponse r = http_get(admin, "/api/v1/status");
  if (r.status != 200) return json();
  return json::parse(r.body, nullptr, false);
}

json pool_of(const json& st, const std::string& pool) {
  if (!st.is_object() || !st.contains("pools")) return json();
  for (const auto& p : st["pools"])
    if (p.value("name", "") == pool) return p;
  return json();
}

json backend_of(const json& st, const std::string& pool, const std::string& id) {
  json p = pool_of(st, pool);
  if (!p.is_object()) return json();
  for (const auto& b : p["backends"])
    if (b.value("id", "") == id) return b;
  return json();
}

// "up" / "down", or "" when the status is unavailable.
std::string health_of(uint16_t admin, const std::string& pool, const std::string& id) {
  json b = backend_of(status(admin), pool, id);
  return b.is_object() ? b.value("health", "") : "";
}

bool wait_health(uint16_t admin, const std::string& pool, const std::string& id, const std::string& want,
                 Deadline deadline) {
  return wait_until([&] { return health_of(admin, pool, id) == want; }, deadline);
}

double metric(uint16_t admin, const std::string& name, const Labels& labels) {
  auto m = fetch_metrics(admin);
  if (!m) return -1;
  return m->value(name, labels).value_or(-1);
}

std::regex line_re(const std::string& pattern) { return std::regex(pattern); }

long ms_since(Clock::time_point t0) {
  return static_cast<long>(std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count());
}

TEST_CASE("health: a dead backend is detected, skipped, and taken back when it returns", "[e2e][health]") {
  MiniServer a(kName, "a"), b(kName, "b");
  REQUIRE((a.ok() && b.ok()));
  LbProcess lb(health_config({{"a", a.address(), ""}, {"b", b.address(), ""}}, kFastTcpHealth));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  REQUIRE((port != 0 && admin != 0));
  CHECK(health_of(admin, "web", "a") == "up");
  CHECK(health_of(admin, "web", "b") == "up");
  auto before = spread(port, 4);
  INFO("before: " << to_text(before));
  CHECK(before["a"] == 2);
  CHECK(before["b"] == 2);

  // Kill "a": with a refusing port each probe fails at once, so it is
  // marked down after `fall` (2) failed probes; the deadline is only a bound
  // for a stuck health thread, not a latency target.
  const uint16_t a_port = a.port();
  const Labels a_fail{{"pool", "web"}, {"backend", "a"}, {"result", "fail"}};
  const double fails_before = metric(admin, "lb_health_checks_total", a_fail);
  size_t from = lb.line_count();
  a.stop();
  auto down = lb.wait_for_line(line_re("^info backend down pool=web backend=a "), in(seconds(10)), from);
  REQUIRE(down);
  CHECK(metric(admin, "lb_health_checks_total", a_fail) >= fails_before + 2);
  CHECK(wait_health(admin, "web", "a", "down", in(seconds(2))));
  CHECK(metric(admin, "lb_backend_up", {{"pool", "web"}, {"backend", "a"}}) == 0);
  CHECK(metric(admin, "lb_backend_up", {{"pool", "web"}, {"backend", "b"}}) == 1);

  // retries = 0: a connection given to "a" would fail, so all succeeding
  // proves the table no longer offers it.
  auto during = spread(port, 20);
  INFO("while a is down: " << to_text(during));
  CHECK(during["b"] == 20);
  CHECK(metric(admin, "lb_backend_connect_failures_total", {{"pool", "web"}, {"backend", "a"}}) == 0);

  // The same backend comes back on the same port: rise 2 probes later it is up.
  from = lb.line_count();
  MiniServer a2(kName, "a", a_port);
  REQUIRE(a2.ok());
  REQUIRE(lb.wait_for_line(line_re("^info backend up pool=web backend=a "), in(seconds(5)), from));
  CHECK(wait_health(admin, "web", "a", "up", in(seconds(2))));
  auto after = spread(port, 20);
  INFO("after a is back: " << to_text(after));
  CHECK(after[""] == 0);
  CHECK(after["a"] >= 9);
  CHECK(after["a"] <= 11);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("health: with every backend down clients are refused at once", "[e2e][health]") {
  auto a = std::make_unique<MiniServer>(kName, "a");
  auto b = std::make_unique<MiniServer>(kName, "b");
  REQUIRE((a->ok() && b->ok()));
  LbProcess lb(
      health_config({{"a", a->address(), ""}, {"b", b->address(), ""}}, kFastTcpHealth, "", "retries = 2"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  CHECK(served_by(port, in(seconds(5))) != "");

  a.reset();
  b.reset();
  REQUIRE(wait_health(admin, "web", "a", "down", in(seconds(5))));
  REQUIRE(wait_health(admin, "web", "b", "down", in(seconds(5))));
  const Labels no_backend{{"listener", "web"}, {"reason", "no_backend"}};
  const double rejected_before = metric(admin, "lb_listener_rejected_total", no_backend);
  REQUIRE(rejected_before >= 0);

  // connect_timeout is 10s: a close well before that is lb refusing, not a timer.
  constexpr int kClients = 5;
  for (int i = 0; i < kClients; ++i) {
    const auto t0 = Clock::now();
    Socket s = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(s);
    ReadResult r = read_until_eof(s, in(seconds(5)));
    const long took = ms_since(t0);
    INFO("client " << i << " ended " << to_string(r.end) << " after " << took << " ms");
    CHECK((r.end == ReadEnd::Eof || r.end == ReadEnd::Reset));
    CHECK(r.data.empty());
    CHECK(took < 5000);  // half of connect_timeout: no timer was involved
  }
  double rejected = 0;
  CHECK(wait_until(
      [&] {
        rejected = metric(admin, "lb_listener_rejected_total", no_backend);
        return rejected == rejected_before + kClients;
      },
      in(seconds(3))));
  INFO("rejected{no_backend} " << rejected_before << " -> " << rejected);
  CHECK(rejected == rejected_before + kClients);
  CHECK(metric(admin, "lb_backend_connect_failures_total", {{"pool", "web"}, {"backend", "a"}}) == 0);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("health: backup backends serve only while every primary is down", "[e2e][health]") {
  auto p1 = std::make_unique<MiniServer>(kName, "p1");
  auto p2 = std::make_unique<MiniServer>(kName, "p2");
  MiniServer bk(kName, "bk");
  REQUIRE((p1->ok() && p2->ok() && bk.ok()));
  const uint16_t p1_port = p1->port();
  LbProcess lb(health_config(
      {{"p1", p1->address(), ""}, {"p2", p2->address(), ""}, {"bk", bk.address(), "backup = true"}},
      kFastTcpHealth));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  CHECK(backend_of(status(admin), "web", "bk").value("backup", false) == true);

  auto all_up = spread(port, 10);
  INFO("all up: " << to_text(all_up));
  CHECK(all_up["p1"] == 5);
  CHECK(all_up["p2"] == 5);
  CHECK(all_up["bk"] == 0);

  p1.reset();
  REQUIRE(wait_health(admin, "web", "p1", "down", in(seconds(5))));
  auto one_down = spread(port, 10);
  INFO("p1 down: " << to_text(one_down));
  CHECK(one_down["p2"] == 10);

  p2.reset();
  REQUIRE(wait_health(admin, "web", "p2", "down", in(seconds(5))));
  auto backup_only = spread(port, 10);
  INFO("both primaries down: " << to_text(backup_only));
  CHECK(backup_only["bk"] == 10);

  MiniServer p1_again(kName, "p1", p1_port);
  REQUIRE(p1_again.ok());
  REQUIRE(wait_health(admin, "web", "p1", "up", in(seconds(5))));
  auto recovered = spread(port, 10);
  INFO("p1 recovered: " << to_text(recovered));
  CHECK(recovered["p1"] == 10);
  CHECK(recovered["bk"] == 0);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("health: http check follows the status class the backend answers", "[e2e][health][http]") {
  MiniServer web(kHttp, "web");
  REQUIRE(web.ok());
  web.set_status(200);
  const std::string health = R"(type = "http"
interval = "100ms"
timeout = "200ms"
fall = 2
rise = 2
http_path = "/health/ready"
expect_status = "2xx")";
  LbProcess lb(health_config({{"w", web.address(), ""}}, health));
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();
  CHECK(health_of(admin, "web", "w") == "up");
  CHECK(web.http_requests() >= 1);
  const std::string request_line = web.last_request_line();
  CHECK(request_line == "GET /health/ready HTTP/1.1");

  size_t from = lb.line_count();
  web.set_status(500);
  auto down = lb.wait_for_line(line_re("^info backend down pool=web backend=w "), in(seconds(5)), from);
  REQUIRE(down);
  INFO(*down);
  CHECK(wait_health(admin, "web", "w", "down", in(seconds(2))));
  CHECK(metric(admin, "lb_health_checks_total", {{"pool", "web"}, {"backend", "w"}, {"result", "fail"}}) >=
        2);

  // Another member of the class passes as well.
  from = lb.line_count();
  web.set_status(204);
  REQUIRE(lb.wait_for_line(line_re("^info backend up pool=web backend=w "), in(seconds(5)), from));
  CHECK(wait_health(admin, "web", "w", "up", in(seconds(2))));
  CHECK(metric(admin, "lb_health_checks_total", {{"pool", "web"}, {"backend", "w"}, {"result", "pass"}}) >=
        3);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("health: outlier detection ejects a failing backend for ejection_time", "[e2e][health][outlier]") {
  const std::string dead = fmt::format("127.0.0.1:{}", refused_port());
  MiniServer live(kName, "live");
  REQUIRE(live.ok());
  // ejection_time 3s: the checks of the ejected phase below must fit in it
  // even on a loaded machine; the test asserts they did (by the order of
  // events), not how long they took.
  const std::string health =
      "type = \"none\"\n\n[pool.outlier]\nconsecutive_failures = 2\nejection_time = \"3s\"";
  LbProcess lb(health_config({{"dead", dead, ""}, {"live", live.address(), ""}}, health, "", "retries = 1"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  const Labels dead_labels{{"pool", "web"}, {"backend", "dead"}};
  const std::regex ejected("^info backend down pool=web backend=dead ");

  // Round robin offers "dead" every other connection; retries = 1 moves each
  // such connection on to "live". Two failures in a row eject it.
  int connections = 0;
  while (!lb.process().find_line(ejected) && connections < 40) {
    CHECK(served_by(port, in(seconds(5))) == "live");
    ++connections;
  }
  size_t ejected_line = 0;
  REQUIRE(lb.process().wait_for_line(ejected, Clock::now(), 0, &ejected_line));
  // Two failures eject; the health thread publishes the ejection a moment
  // later, so a few more connections may pass before the line appears.
  INFO("ejected after " << connections << " connections");
  CHECK(connections <= 20);
  REQUIRE(wait_health(admin, "web", "dead", "down", in(seconds(2))));

  // While ejected, clients keep connecting and "dead" is not tried again.
  const std::regex back_re("^info backend up pool=web backend=dead ");
  const double failures = metric(admin, "lb_backend_connect_failures_total", dead_labels);
  CHECK(failures >= 2);
  auto while_ejected = spread(port, 10);
  INFO("while ejected: " << to_text(while_ejected));
  CHECK(while_ejected["live"] == 10);
  CHECK(metric(admin, "lb_backend_connect_failures_total", dead_labels) == failures);
  // The checks above mean something only inside the ejection window: it
  // had not ended yet.
  CHECK_FALSE(lb.process().find_line(back_re, ejected_line));

  // After ejection_time it is back in rotation (and fails again).
  auto back = lb.wait_for_line(back_re, in(seconds(10)), ejected_line);
  REQUIRE(back);
  CHECK(log_field(*back, "reason") == "ejection ended");
  // The log line comes from the health thread; the workers swap in the table
  // that has "dead" back a moment later. Keep connecting (every client is
  // still served, by "live") until a connection has tried "dead" again.
  int tries = 0;
  CHECK(wait_until(
      [&] {
        ++tries;
        CHECK(served_by(port, in(seconds(5))) == "live");
        return metric(admin, "lb_backend_connect_failures_total", dead_labels) > failures;
      },
      in(seconds(10))));
  INFO("connections after the ejection ended: " << tries);
  CHECK(tries <= 40);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("health: when every backend is at max_connections a client is refused with reason limit",
          "[e2e][health][limit]") {
  MiniServer a(kName, "a"), b(kName, "b");
  REQUIRE((a.ok() && b.ok()));
  LbProcess lb(
      health_config({{"a", a.address(), "max_connections = 1"}, {"b", b.address(), "max_connections = 1"}},
                    "type = \"none\"", "", "retries = 2"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  const Labels limit{{"listener", "web"}, {"reason", "limit"}};

  Socket c1, c2;
  std::string n1 = served_by(port, in(seconds(5)), &c1);
  std::string n2 = served_by(port, in(seconds(5)), &c2);
  CHECK(std::set<std::string>{n1, n2} == std::set<std::string>{"a", "b"});
  const double limit_before = metric(admin, "lb_listener_rejected_total", limit);

  const auto t0 = Clock::now();
  Socket c3 = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(c3);
  ReadResult r = read_until_eof(c3, in(seconds(5)));
  INFO("third client ended " << to_string(r.end) << " after " << ms_since(t0) << " ms");
  CHECK((r.end == ReadEnd::Eof || r.end == ReadEnd::Reset));
  CHECK(r.data.empty());
  CHECK(ms_since(t0) < 5000);  // refused, not held until connect_timeout (10s)
  CHECK(wait_until([&] { return metric(admin, "lb_listener_rejected_total", limit) == limit_before + 1; },
                   in(seconds(3))));

  // The held connections still work, and a freed slot is usable again.
  CHECK(exchange(c1, "ping", 4, in(seconds(5))).data == "ping");
  c1.close();
  CHECK(wait_until(
      [&] {
        return metric(admin, "lb_backend_active", {{"pool", "web"}, {"backend", n1}}) == 0;
      },
      in(seconds(3))));
  CHECK(served_by(port, in(seconds(5))) == n1);

  c2.close();  // an open connection would hold up the graceful stop
  CHECK(lb.terminate() == 0);
}

TEST_CASE("admin API: drain, activate and reweight a backend", "[e2e][health][admin]") {
  MiniServer a(kName, "a"), b(kName, "b");
  REQUIRE((a.ok() && b.ok()));
  LbProcess lb(health_config({{"a", a.address(), ""}, {"b", b.address(), ""}}, "type = \"none\""));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  const std::string path_a = "/api/v1/pools/web/backends/a";

  // A connection that is on "a" when it gets drained.
  Socket on_a;
  for (int i = 0; i < 4 && !on_a; ++i) {
    Socket s;
    if (served_by(port, in(seconds(5)), &s) == "a") on_a = std::move(s);
  }
  REQUIRE(on_a);

  HttpResponse r = http_post(admin, path_a, R"({"state":"drain"})");
  CHECK(r.status == 200);
  CHECK(backend_of(status(admin), "web", "a").value("admin_state", "") == "drain");
  // Existing connections continue...
  CHECK(exchange(on_a, "still here", 10, in(seconds(5))).data == "still here");
  // ...but no new one goes there.
  auto drained = spread(port, 10);
  INFO("a drained: " << to_text(drained));
  CHECK(drained["b"] == 10);
  CHECK(exchange(on_a, "and after", 9, in(seconds(5))).data == "and after");
  on_a.close();

  r = http_post(admin, path_a, R"({"state":"active"})");
  CHECK(r.status == 200);
  CHECK(backend_of(status(admin), "web", "a").value("admin_state", "") == "active");
  auto active = spread(port, 10);
  INFO("a active again: " << to_text(active));
  CHECK(active["a"] == 5);
  CHECK(active["b"] == 5);

  // Weights 1:3 with one worker: smooth round robin is exact per cycle.
  r = http_post(admin, "/api/v1/pools/web/backends/b", R"({"weight":3})");
  CHECK(r.status == 200);
  CHECK(backend_of(status(admin), "web", "b").value("weight", 0) == 3);
  auto weighted = spread(port, 400);
  INFO("weights 1:3: " << to_text(weighted));
  CHECK(weighted["a"] == 100);
  CHECK(weighted["b"] == 300);

  // Errors: JSON bodies, nothing changed.
  auto is_json_error = [](const HttpResponse& resp) {
    json j = json::parse(resp.body, nullptr, false);
    return j.is_object() && j.contains("error");
  };
  r = http_post(admin, "/api/v1/pools/nope/backends/a", R"({"state":"drain"})");
  CHECK(r.status == 404);
  CHECK(is_json_error(r));
  r = http_post(admin, "/api/v1/pools/web/backends/nope", R"({"state":"drain"})");
  CHECK(r.status == 404);
  CHECK(is_json_error(r));
  r = http_post(admin, path_a, R"({"state":)");
  CHECK(r.status == 400);
  CHECK(is_json_error(r));
  r = http_post(admin, path_a, R"({"state":"sleeping"})");
  CHECK(r.status == 400);
  r = http_post(admin, path_a, R"({"weight":-1})");
  CHECK(r.status == 400);
  CHECK(backend_of(status(admin), "web", "a").value("admin_state", "") == "active");
  CHECK(backend_of(status(admin), "web", "a").value("weight", 0) == 1);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("health: slow_start ramps a recovered backend's share up", "[e2e][health][slow_start]") {
  auto a = std::make_unique<MiniServer>(kName, "a");
  MiniServer b(kName, "b");
  REQUIRE((a->ok() && b.ok()));
  const uint16_t a_port = a->port();
  LbProcess lb(health_config({{"a", a->address(), ""}, {"b", b.address(), ""}}, kFastTcpHealth,
                             "slow_start = \"6s\""));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();

  a.reset();
  REQUIRE(wait_health(admin, "web", "a", "down", in(seconds(5))));
  size_t from = lb.line_count();
  MiniServer a2(kName, "a", a_port);
  REQUIRE(a2.ok());
  REQUIRE(lb.wait_for_line(line_re("^info backend up pool=web backend=a "), in(seconds(5)), from));
  const auto recovered = Clock::now();

  // Early in the 6s ramp "a" gets a small share: even if this test saw the
  // recovery 1.2 s late, a's weight is at most a quarter of b's (a fifth of
  // the connections) during the first 300 ms.
  std::map<std::string, int> early;
  while (Clock::now() - recovered < milliseconds(300) && early["a"] + early["b"] < 400)
    ++early[served_by(port, in(seconds(5)))];
  const int early_total = early["a"] + early["b"];
  INFO("slow_start: first 300 ms after recovery: " << to_text(early));
  CHECK(early[""] == 0);
  REQUIRE(early_total >= 4);
  CHECK(early["a"] * 100 < early_total * 25);

  // Then the share grows until it is even (the ramp ends, published at the
  // next 250 ms tick): waited for as a condition, not a sleep. With equal
  // weights smooth round robin gives exactly 50 of 100; a split of 45..55
  // is also reached near the end of the ramp, which is not the end.
  std::map<std::string, int> late;
  const bool even = wait_until(
      [&] {
        late = spread(port, 100);
        return late["a"] == 50;
      },
      in(seconds(20)), milliseconds(100));
  INFO("slow_start: last 100 connections: " << to_text(late));
  CHECK(even);
  CHECK(late["a"] + late["b"] == 100);
  // And it stays even once the ramp is over.
  auto after = spread(port, 100);
  INFO("after: " << to_text(after));
  CHECK(after["a"] >= 45);
  CHECK(after["a"] <= 55);

  CHECK(lb.terminate() == 0);
}

// A maglev pool of three backends in the given order (ids x, y, z), plus a
// round-robin pool, which has no table digest.
std::string hash_config(const std::vector<BackendSpec>& backends) {
  std::string out = global_section(1) + R"(
[[listener]]
name = "hash"
bind = "127.0.0.1:0"
pool = "h"

[[pool]]
name = "h"
selector = "maglev"
[pool.health_check]
)" + std::string(kFastTcpHealth) +
                    "\n";
  for (const auto& b : backends)
    out += fmt::format("\n[[pool.backend]]\nid = \"{}\"\naddress = \"{}\"\n", b.id, b.address);
  out += "\n[[pool]]\nname = \"rr\"\n[pool.health_check]\ntype = \"none\"\n[[pool.backend]]\naddress = \"" +
         backends.front().address + "\"\n";
  return out;
}

std::string digest_of(uint16_t admin, const std::string& pool) {
  json p = pool_of(status(admin), pool);
  if (!p.is_object() || !p["table_digest"].is_string()) return "";
  return p["table_digest"].get<std::string>();
}

TEST_CASE("health: table_digest agrees across instances and follows health", "[e2e][health][hash]") {
  auto x = std::make_unique<MiniServer>(kName, "x");
  MiniServer y(kName, "y"), z(kName, "z");
  REQUIRE((x->ok() && y.ok() && z.ok()));
  const BackendSpec bx{"x", x->address(), ""}, by{"y", y.address(), ""}, bz{"z", z.address(), ""};
  LbProcess lb1(hash_config({bx, by, bz}));
  LbProcess lb2(hash_config({bz, bx, by}));
  REQUIRE(lb1.wait_started());
  REQUIRE(lb2.wait_started());
  const uint16_t admin1 = lb1.admin_port(), admin2 = lb2.admin_port();

  const std::string d1 = digest_of(admin1, "h");
  const std::string d2 = digest_of(admin2, "h");
  CHECK(std::regex_match(d1, std::regex("^[0-9a-f]{16}$")));
  CHECK(d1 == d2);
  CHECK(pool_of(status(admin1), "rr")["table_digest"].is_null());

  auto m = fetch_metrics(admin1);
  REQUIRE(m);
  CHECK(m->value("lb_pool_table_info", {{"pool", "h"}, {"digest", d1}}) == 1);
  CHECK(m->find("lb_pool_table_info", {{"pool", "rr"}}).empty());

  // The same clients land on the same backend through either instance.
  for (int i = 0; i < 5; ++i) {
    std::string via1 = served_by(lb1.listener_port("hash"), in(seconds(5)));
    std::string via2 = served_by(lb2.listener_port("hash"), in(seconds(5)));
    CHECK(via1 != "");
    CHECK(via1 == via2);
  }

  x.reset();
  REQUIRE(wait_health(admin1, "h", "x", "down", in(seconds(5))));
  REQUIRE(wait_health(admin2, "h", "x", "down", in(seconds(5))));
  std::string n1;
  CHECK(wait_until(
      [&] {
        n1 = digest_of(admin1, "h");
        return n1 != d1;
      },
      in(seconds(2))));
  CHECK(std::regex_match(n1, std::regex("^[0-9a-f]{16}$")));
  CHECK(digest_of(admin2, "h") == n1);
  m = fetch_metrics(admin1);
  REQUIRE(m);
  CHECK(m->value("lb_pool_table_info", {{"pool", "h"}, {"digest", n1}}) == 1);
  CHECK(m->find("lb_pool_table_info", {{"pool", "h"}, {"digest", d1}}).empty());

  CHECK(lb1.terminate() == 0);
  CHECK(lb2.terminate() == 0);
}

}  // namespace
}  // namespace lb::test
