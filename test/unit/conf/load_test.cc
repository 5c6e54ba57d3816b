// Loading whole files: the example configurations, defaults, derived values,
// several errors at once, files that cannot be read.

#include "conf/load.h"

#include <arpa/inet.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <sstream>

#include "conf/internal.h"

using namespace lb::conf;
using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

namespace {

std::string data_path(const std::string& name) { return std::string(LB_TEST_DATA_DIR) + "/conf/" + name; }

std::string errors_text(const LoadResult& r) {
  std::string out;
  for (const auto& d : r.errors) out += d.str() + "\n";
  return out;
}

Config load_ok(const std::string& name) {
  LoadResult r = load_file(data_path(name));
  INFO(errors_text(r));
  REQUIRE(r.ok());
  return *r.config;
}

}  // namespace

TEST_CASE("minimal.toml: every omitted key takes the spec's default", "[conf][load]") {
  const Config cfg = load_ok("minimal.toml");
  CHECK(cfg.path == data_path("minimal.toml"));

  CHECK(cfg.global.workers == 0);
  CHECK(cfg.global.max_connections == 100000);
  CHECK(cfg.global.max_buffer_memory == uint64_t{1} << 30);
  CHECK(cfg.global.shutdown_timeout == seconds(30));
  CHECK(cfg.global.drain_delay == milliseconds(0));
  CHECK(cfg.global.user.empty());
  CHECK(cfg.global.log_level == LogLevel::Info);
  CHECK(cfg.global.access_log == "stderr");
  CHECK_FALSE(cfg.admin.listen.has_value());

  REQUIRE(cfg.listeners.size() == 1);
  const Listener& l = cfg.listeners[0];
  CHECK(l.name == "web");
  CHECK(l.pos.line == 2);
  CHECK(l.pos.col == 1);
  CHECK(l.protocol == Protocol::Tcp);
  REQUIRE(l.bind.size() == 1);
  CHECK(l.bind[0].text == "127.0.0.1:8080");
  CHECK(l.bind[0].port() == 8080);
  CHECK(l.pool == "web");
  CHECK(l.connect_timeout == seconds(5));
  CHECK(l.idle_timeout == minutes(10));
  CHECK(l.retries == 2);
  CHECK(l.proxy_protocol == ProxyProtocol::Off);
  CHECK_FALSE(l.accept_proxy_protocol);
  CHECK(l.session_timeout == seconds(30));
  CHECK(l.udp_responses == 0);
  CHECK(l.max_connections == 0);
  CHECK(l.max_connections_per_source == 0);
  CHECK(l.allow.empty());
  CHECK(l.deny.empty());

  REQUIRE(cfg.pools.size() == 1);
  const Pool& p = cfg.pools[0];
  CHECK(p.name == "web");
  CHECK(p.pos.line == 7);
  CHECK(p.selector == SelectorKind::RoundRobin);
  CHECK(p.hash_key == HashKey::SourceIp);
  CHECK(p.hash_balance_factor == 0);
  CHECK(p.slow_start == milliseconds(0));
  const HealthCheck& h = p.health_check;
  CHECK(h.type == HealthType::Tcp);  // a tcp listener uses the pool
  CHECK_FALSE(h.type_explicit);
  CHECK(h.interval == seconds(2));
  CHECK(h.timeout == seconds(1));
  CHECK(h.rise == 2);
  CHECK(h.fall == 3);
  CHECK(h.port == 0);
  CHECK(h.http_path == "/");
  CHECK(h.http_host.empty());
  CHECK(h.expect_status.code == 200);
  CHECK(h.expect_status.class_digit == 0);
  CHECK(h.tls_sni.empty());
  CHECK(h.dns_query == ".");
  CHECK(h.udp_send.empty());
  CHECK(h.udp_expect.empty());
  CHECK(p.outlier.consecutive_failures == 0);
  CHECK(p.outlier.ejection_time == seconds(30));
  REQUIRE(p.backends.size() == 1);
  const Backend& b = p.backends[0];
  CHECK(b.address.text == "127.0.0.1:9001");
  CHECK(b.address.to_string() == "127.0.0.1:9001");
  CHECK(b.id == "127.0.0.1:9001");  // defaults to the address as written
  CHECK(b.weight == 1);
  CHECK_FALSE(b.backup);
  CHECK(b.max_connections == 0);
}

