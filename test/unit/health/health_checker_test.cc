// HealthChecker on its own thread against real servers on 127.0.0.1.
#include "health/health_checker.h"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test/unit/health/servers.h"

namespace lb::health {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

struct Event {
  std::string id;
  bool up = false;
  std::string reason;
  uint64_t passes = 0;  // the backend's checks_pass/checks_fail when it was reported
  uint64_t fails = 0;
  steady_clock::time_point at;
};

class RecordingSink : public HealthSink {
 public:
  void on_health(const core::Backend& b, bool up, const std::string& reason) override {
    std::lock_guard lk(mu_);
    events_.push_back(
        Event{b.id, up, reason, b.checks_pass.load(), b.checks_fail.load(), steady_clock::now()});
    cv_.notify_all();
  }

  std::vector<Event> of(const std::string& id) {
    std::lock_guard lk(mu_);
    std::vector<Event> r;
    for (auto& e : events_)
      if (e.id == id) r.push_back(e);
    return r;
  }

  // Waits until backend `id` has at least n events.
  bool wait_events(const std::string& id, size_t n, milliseconds deadline = 5000ms) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, deadline, [&] {
      size_t c = 0;
      for (auto& e : events_) c += e.id == id;
      return c >= n;
    });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Event> events_;
};

core::BackendPtr backend(const std::string& id, uint16_t port) {
  conf::Backend c;
  c.address = testing::loopback_endpoint(port);
  c.id = id;
  return std::make_shared<core::Backend>("pool", c);
}

conf::HealthCheck fast(conf::HealthType type, unsigned rise = 2, unsigned fall = 3) {
  conf::HealthCheck c;
  c.type = type;
  c.interval = 50ms;
  c.timeout = 500ms;
  c.rise = rise;
  c.fall = fall;
  return c;
}

HealthChecker::Target target(const core::BackendPtr& b, conf::HealthCheck c, conf::Outlier o = {}) {
  return HealthChecker::Target{b, std::move(c), o};
}

