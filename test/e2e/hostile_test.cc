// End-to-end: hostile and broken peers. Clients that never speak, peers that
// reset in the middle of a transfer, a flood of abandoned connections past
// max_connections, and garbage on the admin port. Every case ends by checking
// that lb still relays for a well-behaved client and that its descriptor
// count is back at the baseline: surviving the abuse is not enough, it must
// also leave nothing behind.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <list>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

// Listener "web" (connect_timeout 2s, and `listener_extra` keys) in front of
// pool "web" with one backend and no active health checks.
ConfigBuilder hostile_config(const std::string& backend, bool admin, const std::string& listener_extra = "") {
  return web_config(backend, 1, admin, "connect_timeout = \"2s\"\n" + listener_extra);
}

// A fresh client's echo round trip through lb, byte-exact.
bool echo_ok(uint16_t port, uint64_t seed = 42, size_t size = 4096) {
  Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
  if (!c) return false;
  const std::string msg = random_bytes(size, seed);
  ReadResult r = exchange(c, msg, msg.size(), in(seconds(10)));
  return r.data == msg;
}

// lb's descriptor count once it is steady, after one complete connection (so
// what lb sets up lazily on first use is not mistaken for a leak later), and
// quiet for longer than a worker keeps pooled splice pipes (1 s).
int fd_baseline(LbProcess& lb, uint16_t port, const TestBackend& backend) {
  REQUIRE(echo_ok(port, 1));
  REQUIRE(backend.wait_active(0, in(seconds(5))));
  const int baseline = lb.process().settled_fd_count(milliseconds(1500), in(seconds(10)));
  REQUIRE(baseline > 0);
  return baseline;
}

// Waits for lb's descriptor count to come back to `baseline`; on failure the
// message lists what is still open.
void check_fds_back(LbProcess& lb, int baseline, Deadline deadline) {
  int fds = -1;
  const bool back = wait_until(
      [&] {
        fds = lb.fd_count();
        return fds <= baseline;
      },
      deadline, milliseconds(50));
  INFO("lb fds " << fds << ", baseline " << baseline << ":\n" << lb.process().describe_fds());
  CHECK(back);
}

double metric_or(const std::optional<Metrics>& m, const std::string& name, const Labels& labels,
                 double fallback = -1) {
  if (!m) return fallback;
  return m->value(name, labels).value_or(fallback);
}

