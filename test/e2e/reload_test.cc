// End-to-end: configuration reload on SIGHUP — listeners and backends added
// and removed while connections keep flowing, invalid files rejected without
// disturbing service, and backend health carried across.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <fstream>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"
#include "test/support/netns.h"
#include "test/support/proc_net.h"
#include "test/support/temp_dir.h"

namespace lb::test {
namespace {

using nlohmann::json;

json status(uint16_t admin) {
  HttpResponse r = http_get(admin, "/api/v1/status");
  if (r.status != 200) return json();
  return json::parse(r.body, nullptr, false);
}

int64_t generation(uint16_t admin) {
  json st = status(admin);
  return st.is_object() ? st.value("generation", int64_t{-1}) : -1;
}

std::string health_of(uint16_t admin, const std::string& pool, const std::string& id) {
  json st = status(admin);
  if (!st.is_object()) return "";
  for (const auto& p : st["pools"])
    if (p.value("name", "") == pool)
      for (const auto& b : p["backends"])
        if (b.value("id", "") == id) return b.value("health", "");
  return "";
}

std::vector<std::string> listener_names(uint16_t admin) {
  std::vector<std::string> out;
  json st = status(admin);
  if (st.is_object())
    for (const auto& l : st["listeners"]) out.push_back(l.value("name", ""));
  return out;
}

double metric(uint16_t admin, const std::string& name, const Labels& labels) {
  auto m = fetch_metrics(admin);
  if (!m) return -1;
  return m->value(name, labels).value_or(-1);
}

// metric() from inside a namespace (lb runs there).
double metric_in(const NetNamespace& ns, uint16_t admin, const std::string& name, const Labels& labels) {
  double v = -1;
  ns.run_in([&] { v = metric(admin, name, labels); });
  return v;
}

// Connects and reads a Name backend's greeting ("" if none arrived).
std::string served_by(uint16_t port, Deadline deadline, Socket* keep = nullptr) {
  Socket s = tcp_connect("127.0.0.1", port, deadline);
  if (!s) return "";
  ReadResult r = read_until(s, "\n", deadline);
  if (r.end != ReadEnd::Complete) return "";
  r.data.pop_back();
  if (keep) *keep = std::move(s);
  return r.data;
}

// Sends SIGHUP and waits for lb to log the given generation.
bool reload_to(LbProcess& lb, int64_t generation, Deadline deadline) {
  const size_t from = lb.line_count();
  if (!lb.signal(SIGHUP)) return false;
  return lb
      .wait_for_line(std::regex(fmt::format(R"(^info reloaded generation={}\b)", generation)), deadline, from)
      .has_value();
}

// Sends SIGHUP and waits for lb to log that the reload failed; returns that line.
std::optional<std::string> reload_fails(LbProcess& lb, Deadline deadline) {
  const size_t from = lb.line_count();
  if (!lb.signal(SIGHUP)) return std::nullopt;
  return lb.wait_for_line(std::regex(R"(^error reload failed, keeping the running configuration\b.*)"),
                          deadline, from);
}

// One [[listener]] table.
std::string listener_block(const std::string& name, const std::string& bind, const std::string& pool) {
  return fmt::format("\n[[listener]]\nname = \"{}\"\nbind = \"{}\"\npool = \"{}\"\n", name, bind, pool);
}

// Echoes a fresh payload over one established connection every 50ms until
// stopped; any mismatch or error ends the loop and is kept in `error`.
class EchoLoop {
 public:
  explicit EchoLoop(Socket& s) : s_(s) {
    thread_ = std::thread([this] {
      uint64_t seed = 1;
      while (!stop_.load()) {
        std::string payload = random_bytes(200, seed++);
        ReadResult r = exchange(s_, payload, payload.size(), in(seconds(5)));
        if (r.data != payload) {
          error_ =
              fmt::format("echo {} failed: {} after {} of {} bytes (first difference at {})", seed - 1,
                          to_string(r.end), r.data.size(), payload.size(), mismatch_offset(r.data, payload));
          failed_.store(true);
          return;
        }
        ++echoes_;
        std::this_thread::sleep_for(milliseconds(50));
      }
    });
  }
  ~EchoLoop() { stop(); }
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int echoes() const { return echoes_.load(); }
  bool failed() const { return failed_.load(); }
  // Valid once stop() returned.
  const std::string& error() const { return error_; }

 private:
  Socket& s_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::atomic<int> echoes_{0};
  std::string error_;
  std::thread thread_;
};

std::string backend_block(const std::string& id, const std::string& address) {
  return fmt::format("\n[[pool.backend]]\nid = \"{}\"\naddress = \"{}\"\n", id, address);
}

TEST_CASE("reload: SIGHUP adds a backend and a listener while a connection keeps echoing", "[e2e][reload]") {
  TestBackend one(TestBackend::named("one\n")), two(TestBackend::named("two\n"));
  REQUIRE((one.ok() && two.ok()));
  const uint16_t web2_port = refused_port();
  auto config = [&](bool grown) {
    std::string out = global_section(1) + R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "p"
)";
    if (grown)
      out +=
          fmt::format("\n[[listener]]\nname = \"web2\"\nbind = \"127.0.0.1:{}\"\npool = \"p\"\n", web2_port);
    out += "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
           backend_block("one", one.address());
    if (grown) out += backend_block("two", two.address());
    return out;
  };
  LbProcess lb(config(false));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  CHECK(generation(admin) == 1);