TEST_CASE("full.toml: every key of the schema is read", "[conf][load]") {
  const Config cfg = load_ok("full.toml");

  CHECK(cfg.global.workers == 4);
  CHECK(cfg.global.max_connections == 50000);
  CHECK(cfg.global.max_buffer_memory == uint64_t{512} << 20);
  CHECK(cfg.global.shutdown_timeout == seconds(45));
  CHECK(cfg.global.drain_delay == seconds(5));
  CHECK(cfg.global.user.empty());
  CHECK(cfg.global.log_level == LogLevel::Debug);
  CHECK(cfg.global.access_log == "off");
  REQUIRE(cfg.admin.listen.has_value());
  CHECK(cfg.admin.listen->to_string() == "127.0.0.1:9900");

  REQUIRE(cfg.listeners.size() == 2);
  const Listener& web = cfg.listeners[0];
  CHECK(web.name == "web");
  CHECK(web.protocol == Protocol::Tcp);
  REQUIRE(web.bind.size() == 2);
  CHECK(web.bind[0].to_string() == "0.0.0.0:8080");
  CHECK_FALSE(web.bind[0].is_v6());
  CHECK(web.bind[1].to_string() == "[::]:8080");
  CHECK(web.bind[1].is_v6());
  CHECK(web.pool == "web");
  CHECK(web.connect_timeout == seconds(3));
  CHECK(web.idle_timeout == hours(1));
  CHECK(web.retries == 3);
  CHECK(web.proxy_protocol == ProxyProtocol::Off);
  CHECK_FALSE(web.accept_proxy_protocol);
  CHECK(web.session_timeout == seconds(90));
  CHECK(web.udp_responses == 0);
  CHECK(web.max_connections == 0);
  CHECK(web.max_connections_per_source == 0);
  CHECK(web.allow.empty());
  CHECK(web.deny.empty());

  const Listener& api = cfg.listeners[1];
  CHECK(api.name == "api");
  REQUIRE(api.bind.size() == 1);
  CHECK(api.bind[0].port() == 0);
  CHECK(api.pool == "api");

  REQUIRE(cfg.pools.size() == 2);
  const Pool* p = cfg.find_pool("web");
  REQUIRE(p == &cfg.pools[0]);
  CHECK(p->selector == SelectorKind::Maglev);
  CHECK(is_hash_selector(p->selector));
  CHECK(p->hash_key == HashKey::SourceIpPort);
  CHECK(p->hash_balance_factor == 125);
  CHECK(p->slow_start == milliseconds(0));
  const HealthCheck& h = p->health_check;
  CHECK(h.type == HealthType::Tcp);
  CHECK(h.type_explicit);
  CHECK(h.interval == milliseconds(500));
  CHECK(h.timeout == milliseconds(250));
  CHECK(h.rise == 1);
  CHECK(h.fall == 5);
  CHECK(h.port == 8081);
  CHECK(h.http_path == "/healthz");
  CHECK(h.http_host == "web.example");
  CHECK(h.expect_status.class_digit == 2);
  CHECK(h.expect_status.matches(204));
  CHECK_FALSE(h.expect_status.matches(301));
  CHECK(h.tls_sni == "web.example");
  CHECK(h.dns_query == "example.com.");
  CHECK(h.udp_send == "ping");
  CHECK(h.udp_expect == "pong");
  CHECK(p->outlier.consecutive_failures == 0);
  CHECK(p->outlier.ejection_time == minutes(1));

  REQUIRE(p->backends.size() == 3);
  CHECK(p->backends[0].address.to_string() == "10.0.0.11:8080");
  CHECK(p->backends[0].id == "web-1");
  CHECK(p->backends[0].weight == 10);
  CHECK_FALSE(p->backends[0].backup);
  CHECK(p->backends[0].max_connections == 0);
  CHECK(p->backends[1].address.to_string() == "[2001:db8::12]:8080");
  CHECK(p->backends[1].id == "[2001:db8::12]:8080");
  CHECK(p->backends[1].weight == 0);
  // A host name is resolved at load; the id keeps the name as written.
  CHECK(p->backends[2].address.text == "localhost:8080");
  CHECK(p->backends[2].id == "localhost:8080");
  CHECK(p->backends[2].address.port() == 8080);
  CHECK((p->backends[2].address.to_string() == "127.0.0.1:8080" ||
         p->backends[2].address.to_string() == "[::1]:8080"));

  const Pool* a = cfg.find_pool("api");
  REQUIRE(a == &cfg.pools[1]);
  CHECK(a->selector == SelectorKind::LeastConnections);
  CHECK(a->health_check.type == HealthType::None);
  CHECK(a->health_check.type_explicit);
  CHECK(a->health_check.expect_status.class_digit == 0);
  CHECK(a->health_check.expect_status.code == 204);
  CHECK(a->health_check.expect_status.matches(204));
  CHECK_FALSE(a->health_check.expect_status.matches(200));
  REQUIRE(a->backends.size() == 1);
  CHECK(a->backends[0].address.to_string() == "10.0.1.1:443");
}