template <class Pred>
bool eventually(Pred pred, milliseconds deadline = 5000ms) {
  auto end = steady_clock::now() + deadline;
  while (!pred()) {
    if (steady_clock::now() > end) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

TEST_CASE("health checker: start and stop without targets", "[health][checker]") {
  RecordingSink sink;
  HealthChecker hc(sink);
  CHECK(hc.stop());  // never started
  HealthChecker hc2(sink);
  hc2.start();
  CHECK(hc2.wait_initial(100ms));  // nothing to wait for
  CHECK(hc2.stop());
  CHECK(hc2.stop());  // idempotent
  CHECK_FALSE(hc2.wait_initial(10ms));
}

TEST_CASE("health checker: the first result of every target is published", "[health][checker]") {
  testing::TcpServer tcp([](int fd) { close(fd); });
  testing::HttpServer http;
  auto up_tcp = backend("tcp-up", tcp.port());
  auto down_tcp = backend("tcp-down", testing::closed_port(SOCK_STREAM));
  auto up_http = backend("http-up", http.port());
  auto none = backend("none", testing::closed_port(SOCK_STREAM));

  RecordingSink sink;
  HealthChecker hc(sink);
  // Targets handed over before start() are picked up by the thread.
  hc.set_targets({target(up_tcp, fast(conf::HealthType::Tcp)), target(down_tcp, fast(conf::HealthType::Tcp)),
                  target(up_http, fast(conf::HealthType::Http)), target(none, fast(conf::HealthType::None))});
  hc.start();
  REQUIRE(hc.wait_initial(5s));

  auto e = sink.of("tcp-up");
  REQUIRE(e.size() == 1);
  CHECK(e[0].up);
  CHECK(e[0].reason == "tcp connect ok");
  CHECK(e[0].passes == 1);

  e = sink.of("tcp-down");
  REQUIRE(e.size() == 1);
  CHECK_FALSE(e[0].up);  // first result decides at once, fall does not apply
  CHECK(e[0].reason == "connect: connection refused");
  CHECK(e[0].fails == 1);

  e = sink.of("http-up");
  REQUIRE(e.size() == 1);
  CHECK(e[0].up);
  CHECK(e[0].reason == "http status 200");

  e = sink.of("none");
  REQUIRE(e.size() == 1);
  CHECK(e[0].up);
  CHECK(e[0].reason == "no health check");

  // Probing goes on, every interval, without new events while nothing changes.
  CHECK(eventually([&] { return up_tcp->checks_pass.load() >= 4; }));
  CHECK(eventually([&] { return down_tcp->checks_fail.load() >= 4; }));
  CHECK(none->checks_pass.load() + none->checks_fail.load() == 0);
  CHECK(sink.of("tcp-up").size() == 1);
  CHECK(sink.of("tcp-down").size() == 1);
  CHECK(hc.stop());
}

TEST_CASE("health checker: fall failures bring a backend down, rise passes bring it up",
          "[health][checker]") {
  testing::HttpServer http;
  auto b = backend("web", http.port());
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.start();
  hc.set_targets({target(b, fast(conf::HealthType::Http, /*rise=*/2, /*fall=*/3))});
  REQUIRE(hc.wait_initial(5s));
  REQUIRE(eventually([&] { return b->checks_pass.load() >= 3; }));

  http.set_status(503);
  REQUIRE(sink.wait_events("web", 2));
  auto e = sink.of("web");
  CHECK_FALSE(e[1].up);
  CHECK(e[1].reason == "http status 503");
  // Down exactly at the third failure: there was none before.
  CHECK(e[1].fails == 3);
  const uint64_t passes_at_down = e[1].passes;

  http.set_status(200);
  REQUIRE(sink.wait_events("web", 3));
  e = sink.of("web");
  CHECK(e[2].up);
  CHECK(e[2].reason == "http status 200");
  CHECK(e[2].passes == passes_at_down + 2);  // up exactly at the second pass
  CHECK(hc.stop());
  CHECK(sink.of("web").size() == 3);
}

TEST_CASE("health checker: a closed then reopened listener goes down then up", "[health][checker]") {
  testing::TcpServer tcp([](int fd) { close(fd); });
  auto b = backend("tcp", tcp.port());
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.start();
  hc.set_targets({target(b, fast(conf::HealthType::Tcp, 2, 2))});
  REQUIRE(hc.wait_initial(5s));
  REQUIRE(sink.of("tcp").at(0).up);

  REQUIRE(tcp.close_listener());
  REQUIRE(sink.wait_events("tcp", 2));
  auto e = sink.of("tcp");
  CHECK_FALSE(e[1].up);
  CHECK(e[1].reason == "connect: connection refused");

  REQUIRE(tcp.reopen_listener());
  REQUIRE(sink.wait_events("tcp", 3));
  e = sink.of("tcp");
  CHECK(e[2].up);
  CHECK(e[2].reason == "tcp connect ok");
  CHECK(hc.stop());
}

TEST_CASE("health checker: wait_initial is bounded by the first probe", "[health][checker]") {
  testing::SilentServer silent;
  auto b = backend("slow", silent.port());
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.start();
  auto c = fast(conf::HealthType::Http);
  c.timeout = 400ms;
  const auto t0 = steady_clock::now();
  hc.set_targets({target(b, c)});
  // The first result cannot come before the 400ms timeout.
  CHECK_FALSE(hc.wait_initial(50ms));
  CHECK(sink.of("slow").empty());
  REQUIRE(hc.wait_initial(5s));
  CHECK(steady_clock::now() - t0 >= 390ms);
  auto e = sink.of("slow");
  REQUIRE(e.size() == 1);
  CHECK_FALSE(e[0].up);
  CHECK(e[0].reason == "timeout after 400ms");

  // A new target makes wait_initial wait again; a kept one does not.
  testing::TcpServer tcp([](int fd) { close(fd); });
  auto fresh = backend("fresh", tcp.port());
  hc.set_targets({target(b, c), target(fresh, fast(conf::HealthType::Tcp))});
  REQUIRE(hc.wait_initial(5s));
  CHECK(sink.of("fresh").size() == 1);
  CHECK(hc.stop());
}

TEST_CASE("health checker: set_targets keeps the state of kept backends", "[health][checker]") {
  testing::HttpServer http;
  http.set_status(500);
  auto kept = backend("kept", http.port());
  auto removed = backend("removed", http.port());
  auto added = backend("added", http.port());
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.start();
  hc.set_targets({target(kept, fast(conf::HealthType::Http, /*rise=*/3, 2)),
                  target(removed, fast(conf::HealthType::Http))});
  REQUIRE(hc.wait_initial(5s));
  CHECK_FALSE(sink.of("kept").at(0).up);

  hc.set_targets(
      {target(kept, fast(conf::HealthType::Http, 3, 2)), target(added, fast(conf::HealthType::Http))});
  REQUIRE(hc.wait_initial(5s));
  CHECK(sink.of("added").size() == 1);
  const uint64_t removed_checks = removed->checks_pass.load() + removed->checks_fail.load();
  const uint64_t kept_fails = kept->checks_fail.load();
  REQUIRE(eventually([&] { return kept->checks_fail.load() >= kept_fails + 3; }));
  // The removed backend is no longer probed; the kept one was not re-announced.
  CHECK(removed->checks_pass.load() + removed->checks_fail.load() == removed_checks);
  CHECK(sink.of("kept").size() == 1);
  CHECK(sink.of("removed").size() == 1);

  // Still down with a rise of 3: a fresh state would come up at the first pass.
  http.set_status(200);
  REQUIRE(sink.wait_events("kept", 2));
  auto e = sink.of("kept");
  CHECK(e[1].up);
  CHECK(e[1].passes == 3);
  CHECK(hc.stop());
}

TEST_CASE("health checker: switching a kept backend's check on and off", "[health][checker]") {
  auto b = backend("b", testing::closed_port(SOCK_STREAM));
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.start();
  hc.set_targets({target(b, fast(conf::HealthType::Tcp, 2, 2))});
  REQUIRE(hc.wait_initial(5s));
  REQUIRE_FALSE(sink.of("b").at(0).up);

  hc.set_targets({target(b, fast(conf::HealthType::None))});
  REQUIRE(sink.wait_events("b", 2));
  auto e = sink.of("b");
  CHECK(e[1].up);
  CHECK(e[1].reason == "health check disabled");

  // Back to an active check: up until `fall` failures.
  const uint64_t fails = b->checks_fail.load();
  hc.set_targets({target(b, fast(conf::HealthType::Tcp, 2, 2))});
  REQUIRE(sink.wait_events("b", 3));
  e = sink.of("b");
  CHECK_FALSE(e[2].up);
  CHECK(e[2].fails == fails + 2);
  CHECK(hc.stop());
}

TEST_CASE("health checker: passive ejection and reinstatement", "[health][checker][outlier]") {
  auto a = backend("a", testing::closed_port(SOCK_STREAM));
  auto marker = backend("marker", testing::closed_port(SOCK_STREAM));
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.start();
  conf::Outlier three{3, 300ms};
  conf::Outlier one{1, 60000ms};
  hc.set_targets(
      {target(a, fast(conf::HealthType::None), three), target(marker, fast(conf::HealthType::None), one)});
  REQUIRE(hc.wait_initial(5s));

  // Two failures, a success (resets), two failures: not ejected. Reports are
  // applied in order, so the marker's ejection proves they were all seen.
  hc.report(a, false);
  hc.report(a, false);
  hc.report(a, true);
  hc.report(a, false);
  hc.report(a, false);
  hc.report(marker, false);
  REQUIRE(sink.wait_events("marker", 2));
  CHECK(sink.of("a").size() == 1);

  hc.report(a, false);
  REQUIRE(sink.wait_events("a", 2));
  auto e = sink.of("a");
  CHECK_FALSE(e[1].up);
  CHECK(e[1].reason == "ejected");

  REQUIRE(sink.wait_events("a", 3));
  e = sink.of("a");
  CHECK(e[2].up);
  CHECK(e[2].reason == "ejection ended");
  CHECK(e[2].at - e[1].at >= 250ms);
  CHECK(hc.stop());
}

TEST_CASE("health checker: ejection ends only if the active check says up", "[health][checker][outlier]") {
  testing::HttpServer http;
  auto b = backend("b", http.port());
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.start();
  const milliseconds ejection = 300ms;
  hc.set_targets({target(b, fast(conf::HealthType::Http, 1, 1), conf::Outlier{1, ejection})});
  REQUIRE(hc.wait_initial(5s));
  REQUIRE(sink.of("b").at(0).up);

  hc.report(b, false);
  REQUIRE(sink.wait_events("b", 2));
  CHECK(sink.of("b")[1].reason == "ejected");
  // Still probed while ejected: it really goes down now.
  http.set_status(500);
  const auto ejected_at = sink.of("b")[1].at;
  const uint64_t fails = b->checks_fail.load();
  REQUIRE(eventually([&] {
    return b->checks_fail.load() >= fails + 2 && steady_clock::now() - ejected_at > ejection + 200ms;
  }));
  // The ejection has ended, but the probe says down: nothing announced.
  CHECK(sink.of("b").size() == 2);

  http.set_status(200);
  REQUIRE(sink.wait_events("b", 3));
  auto e = sink.of("b");
  CHECK(e[2].up);
  CHECK(e[2].reason == "http status 200");
  CHECK(hc.stop());
}

TEST_CASE("health checker: reports from many threads", "[health][checker][outlier]") {
  auto b = backend("b", 1);
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.report(b, false);  // before start: dropped, must not crash
  hc.start();
  hc.set_targets({target(b, fast(conf::HealthType::None), conf::Outlier{1000000, 60000ms})});
  REQUIRE(hc.wait_initial(5s));
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t)
    workers.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) hc.report(b, i % 100 != 99);
    });
  for (auto& w : workers) w.join();
  // Nothing crossed the threshold: only the first result.
  hc.set_targets({target(b, fast(conf::HealthType::None), conf::Outlier{1, 60000ms})});
  // Reports racing a set_targets() may be judged by the previous settings;
  // wait until the new ones are applied.
  REQUIRE(hc.wait_initial(5s));
  hc.report(b, false);
  REQUIRE(sink.wait_events("b", 2));
  CHECK(sink.of("b")[1].reason == "ejected");
  CHECK(hc.stop());
  hc.report(b, false);  // after stop: dropped
}