  Socket long_conn;
  REQUIRE(served_by(port, in(seconds(5)), &long_conn) == "one");
  EchoLoop loop(long_conn);
  REQUIRE(wait_until([&] { return loop.echoes() >= 3 || loop.failed(); }, in(seconds(5))));

  REQUIRE(lb.write_config(config(true)));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  // The connection keeps echoing through and after the reload.
  const int at_reload = loop.echoes();
  CHECK(wait_until([&] { return loop.echoes() >= at_reload + 5 || loop.failed(); }, in(seconds(5))));
  CHECK(!loop.failed());

  CHECK(lb.listener_port("web2") == web2_port);
  CHECK(served_by(web2_port, in(seconds(5))) != "");
  std::map<std::string, int> seen;
  for (int i = 0; i < 6; ++i) ++seen[served_by(port, in(seconds(5)))];
  CHECK(seen["one"] == 3);
  CHECK(seen["two"] == 3);
  CHECK(generation(admin) == 2);
  CHECK(listener_names(admin) == std::vector<std::string>{"web", "web2"});
  CHECK(metric(admin, "lb_config_reloads_total", {{"result", "ok"}}) == 1);
  CHECK(metric(admin, "lb_config_reloads_total", {{"result", "error"}}) == 0);

  loop.stop();
  INFO(loop.error());
  CHECK(!loop.failed());
  CHECK(loop.echoes() >= at_reload + 5);
  long_conn.close();
  CHECK(lb.terminate() == 0);
}

// "A listener bind with port 0 takes a free port" (README) — per listener.
// The reload tests elsewhere in this file give added listeners explicit
// ports so they test reloading, not this.
TEST_CASE("listeners: two listeners on 127.0.0.1:0 each get a port of their own",
          "[e2e][reload][listeners]") {
  TestBackend one(TestBackend::named("one\n")), two(TestBackend::named("two\n"));
  REQUIRE((one.ok() && two.ok()));
  const std::string config = global_section(1) +
                             "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n"
                             "\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\npool = \"q\"\n"
                             "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
                             backend_block("one", one.address()) +
                             "\n[[pool]]\nname = \"q\"\n[pool.health_check]\ntype = \"none\"\n" +
                             backend_block("two", two.address());
  LbProcess lb(config);
  REQUIRE(lb.wait_started());
  const uint16_t web = lb.listener_port("web"), other = lb.listener_port("other");
  INFO(lb.output());
  CHECK(web != 0);
  CHECK(other != 0);
  CHECK(other != web);
  CHECK(!lb.process().find_line(std::regex("^error ")));
  CHECK(served_by(web, in(seconds(5))) == "one");
  if (other != 0 && other != web) CHECK(served_by(other, in(seconds(5))) == "two");
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reload: a listener added on port 0 gets a port of its own", "[e2e][reload][listeners]") {
  TestBackend one(TestBackend::named("one\n")), two(TestBackend::named("two\n"));
  REQUIRE((one.ok() && two.ok()));
  auto config = [&](bool grown) {
    std::string out =
        global_section(1) + "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n";
    if (grown) out += "\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\npool = \"q\"\n";
    out += "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
           backend_block("one", one.address());
    out += "\n[[pool]]\nname = \"q\"\n[pool.health_check]\ntype = \"none\"\n" +
           backend_block("two", two.address());
    return out;
  };
  LbProcess lb(config(false));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  REQUIRE(lb.write_config(config(true)));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  const uint16_t other = lb.listener_port("other");
  INFO(lb.output());
  CHECK(other != 0);
  CHECK(other != port);
  if (other != 0 && other != port) CHECK(served_by(other, in(seconds(5))) == "two");
  CHECK(served_by(port, in(seconds(5))) == "one");
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reload: a port-0 bind rewritten as the port lb chose keeps its listening sockets",
          "[e2e][reload][listeners]") {
  TestBackend one(TestBackend::named("one\n"));
  REQUIRE(one.ok());
  auto config = [&](const std::string& bind) {
    return global_section(2) + "[[listener]]\nname = \"web\"\nbind = \"" + bind + "\"\npool = \"p\"\n" +
           "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
           backend_block("one", one.address());
  };
  LbProcess lb(config("127.0.0.1:0"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const auto sockets = bound_socket_inodes(lb.pid(), "tcp", port);
  CHECK(sockets.size() == 2);  // one per worker
  // The same address: the same bind. A second SO_REUSEPORT group beside the
  // first, whose sockets then close, would reset the connections the kernel
  // had queued on them.
  REQUIRE(lb.write_config(config("127.0.0.1:" + std::to_string(port))));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  INFO(lb.output());
  CHECK(bound_socket_inodes(lb.pid(), "tcp", port) == sockets);
  CHECK(!lb.process().find_line(std::regex("^error ")));
  for (int i = 0; i < 4; ++i) CHECK(served_by(port, in(seconds(5))) == "one");
  // Another listener cannot take that address while the port-0 bind stays:
  // one socket group serves one bind.
  REQUIRE(lb.write_config(config("127.0.0.1:0") +
                          listener_block("other", "127.0.0.1:" + std::to_string(port), "p")));
  auto failed = reload_fails(lb, in(seconds(10)));
  REQUIRE(failed);
  CHECK(lb.process().find_line(std::regex("^error cannot listen listener=other .*port-0 bind that stays")));
  CHECK(bound_socket_inodes(lb.pid(), "tcp", port) == sockets);
  CHECK(served_by(port, in(seconds(5))) == "one");
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reload: five reloads under continuous connection load refuse nothing", "[e2e][reload]") {
  TestBackend e1(TestBackend::echo()), e2(TestBackend::echo());
  REQUIRE((e1.ok() && e2.ok()));
  auto config = [&](int variant) {
    std::string out = global_section(2) + fmt::format(R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "p"
idle_timeout = "{}s"

[[pool]]
name = "p"
[pool.health_check]
type = "none"
)",
                                                      60 + variant);
    out += backend_block("e1", e1.address());
    if (variant % 2 == 1) out += backend_block("e2", e2.address());
    return out;
  };
  LbProcess lb(config(0));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");

  // One client opening, using and closing connections back to back.
  std::atomic<bool> stop{false};
  std::atomic<int> done{0};
  std::atomic<int> failed{0};
  std::string first_failure;  // written by the client thread only, read after join
  std::thread client([&] {
    const Deadline hard_stop = in(seconds(15));
    for (int i = 0; !stop.load() && i < 3000 && !expired(hard_stop); ++i) {
      int err = 0;
      Socket s = tcp_connect("127.0.0.1", port, in(seconds(5)), &err);
      std::string payload = fmt::format("connection {:06d} payload", i);
      ReadResult r;
      if (s) r = exchange(s, payload, payload.size(), in(seconds(5)));
      if (!s || r.data != payload) {
        if (failed.fetch_add(1) == 0)
          first_failure =
              fmt::format("connection {}: connect errno {}, read {} '{}'", i, err, to_string(r.end), r.data);
      }
      ++done;
      if (failed.load() > 0) break;  // one failure is enough; do not spin
    }
  });

  const auto t0 = Clock::now();
  bool reloads_ok = wait_until([&] { return done.load() >= 20; }, in(seconds(10)));
  for (int gen = 2; reloads_ok && gen <= 6; ++gen) {
    // Spread the reloads over the load: 100 connections between two.
    const int before = done.load();
    CHECK(wait_until([&] { return done.load() >= before + 100 || failed.load() > 0; }, in(seconds(10))));
    reloads_ok = lb.write_config(config(gen - 1)) && reload_to(lb, gen, in(seconds(10)));
    INFO("reload to generation " << gen);
    CHECK(reloads_ok);
  }
  const int at_last_reload = done.load();
  CHECK(
      wait_until([&] { return done.load() >= at_last_reload + 100 || failed.load() > 0; }, in(seconds(10))));
  stop.store(true);
  client.join();
  WARN("reload under load: " << done.load() << " connections in "
                             << std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count() << " ms"
                             << ", 5 reloads");
  INFO(first_failure);
  CHECK(failed.load() == 0);
  CHECK(reloads_ok);
  CHECK(e2.accepted() > 0);  // the reloads really changed the pool under the load
  CHECK(metric(lb.admin_port(), "lb_config_reloads_total", {{"result", "ok"}}) == 5);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reload: an invalid file is rejected and the running configuration keeps serving",
          "[e2e][reload]") {
  TestBackend one(TestBackend::named("one\n"));
  REQUIRE(one.ok());
  const std::string good = global_section(1) + R"([[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "p"

[[pool]]
name = "p"
[pool.health_check]
type = "none"
)" + backend_block("one", one.address());
  LbProcess lb(good);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  const std::regex error_re(R"(^error reload failed: (.+):(\d+):(\d+): error: (.*)$)");

  // 1. A TOML syntax error on a known line.
  const int good_lines = static_cast<int>(std::count(good.begin(), good.end(), '\n'));
  size_t from = lb.line_count();
  REQUIRE(lb.write_config(good + "\n[[listener]\nname = \"x\"\n"));
  REQUIRE(lb.signal(SIGHUP));
  auto syntax = lb.wait_for_line(error_re, in(seconds(5)), from);
  REQUIRE(syntax);
  std::smatch m;
  REQUIRE(std::regex_match(*syntax, m, error_re));
  INFO(*syntax);
  CHECK(m[1].str() == lb.config_path());
  CHECK(std::stoi(m[2].str()) == good_lines + 2);
  CHECK(std::stoi(m[3].str()) >= 1);
  CHECK(served_by(port, in(seconds(5))) == "one");
  CHECK(generation(admin) == 1);
  CHECK(wait_until(
      [&] {
        return metric(admin, "lb_config_reloads_total", {{"result", "error"}}) == 1;
      },
      in(seconds(3))));

  // 2. An unknown key (line 2, column 1).
  std::string unknown = good;
  unknown.replace(0, std::string("[global]\n").size(), "[global]\nbogus_key = 1\n");
  from = lb.line_count();
  REQUIRE(lb.write_config(unknown));
  REQUIRE(lb.signal(SIGHUP));
  auto unknown_line = lb.wait_for_line(error_re, in(seconds(5)), from);
  REQUIRE(unknown_line);
  REQUIRE(std::regex_match(*unknown_line, m, error_re));
  INFO(*unknown_line);
  CHECK(m[1].str() == lb.config_path());
  CHECK(m[2].str() == "2");
  CHECK(m[3].str() == "1");
  CHECK(m[4].str().find("bogus_key") != std::string::npos);
  CHECK(served_by(port, in(seconds(5))) == "one");
  CHECK(generation(admin) == 1);
  CHECK(wait_until(
      [&] {
        return metric(admin, "lb_config_reloads_total", {{"result", "error"}}) == 2;
      },
      in(seconds(3))));
  CHECK(metric(admin, "lb_config_reloads_total", {{"result", "ok"}}) == 0);

  // 3. A good file afterwards is taken as usual.
  REQUIRE(lb.write_config(good));
  CHECK(reload_to(lb, 2, in(seconds(10))));
  CHECK(generation(admin) == 2);
  CHECK(served_by(port, in(seconds(5))) == "one");
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reload: a removed listener stops accepting while its connections finish", "[e2e][reload]") {
  TestBackend one(TestBackend::named("one\n"));
  REQUIRE(one.ok());
  const uint16_t gone_port = refused_port();
  auto config = [&](bool with_gone) {
    std::string out =
        global_section(1) + "[[listener]]\nname = \"keep\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n";
    if (with_gone)
      out +=
          fmt::format("\n[[listener]]\nname = \"gone\"\nbind = \"127.0.0.1:{}\"\npool = \"p\"\n", gone_port);
    return out + "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
           backend_block("one", one.address());
  };
  LbProcess lb(config(true));
  REQUIRE(lb.wait_started());
  REQUIRE(lb.listener_port("gone") == gone_port);
  const uint16_t keep_port = lb.listener_port("keep");
  const uint16_t admin = lb.admin_port();

  Socket established;
  REQUIRE(served_by(gone_port, in(seconds(5)), &established) == "one");
  CHECK(exchange(established, "before", 6, in(seconds(5))).data == "before");

  REQUIRE(lb.write_config(config(false)));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  int err = 0;
  CHECK(wait_until(
      [&] {
        Socket s = tcp_connect("127.0.0.1", gone_port, in(seconds(2)), &err);
        return !s && err == ECONNREFUSED;
      },
      in(seconds(3))));
  INFO("last connect errno " << err);
  CHECK(err == ECONNREFUSED);
  CHECK(listener_names(admin) == std::vector<std::string>{"keep"});

  // The established connection is unaffected, and ends normally.
  for (int i = 0; i < 3; ++i) {
    std::string payload = fmt::format("after reload {}", i);
    CHECK(exchange(established, payload, payload.size(), in(seconds(5))).data == payload);
  }
  CHECK(shutdown_write(established));
  ReadResult tail = read_until_eof(established, in(seconds(5)));
  CHECK(tail.end == ReadEnd::Eof);
  established.close();
  CHECK(served_by(keep_port, in(seconds(5))) == "one");
  CHECK(lb.terminate() == 0);
}

TEST_CASE("reload: backend health is kept across a reload", "[e2e][reload][health]") {
  const std::string dead = fmt::format("127.0.0.1:{}", refused_port());
  TestBackend live(TestBackend::named("live\n"));
  REQUIRE(live.ok());
  // A long interval: after the reload no probe would run within the test, so
  // the states seen are the ones carried over (a reset would show "dead" as
  // up until 3 fresh failures, or "live" as down until probed).
  auto config = [&](const std::string& idle) {
    return global_section(1) +
           fmt::format(R"([[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "p"
retries = 0
idle_timeout = "{}"

[[pool]]
name = "p"
[pool.health_check]
type = "tcp"
interval = "30s"
timeout = "200ms"
fall = 3
rise = 2
)",
                       idle) +
           backend_block("dead", dead) + backend_block("live", live.address());
  };
  LbProcess lb(config("10m"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  REQUIRE(health_of(admin, "p", "dead") == "down");
  REQUIRE(health_of(admin, "p", "live") == "up");

  const size_t from = lb.line_count();
  REQUIRE(lb.write_config(config("5m")));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  CHECK(health_of(admin, "p", "dead") == "down");
  CHECK(health_of(admin, "p", "live") == "up");
  // retries = 0: every connection succeeding means "dead" is never offered.
  for (int i = 0; i < 10; ++i) CHECK(served_by(port, in(seconds(5))) == "live");
  CHECK(metric(admin, "lb_backend_connect_failures_total", {{"pool", "p"}, {"backend", "dead"}}) == 0);
  CHECK(!lb.process().find_line(std::regex("^info backend up pool=p backend=dead "), from));
  CHECK(!lb.process().find_line(std::regex("^info backend down pool=p backend=live "), from));
  CHECK(lb.terminate() == 0);
}

// Issue 15: a reload is all or nothing. Before, the first new listener's
// sockets stayed bound (SO_REUSEPORT) and listening after the second bind
// failed: the kernel completed handshakes nobody accepted, and after the next
// good reload about half of the new connections hung.
TEST_CASE("reload: a failed bind closes every socket the reload opened; the next good reload serves all",
          "[e2e][reload][transaction]") {
  TestBackend one(TestBackend::named("one\n"));
  REQUIRE(one.ok());
  Socket busy = tcp_listen("127.0.0.1");  // holds a port, no SO_REUSEPORT: lb cannot bind it
  REQUIRE(busy);
  const uint16_t busy_port = local_port(busy);
  const uint16_t first_port = refused_port();
  const uint16_t second_port = refused_port();
  const std::string pool = "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
                           backend_block("one", one.address());
  const std::string head = global_section(2) + listener_block("web", "127.0.0.1:0", "p");
  LbProcess lb(head + pool);
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();

  SECTION("the second bind's port is in use") {
    REQUIRE(lb.write_config(head + listener_block("a", fmt::format("127.0.0.1:{}", first_port), "p") +
                            listener_block("b", fmt::format("127.0.0.1:{}", busy_port), "p") + pool));
  }
  SECTION("the second bind's address is not on this host") {
    REQUIRE(lb.write_config(head + listener_block("a", fmt::format("127.0.0.1:{}", first_port), "p") +
                            listener_block("b", "192.0.2.1:80", "p") + pool));
  }
  auto failed = reload_fails(lb, in(seconds(10)));
  REQUIRE(failed);
  INFO(lb.output());
  CHECK(lb.process().find_line(std::regex(R"(^error cannot bind listener=b .*)")));
  CHECK(metric(admin, "lb_config_reloads_total", {{"result", "error"}}) == 1);
  CHECK(generation(admin) == 1);
  // Nothing of the failed reload listens: the first new port refuses.
  int err = 0;
  Socket probe = tcp_connect("127.0.0.1", first_port, in(seconds(5)), &err);
  CHECK(!probe);
  CHECK(err == ECONNREFUSED);
  probe.close();

  // The operator fixes the file; every connection to the new listener is served.
  REQUIRE(lb.write_config(head + listener_block("a", fmt::format("127.0.0.1:{}", first_port), "p") +
                          listener_block("b", fmt::format("127.0.0.1:{}", second_port), "p") + pool));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  std::vector<Socket> conns;
  for (int i = 0; i < 200; ++i) {
    Socket s = tcp_connect("127.0.0.1", first_port, in(seconds(5)));
    REQUIRE(s);
    conns.push_back(std::move(s));
  }
  // One shared deadline: a connection stuck in an orphaned backlog waits for it once.
  const Deadline answers = in(seconds(10));
  int answered = 0;
  for (auto& s : conns)
    if (read_until(s, "\n", answers).data == "one\n") ++answered;
  CHECK(answered == 200);
  CHECK(metric(admin, "lb_config_reloads_total", {{"result", "ok"}}) == 1);
  CHECK(metric(admin, "lb_config_reloads_total", {{"result", "error"}}) == 1);
  conns.clear();
  CHECK(lb.terminate() == 0);
}

// Issue 15: a backend is one object for as long as its pool and id exist.
// Before, a reload that changed weight or max_connections made a new Backend
// whose active count restarted at 0 while old sessions decremented the old
// one, so max_connections could be exceeded.
TEST_CASE("reload: changing a backend's weight and max_connections keeps its live counts and limit",
          "[e2e][reload][identity]") {
  TestBackend one(TestBackend::named("one\n"));
  REQUIRE(one.ok());
  auto config = [&](int weight, int max_conn) {
    return global_section(2) + listener_block("web", "127.0.0.1:0", "p") +
           fmt::format(
               "retries = 0\n\n[[pool]]\nname = \"p\"\nselector = \"least_connections\"\n"
               "[pool.health_check]\ntype = \"none\"\n\n[[pool.backend]]\nid = \"one\"\naddress = \"{}\"\n"
               "weight = {}\nmax_connections = {}\n",
               one.address(), weight, max_conn);
  };
  LbProcess lb(config(1, 2));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t admin = lb.admin_port();
  const Labels backend{{"pool", "p"}, {"backend", "one"}};

  std::vector<Socket> held(2);
  for (auto& s : held) REQUIRE(served_by(port, in(seconds(5)), &s) == "one");
  REQUIRE(metric(admin, "lb_backend_active", backend) == 2);

  REQUIRE(lb.write_config(config(5, 3)));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  INFO(lb.output());
  // The same backend: its two open connections still count.
  CHECK(metric(admin, "lb_backend_active", backend) == 2);
  CHECK(metric(admin, "lb_backend_connections_total", backend) == 2);
  json st = status(admin);
  CHECK(st["pools"][0]["backends"][0].value("weight", 0) == 5);
  CHECK(st["pools"][0]["backends"][0].value("active", -1) == 2);

  // max_connections = 3 with two open: one more is served, the next refused.
  Socket third;
  CHECK(served_by(port, in(seconds(5)), &third) == "one");
  CHECK(served_by(port, in(seconds(5))) == "");
  CHECK(wait_until(
      [&] {
        return metric(admin, "lb_listener_rejected_total", {{"listener", "web"}, {"reason", "limit"}}) == 1;
      },
      in(seconds(5))));
  CHECK(metric(admin, "lb_backend_active", backend) == 3);

  // Closing the connections opened before the reload brings the gauge down to one.
  held.clear();
  CHECK(wait_until([&] { return metric(admin, "lb_backend_active", backend) == 1; }, in(seconds(5))));
  CHECK(metric(admin, "lb_backend_active", backend) == 1);
  third.close();
  CHECK(wait_until([&] { return metric(admin, "lb_backend_active", backend) == 0; }, in(seconds(5))));
  CHECK(lb.terminate() == 0);
}

// A health endpoint that answers each HTTP request `delay` after it arrived:
// a backend whose first probe takes a while.
class SlowHealthEndpoint {
 public:
  explicit SlowHealthEndpoint(milliseconds delay) : delay_(delay), listener_(tcp_listen("127.0.0.1")) {
    thread_ = std::thread([this] { run(); });
  }
  ~SlowHealthEndpoint() {
    stop_.store(true);
    thread_.join();
  }
  uint16_t port() const { return local_port(listener_); }
  int answered() const { return answered_.load(); }

 private:
  void run() {
    while (!stop_.load()) {
      pollfd p{listener_.fd(), POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      Socket c(::accept4(listener_.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!c) continue;
      const Deadline answer_at = in(delay_);
      if (read_until(c, "\r\n\r\n", in(seconds(5))).end != ReadEnd::Complete) continue;
      // The slowness is this endpoint's behaviour, not a wait of the test.
      std::this_thread::sleep_until(answer_at);
      write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", in(seconds(5)));
      ++answered_;
    }
  }
  milliseconds delay_;
  Socket listener_;
  std::atomic<bool> stop_{false};
  std::atomic<int> answered_{0};
  std::thread thread_;
};

// Issue 15: a listener added by a reload on a new health-checked pool used to
// refuse clients (no_backend) until the first probes came back; start probes
// first, and so must a reload.
TEST_CASE("reload: a listener added on a new health-checked pool serves its first client",
          "[e2e][reload][health]") {
  TestBackend one(TestBackend::named("one\n")), two(TestBackend::named("two\n"));
  REQUIRE((one.ok() && two.ok()));
  SlowHealthEndpoint health(milliseconds(500));
  const uint16_t new_port = refused_port();
  const std::string base = global_section(1) + listener_block("web", "127.0.0.1:0", "p") +
                           "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
                           backend_block("one", one.address());
  LbProcess lb(base);
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();
  REQUIRE(lb.write_config(
      base + listener_block("new", fmt::format("127.0.0.1:{}", new_port), "q") +
      fmt::format("retries = 0\n\n[[pool]]\nname = \"q\"\n[pool.health_check]\ntype = \"http\"\n"
                  "interval = \"30s\"\ntimeout = \"3s\"\nport = {}\n",
                  health.port()) +
      backend_block("two", two.address())));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  INFO(lb.output());
  // The first client right after the reload is served, by the probed backend.
  CHECK(served_by(new_port, in(seconds(5))) == "two");
  CHECK(health.answered() >= 1);
  CHECK(metric(admin, "lb_listener_rejected_total", {{"listener", "new"}, {"reason", "no_backend"}}) == 0);
  CHECK(health_of(admin, "q", "two") == "up");
  CHECK(lb.terminate() == 0);
}

// Counts the lines of a file ("" when it cannot be read).
size_t line_count_of(const std::string& path) {
  std::ifstream f(path);
  return static_cast<size_t>(
      std::count(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>(), '\n'));
}

// Issue 15: access_log changes used to be ignored on reload.
TEST_CASE("reload: access_log follows the file: off, a path, another path, off again",
          "[e2e][reload][access_log]") {
  TestBackend one(TestBackend::named("one\n"));
  REQUIRE(one.ok());
  TempDir dir;
  const std::string first = dir.path() + "/first.log", second = dir.path() + "/second.log";
  auto config = [&](const std::string& access_log) {
    return fmt::format("[global]\nworkers = 1\naccess_log = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
                       access_log) +
           listener_block("web", "127.0.0.1:0", "p") +
           "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
           backend_block("one", one.address());
  };
  LbProcess lb(config("off"));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  auto one_connection = [&] {
    Socket s;
    REQUIRE(served_by(port, in(seconds(5)), &s) == "one");
  };
  int gen = 1;
  auto switch_to = [&](const std::string& target) {
    REQUIRE(lb.write_config(config(target)));
    REQUIRE(reload_to(lb, ++gen, in(seconds(10))));
  };

  switch_to(first);  // off -> a path
  one_connection();
  CHECK(wait_until([&] { return line_count_of(first) == 1; }, in(seconds(5))));
  switch_to(second);  // a path -> another
  one_connection();
  CHECK(wait_until([&] { return line_count_of(second) == 1; }, in(seconds(5))));
  CHECK(line_count_of(first) == 1);
  switch_to("off");  // a path -> off: this connection is not logged anywhere ...
  one_connection();
  switch_to(second);  // ... which the next one, logged, shows
  one_connection();
  CHECK(wait_until([&] { return line_count_of(second) >= 2; }, in(seconds(5))));
  CHECK(line_count_of(second) == 2);
  CHECK(line_count_of(first) == 1);
  CHECK(lb.terminate() == 0);
}

// Issue 15: [admin] listen changes used to be ignored on reload.
TEST_CASE("reload: the admin listener is moved, removed and added back", "[e2e][reload][admin]") {
  TestBackend one(TestBackend::named("one\n"));
  REQUIRE(one.ok());
  const uint16_t moved = refused_port();
  auto config = [&](const std::string& admin) {
    std::string out = "[global]\nworkers = 1\naccess_log = \"off\"\n";
    if (!admin.empty()) out += fmt::format("\n[admin]\nlisten = \"{}\"\n", admin);
    return out + listener_block("web", "127.0.0.1:0", "p") +
           "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
           backend_block("one", one.address());
  };
  LbProcess lb(config("127.0.0.1:0"));
  REQUIRE(lb.wait_started());
  const uint16_t first = lb.admin_port();
  REQUIRE(http_get(first, "/healthz").status == 200);
  auto refused = [](uint16_t port) {
    int err = 0;
    Socket s = tcp_connect("127.0.0.1", port, in(seconds(5)), &err);
    return !s && err == ECONNREFUSED;
  };

  const std::string moved_at = fmt::format("127.0.0.1:{}", moved);
  REQUIRE(lb.write_config(config(moved_at)));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  INFO(lb.output());
  CHECK(http_get(moved, "/healthz").status == 200);
  CHECK(refused(first));
  CHECK(metric(moved, "lb_config_reloads_total", {{"result", "ok"}}) == 1);

  // Removing [admin]: the reload is not seen on the API, so wait for the log.
  REQUIRE(lb.write_config(config("")));
  REQUIRE(reload_to(lb, 3, in(seconds(10))));
  CHECK(refused(moved));

  REQUIRE(lb.write_config(config(moved_at)));
  REQUIRE(reload_to(lb, 4, in(seconds(10))));
  CHECK(http_get(moved, "/healthz").status == 200);
  CHECK(generation(moved) == 4);
  CHECK(served_by(lb.listener_port("web"), in(seconds(5))) == "one");
  CHECK(lb.terminate() == 0);
}

// Issue 15: settings that need a restart are named in a warning, never ignored.
TEST_CASE("reload: changing user or workers warns by key name and applies the rest", "[e2e][reload]") {
  TestBackend one(TestBackend::named("one\n"));
  REQUIRE(one.ok());
  auto config = [&](const std::string& extra_global) {
    return "[global]\nworkers = 1\naccess_log = \"off\"\n" + extra_global +
           "\n[admin]\nlisten = \"127.0.0.1:0\"\n" + listener_block("web", "127.0.0.1:0", "p") +
           "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
           backend_block("one", one.address());
  };
  LbProcess lb(config(""));
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();
  size_t from = lb.line_count();
  REQUIRE(lb.write_config(config("user = \"nobody\"\n")));
  REQUIRE(reload_to(lb, 2, in(seconds(10))));
  INFO(lb.output());
  CHECK(lb.process().find_line(std::regex(R"(^warn .*needs a restart.* key=user\b.*)"), from));

  from = lb.line_count();
  REQUIRE(
      lb.write_config("[global]\nworkers = 2\naccess_log = \"off\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n" +
                      listener_block("web", "127.0.0.1:0", "p") + "idle_timeout = \"1m\"\n" +
                      "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" +
                      backend_block("one", one.address())));
  REQUIRE(reload_to(lb, 3, in(seconds(10))));
  CHECK(lb.process().find_line(std::regex(R"(^warn .*needs a restart.* key=workers\b.*)"), from));
  CHECK(!lb.process().find_line(std::regex(R"(^warn .* key=user\b.*)"),
                                from));  // the file is back to the running user
  CHECK(generation(admin) == 3);
  CHECK(served_by(lb.listener_port("web"), in(seconds(5))) == "one");
  CHECK(lb.terminate() == 0);
}

// A DNS server on 127.0.0.1:53 inside a NetNamespace: silent (it reads every
// query and never answers) until answer() is called; from then on it answers
// A queries with 127.0.0.1 and other types with no record.
class StubDns {
 public:
  explicit StubDns(const NetNamespace& ns) {
    std::promise<bool> bound;
    auto ready = bound.get_future();
    thread_ = std::thread([this, &ns, &bound] {
      Socket s;
      if (ns.enter()) s = Socket(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      sockaddr_storage addr{};
      socklen_t len = 0;
      bool ok = s && make_sockaddr("127.0.0.1", 53, &addr, &len) &&
                ::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), len) == 0;
      bound.set_value(ok);
      if (ok) serve(s);
    });
    ok_ = ready.get();
  }
  ~StubDns() {
    stop_.store(true);
    thread_.join();
  }
  bool ok() const { return ok_; }
  void answer() { answering_.store(true); }
  int queries() const { return queries_.load(); }

 private:
  void serve(const Socket& s) {
    while (!stop_.load()) {
      pollfd p{s.fd(), POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      unsigned char q[512];
      sockaddr_storage from{};
      socklen_t from_len = sizeof from;
      ssize_t n = ::recvfrom(s.fd(), q, sizeof q, 0, reinterpret_cast<sockaddr*>(&from), &from_len);
      if (n < 12) continue;
      ++queries_;
      if (!answering_.load()) continue;
      // The question: QNAME labels, then QTYPE and QCLASS.
      size_t end = 12;
      while (end < static_cast<size_t>(n) && q[end] != 0) end += q[end] + 1u;
      end += 5;
      if (end > static_cast<size_t>(n)) continue;
      const bool type_a = q[end - 4] == 0 && q[end - 3] == 1;
      std::string r(reinterpret_cast<char*>(q), end);
      r[2] = static_cast<char>(0x81);   // QR, RD
      r[3] = static_cast<char>(0x80);   // RA, NOERROR
      r[4] = 0, r[5] = 1;               // one question
      r[6] = 0, r[7] = type_a ? 1 : 0;  // answers
      r[8] = r[9] = r[10] = r[11] = 0;  // no authority or additional records (drops EDNS)
      if (type_a) r += std::string("\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01", 16);
      ::sendto(s.fd(), r.data(), r.size(), 0, reinterpret_cast<sockaddr*>(&from), from_len);
    }
  }
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<bool> answering_{false};
  std::atomic<int> queries_{0};
  std::thread thread_;
};

// /healthz answers are measured against this bound. Sanitizer builds run
// lb several times slower; there the bound only shows the loop never waited
// on the resolver (which stalled it for the resolver's whole timeout, 30 s).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr double kHealthzBoundMs = 500;
#else
constexpr double kHealthzBoundMs = 100;
#endif

// Issue 15: backend host names were resolved with a blocking getaddrinfo on
// the main loop, so a slow resolver stalled /healthz and the watchdog. lb
// runs in a namespace of the test's own whose resolver (127.0.0.1:53) reads
// every query and does not answer it.
TEST_CASE("reload: /healthz keeps answering while a backend host name waits on a resolver that never answers",
          "[e2e][reload][resolve]") {
  NetNamespace ns;
  INFO(ns.error());
  REQUIRE(ns.ok());
  REQUIRE(ns.write_resolv_conf("nameserver 127.0.0.1\noptions timeout:30 attempts:1\n"));
  StubDns dns(ns);
  REQUIRE(dns.ok());
  std::unique_ptr<TestBackend> backend;
  REQUIRE(ns.run_in([&] { backend = std::make_unique<TestBackend>(TestBackend::named("resolved\n")); }));
  REQUIRE(backend->ok());
  auto config = [&](const std::string& address) {
    return global_section(1) + listener_block("web", "127.0.0.1:0", "p") +
           "\n[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"none\"\n" + backend_block("b", address);
  };
  LbOptions options;
  options.prefix = ns.exec_prefix();
  LbProcess lb(config(backend->address()), options);
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();
  const uint16_t port = lb.listener_port("web");
  const std::string by_name = fmt::format("backend.lb-reload-test.example:{}", backend->port());
  REQUIRE(lb.write_config(config(by_name)));

  // Samples /healthz from inside the namespace until told to stop.
  struct Samples {
    std::vector<double> ms;
    int failed = 0;
    std::string first_failure;
  };
  auto sample_healthz = [&](std::atomic<bool>& stop, Samples& out) {
    return std::thread([&] {
      if (!ns.enter()) {
        out.failed = -1;
        return;
      }
      const Deadline hard_stop = in(seconds(60));
      while (!stop.load() && !expired(hard_stop)) {
        const auto t0 = Clock::now();
        HttpResponse r = http_get(admin, "/healthz", in(seconds(5)));
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (r.status == 200) {
          out.ms.push_back(ms);
        } else if (out.failed++ == 0) {
          out.first_failure = fmt::format("status {} after {:.1f} ms: {}", r.status, ms, r.error);
        }
        std::this_thread::sleep_for(milliseconds(10));  // pacing between samples, not a wait
      }
    });
  };

  // 1. The resolver never answers: the reload fails at lb's deadline, and
  //    /healthz answers throughout.
  std::atomic<bool> stop{false};
  Samples during;
  size_t from = lb.line_count();
  REQUIRE(lb.signal(SIGHUP));
  std::thread sampler = sample_healthz(stop, during);
  // A second SIGHUP while the first waits runs once the first has ended; by
  // then the server answers (the first lookup's query was already dropped).
  CHECK(wait_until([&] { return dns.queries() >= 1; }, in(seconds(10))));
  REQUIRE(lb.signal(SIGHUP));
  CHECK(lb.wait_for_line(std::regex("^info reload already in progress"), in(seconds(5)), from));
  dns.answer();
  auto failed = lb.wait_for_line(
      std::regex(R"(^error reload failed: .*cannot resolve host "backend\.lb-reload-test\.example".*)"),
      in(seconds(30)), from);
  stop.store(true);
  sampler.join();
  INFO(lb.output());
  CHECK(failed);
  CHECK(dns.queries() >= 1);  // lb really asked the silent server
  CHECK(during.failed == 0);
  INFO(during.first_failure);
  CHECK(during.ms.size() >= 50);
  const double worst = during.ms.empty() ? 0 : *std::max_element(during.ms.begin(), during.ms.end());
  WARN("/healthz during a hung lookup: " << during.ms.size() << " answers, worst " << worst << " ms");
  CHECK(worst < kHealthzBoundMs);
  CHECK(lb.wait_for_line(std::regex(R"(^error reload failed, keeping the running configuration\b)"),
                         in(seconds(5)), from));

  // 2. The queued reload: the resolver answers, the same file loads, and the
  //    name's address serves.
  REQUIRE(lb.wait_for_line(std::regex(R"(^info reloaded generation=2\b)"), in(seconds(20)), from));
  CHECK(metric_in(ns, admin, "lb_config_reloads_total", {{"result", "error"}}) == 1);
  std::string greeting;
  REQUIRE(ns.run_in([&] { greeting = served_by(port, in(seconds(5))); }));
  CHECK(greeting == "resolved");
  CHECK(metric_in(ns, admin, "lb_config_reloads_total", {{"result", "ok"}}) == 1);
  CHECK(lb.terminate() == 0);
}

}  // namespace
}  // namespace lb::test