TEST_CASE("everything.toml: every key of the spec is read", "[conf][load]") {
  std::ifstream in(data_path("everything.toml"));
  std::stringstream text;
  text << in.rdbuf();
  LoadResult r = load_string(text.str(), "everything.toml");
  INFO(errors_text(r));
  REQUIRE(r.ok());
  const Config& cfg = *r.config;

  CHECK(cfg.global.workers == 8);
  CHECK(cfg.global.max_connections == 1000);
  CHECK(cfg.global.shutdown_timeout == milliseconds(0));
  CHECK(cfg.global.drain_delay == minutes(2));
  CHECK(cfg.global.user == "lb");
  CHECK(cfg.global.log_level == LogLevel::Warn);
  CHECK(cfg.global.access_log == "/var/log/lb/access.log");
  REQUIRE(cfg.admin.listen);
  CHECK(cfg.admin.listen->to_string() == "[::1]:0");

  REQUIRE(cfg.listeners.size() == 2);
  const Listener& dns = cfg.listeners[0];
  CHECK(dns.protocol == Protocol::Udp);
  REQUIRE(dns.bind.size() == 2);
  CHECK(dns.bind[1].to_string() == "[::1]:5353");
  CHECK(dns.connect_timeout == milliseconds(750));
  CHECK(dns.idle_timeout == hours(2));
  CHECK(dns.retries == 0);
  CHECK(dns.proxy_protocol == ProxyProtocol::V2);
  CHECK(dns.session_timeout == seconds(5));
  CHECK(dns.udp_responses == 1);
  CHECK(dns.max_connections == 500);
  CHECK(dns.max_connections_per_source == 20);
  REQUIRE(dns.allow.size() == 3);
  CHECK(dns.allow[0].text == "10.0.0.0/8");
  CHECK(dns.allow[0].family == AF_INET);
  CHECK(dns.allow[0].prefix_len == 8);
  CHECK(dns.allow[1].family == AF_INET6);
  CHECK(dns.allow[1].prefix_len == 32);
  CHECK(dns.allow[2].prefix_len == 32);
  CHECK(dns.allow[2].bytes[3] == 1);
  REQUIRE(dns.deny.size() == 1);
  CHECK(dns.deny[0].bytes[1] == 66);
  CHECK(dns.deny[0].prefix_len == 16);

  const Listener& edge = cfg.listeners[1];
  CHECK(edge.proxy_protocol == ProxyProtocol::V1);
  CHECK(edge.accept_proxy_protocol);
  CHECK(edge.retries == 10);

  const Pool* dp = cfg.find_pool("dns");
  REQUIRE(dp);
  CHECK(dp->selector == SelectorKind::RandomTwo);
  CHECK(dp->health_check.type == HealthType::Dns);
  CHECK(dp->health_check.dns_query == "health.example.");
  REQUIRE(dp->backends.size() == 1);
  CHECK(dp->backends[0].backup);
  CHECK(dp->backends[0].max_connections == 7);

  const Pool* wp = cfg.find_pool("web");
  REQUIRE(wp);
  CHECK(wp->selector == SelectorKind::RingHash);
  CHECK(wp->hash_key == HashKey::SourceIp);
  CHECK(wp->slow_start == seconds(30));
  const HealthCheck& h = wp->health_check;
  CHECK(h.type == HealthType::Http);
  CHECK(h.interval == seconds(10));
  CHECK(h.timeout == seconds(3));
  CHECK(h.rise == 3);
  CHECK(h.fall == 2);
  CHECK(h.port == 8443);
  CHECK(h.http_path == "/status?full=1");
  CHECK(h.http_host == "web.internal");
  CHECK(h.expect_status.code == 204);
  CHECK(h.tls_sni == "web.internal");
  CHECK(h.udp_send == std::string("\0ping", 5));  // binary payloads survive
  CHECK(h.udp_expect == "pong");
  CHECK(wp->outlier.consecutive_failures == 5);
  CHECK(wp->outlier.ejection_time == seconds(10));
  REQUIRE(wp->backends.size() == 2);
  CHECK(wp->backends[0].id == "w1");
  CHECK(wp->backends[0].weight == 1000);
  CHECK(wp->backends[1].id == "w2");
  CHECK(wp->backends[1].address.is_v6());
}