// How many of `socks` are readable right now (for a client that sent
// nothing, lb closing it is the only way it can become readable).
size_t count_readable(const std::vector<Socket>& socks) {
  std::vector<pollfd> pfds;
  pfds.reserve(socks.size());
  for (const Socket& s : socks) pfds.push_back({s.fd(), POLLIN, 0});
  size_t n = 0;
  if (::poll(pfds.data(), pfds.size(), 0) > 0) {
    for (const pollfd& p : pfds) n += (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
  }
  return n;
}

// A backend whose first `resets` connections each read `reset_after` bytes
// and then close with RST (SO_LINGER 0) while the client is still sending;
// every later connection echoes. TestBackend has no such mode, so it lives
// here: one thread, non-blocking sockets and poll(2) with a short timeout so
// stop() is noticed without a wake-up descriptor.
//
// Thread rules: construct, query and destroy from the test thread; counters
// are atomics. The destructor joins the thread and closes every socket.
class ResettingBackend {
 public:
  ResettingBackend(size_t reset_after, int resets) : reset_after_(reset_after), resets_(resets) {
    listener_ = tcp_listen("127.0.0.1");
    if (!listener_) return;
    port_ = local_port(listener_);
    if (port_ != 0) thread_ = std::thread([this] { run(); });
  }
  ~ResettingBackend() { stop(); }
  ResettingBackend(const ResettingBackend&) = delete;
  ResettingBackend& operator=(const ResettingBackend&) = delete;

  bool ok() const { return port_ != 0; }
  std::string address() const { return fmt::format("127.0.0.1:{}", port_); }
  int accepted() const { return accepted_.load(); }
  int resets_done() const { return resets_done_.load(); }
  int active() const { return active_.load(); }

  void stop() {
    stopping_.store(true);
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Conn {
    Socket sock;
    bool resetter = false;
    size_t received = 0;
    bool dead = false;
  };

  void run() {
    std::list<Conn> conns;
    std::vector<pollfd> pfds;
    std::vector<Conn*> index;
    while (!stopping_.load()) {
      pfds.assign(1, pollfd{listener_.fd(), POLLIN, 0});
      index.clear();
      for (Conn& c : conns) {
        pfds.push_back({c.sock.fd(), POLLIN, 0});
        index.push_back(&c);
      }
      if (::poll(pfds.data(), pfds.size(), 20) <= 0) continue;
      if (pfds[0].revents & POLLIN) {
        for (;;) {
          int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          Conn& c = conns.emplace_back();
          c.sock = Socket(fd);
          c.resetter = accepted_.fetch_add(1) < resets_;
          active_.fetch_add(1);
        }
      }
      for (size_t i = 0; i < index.size(); ++i) {
        Conn& c = *index[i];
        if (!pfds[i + 1].revents) continue;
        char buf[65536];
        // A resetter never reads past its limit: the rest of the upload is
        // what the RST throws away.
        size_t want = c.resetter ? std::min(sizeof(buf), reset_after_ - c.received) : sizeof(buf);
        ssize_t n = ::recv(c.sock.fd(), buf, want, 0);
        if (n > 0) {
          c.received += static_cast<size_t>(n);
          if (c.resetter && c.received >= reset_after_) {
            set_linger_reset(c.sock);
            c.dead = true;
            resets_done_.fetch_add(1);
          } else if (!c.resetter && write_all(c.sock, std::string_view(buf, static_cast<size_t>(n)),
                                              in(seconds(5))) != static_cast<size_t>(n)) {
            c.dead = true;
          }
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          c.dead = true;
        }
      }
      for (auto it = conns.begin(); it != conns.end();) {
        if (it->dead) {
          it = conns.erase(it);
          active_.fetch_sub(1);
        } else {
          ++it;
        }
      }
    }
    active_.store(0);
  }

  size_t reset_after_;
  int resets_;
  Socket listener_;
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0};
  std::atomic<int> resets_done_{0};
  std::atomic<int> active_{0};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

TEST_CASE("hostile: silent clients are cut by idle_timeout while an active client keeps relaying",
          "[e2e][hostile][timeout]") {
  constexpr size_t kSilent = 40;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(hostile_config(backend.address(), false, R"(idle_timeout = "300ms")"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  REQUIRE(port != 0);
  const int baseline = fd_baseline(lb, port, backend);

  Socket active = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(active);
  std::vector<Socket> silent;
  std::vector<Clock::time_point> opened;
  for (size_t i = 0; i < kSilent; ++i) {
    silent.push_back(tcp_connect("127.0.0.1", port, in(seconds(5))));
    REQUIRE(silent.back());
    opened.push_back(Clock::now());
  }
  std::vector<Clock::duration> closed_after(kSilent, Clock::duration::zero());
  std::vector<ReadEnd> how(kSilent, ReadEnd::Timeout);

  // The active client talks every 50 ms (well inside the 300 ms timeout),
  // so it must survive while every silent one is cut. The pacing is the
  // traffic pattern itself, not a wait for lb.
  const auto start = Clock::now();
  size_t rounds = 0;
  size_t still_open = kSilent;
  for (auto next = start; Clock::now() - start < milliseconds(1500); next += milliseconds(50), ++rounds) {
    std::this_thread::sleep_until(next);
    const std::string msg = random_bytes(16 * 1024, 1000 + rounds);
    ReadResult r = exchange(active, msg, msg.size(), in(seconds(2)));
    INFO("active round " << rounds << ": " << to_string(r.end));
    REQUIRE(r.data.size() == msg.size());
    REQUIRE(mismatch_offset(r.data, msg) == std::string::npos);
    for (size_t i = 0; i < kSilent; ++i) {
      if (how[i] != ReadEnd::Timeout) continue;
      ReadEnd e = wait_closed(silent[i], Clock::now());
      if (e == ReadEnd::Timeout) continue;
      how[i] = e;
      closed_after[i] = Clock::now() - opened[i];
      --still_open;
    }
  }
  CHECK(rounds >= 25);
  CHECK(still_open == 0);
  for (size_t i = 0; i < kSilent; ++i) {
    INFO("silent client " << i << " ended " << to_string(how[i]) << " after "
                          << std::chrono::duration_cast<milliseconds>(closed_after[i]).count() << " ms");
    CHECK((how[i] == ReadEnd::Eof || how[i] == ReadEnd::Reset));
    CHECK(closed_after[i] >= milliseconds(250));
    CHECK(closed_after[i] < seconds(2));
  }
  // lb closed their backend sides too: only the active client's remains.
  CHECK(backend.wait_active(1, in(seconds(5))));
  CHECK(wait_closed(active, Clock::now()) == ReadEnd::Timeout);

  silent.clear();
  active.close();
  CHECK(backend.wait_active(0, in(seconds(5))));
  CHECK(echo_ok(port, 2));
  REQUIRE(backend.wait_active(0, in(seconds(5))));
  check_fds_back(lb, baseline, in(seconds(10)));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("hostile: a backend that resets mid-upload resets the client, and lb serves the next one",
          "[e2e][hostile][reset]") {
  constexpr int kResets = 3;
  constexpr size_t kResetAfter = 256 * 1024;
  ResettingBackend backend(kResetAfter, kResets);
  REQUIRE(backend.ok());
  LbProcess lb(hostile_config(backend.address(), true));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  REQUIRE(port != 0);
  REQUIRE(admin != 0);
  const int baseline = lb.process().settled_fd_count(milliseconds(1500), in(seconds(10)));
  REQUIRE(baseline > 0);

  // Each upload is far larger than what the backend reads before its RST,
  // and the backend echoes nothing meanwhile: the exchange can only end by
  // lb passing the failure on.
  const std::string upload = random_bytes(8 << 20, 77);
  for (int i = 0; i < kResets; ++i) {
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    const auto t0 = Clock::now();
    ReadResult r = exchange(c, upload, upload.size(), in(seconds(10)));
    INFO("upload " << i << " ended " << to_string(r.end) << " errno " << r.error << " after "
                   << std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count() << " ms");
    CHECK((r.end == ReadEnd::Reset || r.end == ReadEnd::Eof));
    CHECK(r.data.empty());  // the backend never echoed a byte
  }
  CHECK(backend.resets_done() == kResets);

  // The next connections go to the same backend, which now echoes.
  for (int i = 0; i < 3; ++i) CHECK(echo_ok(port, 10 + i, 64 * 1024));
  CHECK(wait_until([&] { return backend.active() == 0; }, in(seconds(5))));

  auto m = fetch_metrics(admin);
  REQUIRE(m);
  const Labels pool{{"pool", "web"}, {"backend", backend.address()}};
  CHECK(metric_or(m, "lb_listener_connections_total", {{"listener", "web"}}) == kResets + 3);
  CHECK(metric_or(m, "lb_backend_connections_total", pool) == kResets + 3);
  CHECK(metric_or(m, "lb_backend_connect_failures_total", pool) == 0);
  CHECK(wait_until(
      [&] {
        return metric_or(fetch_metrics(admin), "lb_listener_active", {{"listener", "web"}}) == 0;
      },
      in(seconds(5))));
  check_fds_back(lb, baseline, in(seconds(10)));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("hostile: a client that resets mid-transfer gets its backend connection closed",
          "[e2e][hostile][reset]") {
  constexpr int kClients = 5;
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(hostile_config(backend.address(), true));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  REQUIRE(port != 0);
  REQUIRE(admin != 0);
  const int baseline = fd_baseline(lb, port, backend);  // one connection, 4096 bytes each way
  const uint64_t warm_bytes = backend.bytes_received();

  const std::string chunk = random_bytes(64 * 1024, 9);
  std::mt19937_64 rng(1234);
  for (int i = 0; i < kClients; ++i) {
    // Stream echo traffic (reading some back, so the path is busy both ways)
    // until the backend has seen a random amount, then vanish with an RST.
    const uint64_t before = backend.bytes_received();
    const uint64_t reset_at = before + (512 << 10) + rng() % (4 << 20);
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    REQUIRE(backend.wait_active(1, in(seconds(5))));
    const Deadline deadline = in(seconds(20));
    size_t echoed = 0;
    while (backend.bytes_received() < reset_at && !expired(deadline)) {
      ssize_t n = ::send(c.fd(), chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      REQUIRE((n > 0 || errno == EAGAIN || errno == EWOULDBLOCK));
      char buf[65536];
      ssize_t got = ::recv(c.fd(), buf, sizeof(buf), MSG_DONTWAIT);
      if (got > 0) echoed += static_cast<size_t>(got);
      if (n < 0 && got <= 0) {
        pollfd p{c.fd(), POLLIN | POLLOUT, 0};
        ::poll(&p, 1, 50);
      }
    }
    REQUIRE(backend.bytes_received() >= reset_at);
    REQUIRE(set_linger_reset(c));
    c.close();
    INFO("client " << i << " echoed " << echoed << " bytes before its reset");
    // lb must pass the reset on to the backend rather than keep it open.
    CHECK(backend.wait_active(0, in(seconds(5))));
  }

  CHECK(echo_ok(port, 3));
  REQUIRE(backend.wait_active(0, in(seconds(5))));
  const uint64_t total_received = backend.bytes_received();
  const Labels pool{{"pool", "web"}, {"backend", backend.address()}};
  std::optional<Metrics> m;
  REQUIRE(wait_until(
      [&] {
        m = fetch_metrics(admin);
        return metric_or(m, "lb_listener_active", {{"listener", "web"}}) == 0 &&
               metric_or(m, "lb_backend_active", pool) == 0;
      },
      in(seconds(5))));
  CHECK(metric_or(m, "lb_listener_connections_total", {{"listener", "web"}}) == kClients + 2);
  CHECK(metric_or(m, "lb_backend_connections_total", pool) == kClients + 2);
  // lb counts what it read: it cannot have delivered more to the backend
  // than it read from the clients, and the backend can only have echoed
  // what it received. A reset drops whatever was still queued.
  auto bytes = [&](const char* direction) {
    return metric_or(m, "lb_backend_bytes_total",
                     {{"pool", "web"}, {"backend", backend.address()}, {"direction", direction}});
  };
  const double to_backend = bytes("to_backend");
  const double to_client = bytes("to_client");
  INFO("backend received " << total_received << " (warm-up " << warm_bytes << "); lb to_backend "
                           << to_backend << ", to_client " << to_client);
  CHECK(to_backend >= static_cast<double>(total_received));
  CHECK(to_client <= static_cast<double>(total_received));
  CHECK(to_client > 0);
  check_fds_back(lb, baseline, in(seconds(10)));
  CHECK(lb.terminate() == 0);
}

TEST_CASE(
    "hostile: a flood of 10000 silent connections past max_connections is refused, counted and released",
    "[e2e][hostile][flood]") {
  constexpr size_t kFlood = 10000;
  constexpr size_t kBatch = 500;
  constexpr size_t kMax = 4000;  // lb: 2 fds each, well inside the 20000 limit
  // This process holds every flood socket and, through the in-process
  // backend, the other end of each of lb's kMax upstream connections.
  const uint64_t limit = raise_fd_limit();
  REQUIRE(limit >= kFlood + kMax + 500);

  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(
      hostile_config(backend.address(), true).global(2, true, "", fmt::format("max_connections = {}", kMax)));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  REQUIRE(port != 0);
  REQUIRE(admin != 0);
  const int baseline = fd_baseline(lb, port, backend);
  auto m0 = fetch_metrics(admin);
  REQUIRE(m0);
  const Labels web{{"listener", "web"}};
  const Labels web_limit{{"listener", "web"}, {"reason", "limit"}};
  const double accepted0 = metric_or(m0, "lb_listener_connections_total", web);
  const double rejected0 = metric_or(m0, "lb_listener_rejected_total", web_limit, 0);
  REQUIRE(accepted0 == 1);

  std::vector<Socket> flood;
  flood.reserve(kFlood);
  int peak_fds = 0;
  size_t failed = 0;
  const auto t0 = Clock::now();
  for (size_t done = 0; done < kFlood; done += kBatch) {
    const size_t first = flood.size();
    for (size_t i = 0; i < kBatch; ++i) {
      int err = 0;
      Socket s = tcp_connect_start("127.0.0.1", port, &err);
      INFO("connection " << flood.size() << " errno " << err);
      REQUIRE(s);
      flood.push_back(std::move(s));
    }
    for (size_t i = first; i < flood.size(); ++i) failed += wait_connected(flood[i], in(seconds(20))) != 0;
    peak_fds = std::max(peak_fds, lb.fd_count());
  }
  INFO("opened " << kFlood << " connections in "
                 << std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count() << " ms");
  CHECK(failed == 0);

  // lb holds exactly max_connections and closes every other one at once.
  CHECK(backend.wait_active(kMax, in(seconds(30))));
  size_t closed = 0;
  CHECK(wait_until(
      [&] {
        closed = count_readable(flood);
        return closed >= kFlood - kMax;
      },
      in(seconds(30)), milliseconds(100)));
  CHECK(closed == kFlood - kMax);
  std::optional<Metrics> m;
  CHECK(wait_until(
      [&] {
        m = fetch_metrics(admin);
        return metric_or(m, "lb_listener_rejected_total", web_limit, 0) - rejected0 == kFlood - kMax;
      },
      in(seconds(10))));
  CHECK(metric_or(m, "lb_listener_connections_total", web) - accepted0 == kMax);
  CHECK(metric_or(m, "lb_listener_rejected_total", web_limit, 0) - rejected0 == kFlood - kMax);
  CHECK(metric_or(m, "lb_listener_active", web) == kMax);
  const int held_fds = lb.fd_count();
  peak_fds = std::max(peak_fds, held_fds);
  INFO("lb fds: baseline " << baseline << ", held " << held_fds << ", peak seen " << peak_fds);
  CHECK(held_fds >= baseline + static_cast<int>(2 * kMax));
  CHECK(held_fds <= baseline + static_cast<int>(2 * kMax) + 16);
  CHECK(peak_fds < 20000);
  // No accept ever failed for lack of descriptors.
  CHECK_FALSE(lb.process().find_line(std::regex("accept failed")));

  // While full, one more client is refused at once and counted as such.
  {
    Socket extra = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(extra);
    ReadEnd e = wait_closed(extra, in(seconds(5)));
    CHECK((e == ReadEnd::Eof || e == ReadEnd::Reset));
    CHECK(wait_until(
        [&] {
          return metric_or(fetch_metrics(admin), "lb_listener_rejected_total", web_limit, 0) - rejected0 ==
                 kFlood - kMax + 1;
        },
        in(seconds(5))));
  }

  // Abandon the flood abruptly: RST on every connection.
  for (Socket& s : flood) set_linger_reset(s);
  flood.clear();
  CHECK(backend.wait_active(0, in(seconds(30))));
  CHECK(wait_until([&] { return metric_or(fetch_metrics(admin), "lb_listener_active", web) == 0; },
                   in(seconds(10))));
  CHECK(echo_ok(port, 4));
  REQUIRE(backend.wait_active(0, in(seconds(5))));
  check_fds_back(lb, baseline, in(seconds(30)));
  CHECK(lb.terminate() == 0);
}

// Counts complete "HTTP/1.1 200 " status lines in `s`.
size_t count_ok_responses(const std::string& s) {
  size_t n = 0;
  for (size_t pos = s.find("HTTP/1.1 200 "); pos != std::string::npos; pos = s.find("HTTP/1.1 200 ", pos + 1))
    ++n;
  return n;
}

// Reads whatever is waiting on `s` without blocking, appending to `out`.
// False once the stream has ended (EOF or error).
bool drain_now(const Socket& s, std::string& out) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(s.fd(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) return false;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }
}

TEST_CASE("hostile: garbage, huge headers, pipelining, slowloris and idle connections on the admin port",
          "[e2e][hostile][admin]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(hostile_config(backend.address(), true));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  REQUIRE(port != 0);
  REQUIRE(admin != 0);
  REQUIRE(fetch_metrics(admin));
  const int baseline = fd_baseline(lb, port, backend);

  // Every section leaves the admin API answering on a fresh connection and
  // the data path relaying.
  auto still_serving = [&](const char* after) {
    INFO("after " << after);
    auto m = fetch_metrics(admin, in(seconds(5)));
    REQUIRE(m);
    CHECK(m->errors().empty());
    CHECK(m->has_family("lb_listener_connections_total"));
    CHECK(echo_ok(port, 5));
  };

  SECTION("random binary junk") {
    std::vector<Socket> socks;
    for (int i = 0; i < 20; ++i) {
      socks.push_back(tcp_connect("127.0.0.1", admin, in(seconds(5))));
      REQUIRE(socks.back());
      // The server may stop reading after its 400: a short write is fine.
      write_all(socks.back(), random_bytes(16 * 1024 + static_cast<size_t>(i) * 997, 500 + i),
                in(seconds(5)));
    }
    for (int i = 0; i < 20; ++i) {
      ReadResult r = read_until_eof(socks[i], in(seconds(5)));
      INFO("junk connection " << i << " ended " << to_string(r.end) << " with " << r.data.substr(0, 40));
      CHECK((r.end == ReadEnd::Eof || r.end == ReadEnd::Reset));
      CHECK((r.data.empty() || r.data.rfind("HTTP/1.1 4", 0) == 0));
    }
    still_serving("junk");
  }

  SECTION("a 1 MB header line gets 431") {
    Socket s = tcp_connect("127.0.0.1", admin, in(seconds(5)));
    REQUIRE(s);
    std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Huge: ";
    request.append(1 << 20, 'a');
    request += "\r\n\r\n";
    // Sends while reading: the answer comes long before the line ends.
    ReadResult r = exchange(s, request, size_t(1) << 30, in(seconds(10)));
    INFO("ended " << to_string(r.end) << " with " << r.data.substr(0, 60));
    CHECK(r.end != ReadEnd::Timeout);
    CHECK(r.data.rfind("HTTP/1.1 431", 0) == 0);
    still_serving("1 MB header");
  }

  SECTION("thousands of pipelined requests, split at random points, then a dangling partial one") {
    constexpr size_t kRequests = 3000;
    const std::string one = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    std::string stream;
    for (size_t i = 0; i < kRequests; ++i) stream += one;
    const std::string dangling = "GET /healthz HTTP/1.1\r\nHo";
    stream += dangling;

    Socket s = tcp_connect("127.0.0.1", admin, in(seconds(5)));
    REQUIRE(s);
    // Tiny writes (TCP_NODELAY is on): requests arrive cut anywhere, and
    // reading along the way keeps the server's write side moving.
    std::mt19937 rng(99);
    std::string got;
    size_t off = 0;
    const Deadline deadline = in(seconds(20));
    while (off < stream.size()) {
      const size_t n = std::min<size_t>(stream.size() - off, 1 + rng() % 120);
      REQUIRE(write_all(s, std::string_view(stream).substr(off, n), deadline) == n);
      off += n;
      REQUIRE(drain_now(s, got));
    }
    // Every complete request is answered, in full, and nothing more.
    while (count_ok_responses(got) < kRequests && !expired(deadline)) {
      ReadResult r = read_exact(s, 1, in(milliseconds(200)));
      got += r.data;
      REQUIRE(r.end != ReadEnd::Eof);
      REQUIRE(r.end != ReadEnd::Reset);
      REQUIRE(drain_now(s, got));
    }
    CHECK(count_ok_responses(got) == kRequests);
    // The dangling request keeps the connection open, waiting for the rest.
    CHECK(wait_closed(s, in(milliseconds(100))) == ReadEnd::Timeout);
    REQUIRE(write_all(s, "st: x\r\nConnection: close\r\n\r\n", in(seconds(5))) > 0);
    ReadResult tail = read_until_eof(s, in(seconds(5)));
    CHECK(tail.end == ReadEnd::Eof);
    CHECK(count_ok_responses(got + tail.data) == kRequests + 1);
    still_serving("pipelining");
  }

  SECTION("slowloris: 20 connections dripping a byte every few ms do not stall other clients") {
    constexpr size_t kSlow = 20;
    const std::string request =
        "GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Padding: " + std::string(64, 'p') + "\r\n\r\n";
    std::vector<Socket> slow;
    for (size_t i = 0; i < kSlow; ++i) {
      slow.push_back(tcp_connect("127.0.0.1", admin, in(seconds(5))));
      REQUIRE(slow.back());
    }
    // One byte per connection every 5 ms, all but the last two bytes
    // (~0.5 s), with a normal admin request between rounds.
    size_t fast_ok = 0, rounds = 0;
    milliseconds slowest{0};
    for (size_t pos = 0; pos + 2 < request.size(); ++pos, ++rounds) {
      for (Socket& s : slow) REQUIRE(write_all(s, request.substr(pos, 1), in(seconds(2))) == 1);
      std::this_thread::sleep_for(milliseconds(5));  // the drip rate is the attack itself
      if (rounds % 10 == 0) {
        const auto t = Clock::now();
        fast_ok += http_get(admin, "/healthz", in(seconds(2))).status == 200;
        slowest = std::max(slowest, std::chrono::duration_cast<milliseconds>(Clock::now() - t));
      }
    }
    INFO("slowest interleaved /healthz " << slowest.count() << " ms");
    CHECK(fast_ok == (rounds + 9) / 10);
    CHECK(slowest < milliseconds(1000));
    // The slow requests were kept intact: finishing them gets answers.
    for (Socket& s : slow) REQUIRE(write_all(s, request.substr(request.size() - 2), in(seconds(2))) == 2);
    for (Socket& s : slow) {
      ReadResult r = read_until(s, "\r\n", in(seconds(5)));
      CHECK(r.data.rfind("HTTP/1.1 200", 0) == 0);
    }
    slow.clear();
    still_serving("slowloris");
  }

  SECTION("connections that send nothing, up to and past the admin connection limit") {
    // 200 idle connections (below the server's limit of 256) do not keep a
    // fresh client out.
    std::vector<Socket> idle;
    for (int i = 0; i < 200; ++i) {
      idle.push_back(tcp_connect("127.0.0.1", admin, in(seconds(5))));
      REQUIRE(idle.back());
    }
    CHECK(http_get(admin, "/healthz", in(seconds(5))).status == 200);
    // Past the limit: the surplus is accepted and closed at once, the rest
    // stay open (until the server's own idle timeout, 10 s, not reached here).
    for (int i = 0; i < 100; ++i) {
      idle.push_back(tcp_connect("127.0.0.1", admin, in(seconds(5))));
      REQUIRE(idle.back());
    }
    size_t closed = 0;
    CHECK(wait_until(
        [&] {
          closed = count_readable(idle);
          return closed >= 300 - 256;
        },
        in(seconds(5))));
    INFO(closed << " of 300 idle admin connections closed by lb");
    // A connection from an earlier request may still be closing (lingering)
    // when the 300 arrive, taking a place of its own.
    CHECK(closed >= 300 - 256);
    CHECK(closed <= 300 - 256 + 4);
    idle.clear();
    // Once they are gone, the API answers again without waiting for any timeout.
    CHECK(wait_until([&] { return http_get(admin, "/healthz", in(seconds(1))).status == 200; },
                     in(seconds(3))));
    still_serving("idle connections");
  }

  REQUIRE(backend.wait_active(0, in(seconds(5))));
  // Lingering admin connections close within the server's 2 s linger.
  check_fds_back(lb, baseline, in(seconds(10)));
  CHECK(lb.terminate() == 0);
}

}  // namespace
}  // namespace lb::test