TEST_CASE("health checker: every probe type from the checker thread", "[health][checker]") {
  testing::TlsServer tls;
  testing::DnsServer dns;
  testing::UdpEchoServer echo;
  auto t = backend("tls", tls.port());
  auto d = backend("dns", dns.port());
  auto u = backend("udp", echo.port());
  auto u_closed = backend("udp-closed", testing::closed_port(SOCK_DGRAM));
  auto udp = fast(conf::HealthType::Udp);
  udp.udp_send = "hi";
  udp.udp_expect = "echo:hi";
  RecordingSink sink;
  HealthChecker hc(sink);
  hc.start();
  hc.set_targets({target(t, fast(conf::HealthType::Tls)), target(d, fast(conf::HealthType::Dns)),
                  target(u, udp), target(u_closed, udp)});
  REQUIRE(hc.wait_initial(5s));
  CHECK(sink.of("tls").at(0).up);
  CHECK(sink.of("dns").at(0).up);
  CHECK(sink.of("udp").at(0).up);
  CHECK_FALSE(sink.of("udp-closed").at(0).up);

  dns.set_mode(testing::DnsMode::ServFail);
  REQUIRE(sink.wait_events("dns", 2));
  CHECK(sink.of("dns")[1].reason == "dns SERVFAIL");
  CHECK(hc.stop());
}

}  // namespace
}  // namespace lb::health