TEST_CASE("health_check type defaults by the protocol of the pool's listeners", "[conf][load]") {
  const char* text = R"(
[[listener]]
name = "dns"
protocol = "udp"
bind = "127.0.0.1:53"
pool = "udp-only"

[[listener]]
name = "mixed-udp"
protocol = "udp"
bind = "127.0.0.1:54"
pool = "mixed"

[[listener]]
name = "mixed-tcp"
bind = "127.0.0.1:54"
pool = "mixed"

[[pool]]
name = "udp-only"
[[pool.backend]]
address = "127.0.0.1:5301"

[[pool]]
name = "mixed"
[[pool.backend]]
address = "127.0.0.1:5302"

[[pool]]
name = "unused"
[[pool.backend]]
address = "127.0.0.1:5303"

[[pool]]
name = "explicit"
health_check = { type = "none" }
[[pool.backend]]
address = "127.0.0.1:5304"
)";
  LoadResult r = load_string(text, "t.toml");
  INFO(errors_text(r));
  REQUIRE(r.ok());
  const Config& cfg = *r.config;
  CHECK(cfg.find_pool("udp-only")->health_check.type == HealthType::None);
  CHECK(cfg.find_pool("mixed")->health_check.type == HealthType::Tcp);
  CHECK(cfg.find_pool("unused")->health_check.type == HealthType::None);
  CHECK_FALSE(cfg.find_pool("unused")->health_check.type_explicit);
  CHECK(cfg.find_pool("explicit")->health_check.type == HealthType::None);
  CHECK(cfg.find_pool("explicit")->health_check.type_explicit);
}

TEST_CASE("errors of every pass are reported together, in file order", "[conf][load]") {
  // One unknown key and one bad value (first pass) and an unknown pool
  // (second pass).
  const char* text = R"([[listener]]
name = "web"
bind = "127.0.0.1:8080"
pool = "nope"
max_connections = 10
idle_timout = "10s"

[[pool]]
name = "web"
selector = "fastest"

[[pool.backend]]
address = "127.0.0.1:9001"
)";
  LoadResult r = load_string(text, "lb.toml");
  CHECK_FALSE(r.ok());
  CHECK_FALSE(r.config.has_value());
  std::vector<std::string> got;
  for (const auto& d : r.errors) got.push_back(d.str());
  CHECK(
      got ==
      std::vector<std::string>{
          R"(lb.toml:4:8: error: listener "web": pool "nope": no such pool)",
          R"(lb.toml:6:1: error: listener "web": unknown key "idle_timout" (did you mean "idle_timeout"?))",
          R"(lb.toml:10:12: error: pool "web": selector "fastest": expected one of round_robin, least_connections, random_two, ring_hash, maglev)",
      });
}

TEST_CASE("load_string and load_file agree", "[conf][load]") {
  std::ifstream in(data_path("full.toml"));
  std::stringstream text;
  text << in.rdbuf();
  LoadResult r = load_string(text.str(), "somewhere.toml");
  REQUIRE(r.ok());
  CHECK(r.config->path == "somewhere.toml");
  CHECK(r.config->listeners.size() == 2);
}

TEST_CASE("a syntax error is one diagnostic at toml++'s position", "[conf][load]") {
  LoadResult r = load_string("[[listener]]\nname = 'web\n", "x.toml");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].line == 2);
  CHECK(r.errors[0].col > 0);
  CHECK(r.errors[0].str().rfind("x.toml:2:", 0) == 0);
  CHECK_FALSE(r.config.has_value());
}

TEST_CASE("an empty file has no listener", "[conf][load]") {
  LoadResult r = load_string("", "empty.toml");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].str() == "empty.toml: error: no listener configured");
}

TEST_CASE("files that cannot be read", "[conf][load]") {
  const std::string missing = data_path("no-such-file.toml");
  LoadResult r = load_file(missing);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].str() == missing + ": error: cannot read file: No such file or directory");
  CHECK_FALSE(r.config.has_value());

  const std::string dir = std::string(LB_TEST_DATA_DIR) + "/conf";
  LoadResult d = load_file(dir);
  REQUIRE(d.errors.size() == 1);
  CHECK(d.errors[0].str() == dir + ": error: cannot read file: Is a directory");
}

namespace {

std::string resolve_nothing(const std::string&, sockaddr_storage&, socklen_t&) {
  return "Name or service not known";
}

std::string resolve_to_test_net(const std::string&, sockaddr_storage& addr, socklen_t& len) {
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "2001:db8::5", &sin6.sin6_addr);
  std::memcpy(&addr, &sin6, sizeof sin6);
  len = sizeof sin6;
  return {};
}

struct ResolverGuard {
  explicit ResolverGuard(ResolveFn fn) { set_resolver_for_testing(fn); }
  ~ResolverGuard() { set_resolver_for_testing(nullptr); }
};

const char* kHostBackend = R"([[listener]]
name = "web"
bind = "127.0.0.1:8080"
pool = "web"

[[pool]]
name = "web"

[[pool.backend]]
address = "db.internal:5432"
)";

}  // namespace

TEST_CASE("backend host names: Resolve::Later leaves them to the caller", "[conf][load]") {
  ResolverGuard guard(resolve_nothing);  // would fail the load if it were called
  LoadResult r = load_string(kHostBackend, "lb.toml", Resolve::Later);
  REQUIRE(r.ok());
  Config cfg = *r.config;
  REQUIRE(cfg.unresolved.size() == 1);
  CHECK(cfg.unresolved[0].host == "db.internal");
  CHECK(cfg.pools[0].backends[0].address.addr_len == 0);

  SECTION("an answer fills the address in") {
    HostAnswer a;
    CHECK(resolve_to_test_net("db.internal", a.addr, a.len).empty());
    CHECK(apply_host_answers(cfg, {{"db.internal", a}}).empty());
    CHECK(cfg.unresolved.empty());
    CHECK(cfg.pools[0].backends[0].address.to_string() == "[2001:db8::5]:5432");
  }
  SECTION("a failed lookup is the error a Resolve::Now load reports") {
    HostAnswer a;
    a.error = "no answer within 5000ms";
    auto errors = apply_host_answers(cfg, {{"db.internal", a}});
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].str() ==
          R"(lb.toml:10:11: error: pool "web" backend "db.internal:5432": address "db.internal:5432": )"
          R"(cannot resolve host "db.internal": no answer within 5000ms)");
  }
}

TEST_CASE("backend host names: resolved at load, failure names the host", "[conf][load]") {
  SECTION("failure") {
    ResolverGuard guard(resolve_nothing);
    LoadResult r = load_string(kHostBackend, "lb.toml");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].str() ==
          R"(lb.toml:10:11: error: pool "web" backend "db.internal:5432": address "db.internal:5432": )"
          R"(cannot resolve host "db.internal": Name or service not known)");
  }
  SECTION("success") {
    ResolverGuard guard(resolve_to_test_net);
    LoadResult r = load_string(kHostBackend, "lb.toml");
    INFO(errors_text(r));
    REQUIRE(r.ok());
    const Backend& b = r.config->pools[0].backends[0];
    CHECK(b.address.text == "db.internal:5432");
    CHECK(b.id == "db.internal:5432");
    CHECK(b.address.to_string() == "[2001:db8::5]:5432");
    CHECK(b.address.addr_len == sizeof(sockaddr_in6));
  }
}

TEST_CASE("a TOML syntax error is one line without control bytes, whatever the input", "[conf][load]") {
  // toml++ quotes the offending bytes; a newline or an escape byte there must
  // not split the error or reach the terminal (found by fuzz_conf).
  for (const char* text : {"o=t\n", "o=t\x1b\n", "o=t\x7f"}) {
    LoadResult r = load_string(text, "x.toml");
    REQUIRE(r.errors.size() == 1);
    const std::string line = r.errors[0].str();
    INFO(line);
    CHECK(line.rfind("x.toml:1:", 0) == 0);
    for (unsigned char c : line) CHECK((c >= 0x20 && c != 0x7f));
  }
}

TEST_CASE("proxy_protocol_trusted: CIDRs of the peers that may send a PROXY header", "[conf][load]") {
  const char* text = R"(
[[listener]]
name = "web"
bind = "127.0.0.1:80"
pool = "p"
accept_proxy_protocol = true
proxy_protocol_trusted = ["10.0.0.0/8", "2001:db8::/32"]

[[listener]]
name = "other"
bind = "127.0.0.1:81"
pool = "p"

[[pool]]
name = "p"
[[pool.backend]]
address = "127.0.0.1:5301"
)";
  LoadResult r = load_string(text, "t.toml");
  INFO(errors_text(r));
  REQUIRE(r.ok());
  const Listener& web = r.config->listeners[0];
  REQUIRE(web.proxy_protocol_trusted.size() == 2);
  CHECK(web.proxy_protocol_trusted[0].family == AF_INET);
  CHECK(web.proxy_protocol_trusted[0].prefix_len == 8);
  CHECK(web.proxy_protocol_trusted[1].family == AF_INET6);
  CHECK(r.config->listeners[1].proxy_protocol_trusted.empty());

  // Malformed entries and udp listeners are errors, like every other key.
  LoadResult bad = load_string(R"(
[[listener]]
name = "web"
bind = "127.0.0.1:80"
pool = "p"
accept_proxy_protocol = true
proxy_protocol_trusted = ["10.0.0.1/8", "nonsense"]

[[listener]]
name = "dns"
protocol = "udp"
bind = "127.0.0.1:53"
pool = "p"
proxy_protocol_trusted = ["10.0.0.0/8"]

[[pool]]
name = "p"
[[pool.backend]]
address = "127.0.0.1:5301"
)",
                               "t.toml");
  const std::string errors = errors_text(bad);
  INFO(errors);
  CHECK_FALSE(bad.ok());
  CHECK(errors.find("t.toml:7:27: error: listener \"web\": proxy_protocol_trusted") != std::string::npos);
  CHECK(errors.find("t.toml:7:41: error: listener \"web\": proxy_protocol_trusted") != std::string::npos);
  CHECK(errors.find("listener \"dns\": proxy_protocol_trusted: not available for udp listeners") !=
        std::string::npos);
}
