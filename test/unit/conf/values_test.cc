// The value syntaxes: durations, endpoints, CIDRs, enum names, diagnostics.

#include <arpa/inet.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "conf/internal.h"
#include "conf/load.h"

using namespace lb::conf;
using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

TEST_CASE("parse_duration accepts a number with a unit", "[conf][duration]") {
  CHECK(parse_duration("250ms") == milliseconds(250));
  CHECK(parse_duration("2s") == seconds(2));
  CHECK(parse_duration("5m") == minutes(5));
  CHECK(parse_duration("1h") == hours(1));
  CHECK(parse_duration("0s") == milliseconds(0));
  CHECK(parse_duration("0ms") == milliseconds(0));
  CHECK(parse_duration("1500ms") == milliseconds(1500));
  CHECK(parse_duration("007s") == seconds(7));
  // Compound, largest unit first, as Go and Envoy operators write them.
  CHECK(parse_duration("1m30s") == seconds(90));
  CHECK(parse_duration("1h2m3s4ms") == milliseconds(3723004));
}

TEST_CASE("parse_size: a number with a binary unit", "[conf][size]") {
  CHECK(parse_size("0B") == 0u);
  CHECK(parse_size("4096B") == 4096u);
  CHECK(parse_size("64KiB") == 64u * 1024);
  CHECK(parse_size("16MiB") == 16u << 20);
  CHECK(parse_size("1GiB") == uint64_t{1} << 30);
  CHECK(parse_size("2TiB") == uint64_t{2} << 40);
  CHECK(parse_size("16777215TiB") == uint64_t{16777215} << 40);
  for (const char* bad : {"", "1", "GiB", "1.5GiB", "-1MiB", "1 MiB", "1MB", "1gib", "1k", "16777216TiB"}) {
    INFO(bad);
    CHECK_FALSE(parse_size(bad).has_value());
  }
  CHECK(parse_size_detailed("1.5GiB").error.find("fractions") != std::string::npos);
  CHECK(parse_size_detailed("1MB").error == R"(unknown unit "MB" (expected B, KiB, MiB, GiB or TiB))");
  CHECK(parse_size_detailed("512").error == "missing unit (B, KiB, MiB, GiB or TiB)");
}

TEST_CASE("parse_duration refuses anything else", "[conf][duration]") {
  for (const char* bad : {"",
                          "2",
                          "s",
                          "ms",
                          "-1s",
                          "+1s",
                          "1.5s",
                          "1,5s",
                          " 2s",
                          "2s ",
                          "2 s",
                          "2S",
                          "2sec",
                          "2d",
                          "2us",
                          "1s1m",
                          "2s2s",
                          "1m1h",
                          "s2",
                          "99999999999999999999ms",
                          "9223372036854775807h",
                          "2562047788015216h"}) {
    INFO("input: \"" << bad << "\"");
    CHECK_FALSE(parse_duration(bad).has_value());
  }
  // The largest value that fits in milliseconds still parses.
  CHECK(parse_duration("9223372036854775807ms") == milliseconds(INT64_MAX));
}

TEST_CASE("parse_duration_detailed says why", "[conf][duration]") {
  CHECK(parse_duration_detailed("2").error == "missing unit (ms, s, m or h)");
  CHECK(parse_duration_detailed("2d").error == R"(unknown unit "d" (expected ms, s, m or h))");
  CHECK(parse_duration_detailed("-2s").error == "must not be negative");
  CHECK(parse_duration_detailed("1.5s").error ==
        R"(fractions are not supported; use a smaller unit, e.g. "1500ms" for 1.5s)");
  CHECK(parse_duration_detailed("x").error == R"(expected a duration such as "250ms", "2s", "5m" or "1h")");
  CHECK(parse_duration_detailed("2562047788015216h").error == "too large");
  CHECK(parse_duration_detailed("2s").error.empty());
}

TEST_CASE("parse_ip_endpoint reads IPv4 endpoints", "[conf][endpoint]") {
  auto ep = parse_ip_endpoint("10.0.0.11:8080");
  REQUIRE(ep);
  CHECK(ep->text == "10.0.0.11:8080");
  CHECK(ep->addr.ss_family == AF_INET);
  CHECK(ep->addr_len == sizeof(sockaddr_in));
  CHECK_FALSE(ep->is_v6());
  CHECK(ep->port() == 8080);
  const auto& sin = reinterpret_cast<const sockaddr_in&>(ep->addr);
  CHECK(sin.sin_port == htons(8080));
  CHECK(sin.sin_addr.s_addr == htonl(0x0a00000b));
  CHECK(ep->to_string() == "10.0.0.11:8080");

  auto any = parse_ip_endpoint("0.0.0.0:0");
  REQUIRE(any);
  CHECK(any->port() == 0);
  CHECK(any->to_string() == "0.0.0.0:0");
  CHECK(parse_ip_endpoint("255.255.255.255:65535")->port() == 65535);
}

TEST_CASE("parse_ip_endpoint reads bracketed IPv6 endpoints", "[conf][endpoint]") {
  auto ep = parse_ip_endpoint("[2001:DB8:0::1]:443");
  REQUIRE(ep);
  CHECK(ep->is_v6());
  CHECK(ep->addr_len == sizeof(sockaddr_in6));
  CHECK(ep->port() == 443);
  CHECK(ep->text == "[2001:DB8:0::1]:443");
  CHECK(ep->to_string() == "[2001:db8::1]:443");  // normalised from the address

  auto any = parse_ip_endpoint("[::]:8080");
  REQUIRE(any);
  CHECK(any->to_string() == "[::]:8080");

  auto mapped = parse_ip_endpoint("[::ffff:1.2.3.4]:80");
  REQUIRE(mapped);
  CHECK(mapped->is_v6());

  // A zone names the interface of a link-local address; "lo" always exists.
  auto zoned = parse_ip_endpoint("[fe80::1%lo]:80");
  REQUIRE(zoned);
  const auto& sin6 = reinterpret_cast<const sockaddr_in6&>(zoned->addr);
  CHECK(sin6.sin6_scope_id != 0);
  CHECK(zoned->to_string() == "[fe80::1%lo]:80");
}

TEST_CASE("parse_ip_endpoint refuses malformed endpoints", "[conf][endpoint]") {
  for (const char* bad : {"",
                          ":",
                          "1.2.3.4",
                          "1.2.3.4:",
                          ":80",
                          "1.2.3.4:65536",
                          "1.2.3.4:99999999999999999999",
                          "1.2.3.4:-1",
                          "1.2.3.4:+1",
                          "1.2.3.4:8o",
                          "1.2.3.4:80 ",
                          " 1.2.3.4:80",
                          "1.2.3:80",
                          "1.2.3.4.5:80",
                          "256.0.0.1:80",
                          "01.2.3.4:80",
                          "0x7f.0.0.1:80",
                          "::1:80",
                          "::1",
                          "[::1]",
                          "[::1]:",
                          "[::1]80",
                          "[::1:80",
                          "::1]:80",
                          "[1.2.3.4]:80",
                          "[]:80",
                          "[fe80::1%]:80",
                          "[fe80::1%no-such-interface]:80",
                          "localhost:80",
                          "example.com:443"}) {
    INFO("input: \"" << bad << "\"");
    CHECK_FALSE(parse_ip_endpoint(bad).has_value());
  }
}

TEST_CASE("parse_endpoint_detailed: port rules and reasons", "[conf][endpoint]") {
  auto zero_ok = parse_endpoint_detailed("127.0.0.1:0", PortRule::AllowZero, HostRule::IpOnly);
  CHECK(zero_ok.value.has_value());
  auto zero_bad = parse_endpoint_detailed("127.0.0.1:0", PortRule::NonZero, HostRule::IpOnly);
  CHECK_FALSE(zero_bad.value.has_value());
  CHECK(zero_bad.error == "port out of range 1-65535");
  CHECK(parse_endpoint_detailed("1.2.3.4:99999", PortRule::AllowZero, HostRule::IpOnly).error ==
        "port out of range 1-65535");
  CHECK(parse_endpoint_detailed("::1:80", PortRule::AllowZero, HostRule::IpOnly).error ==
        R"(an IPv6 address must be in brackets, as in "[::1]:80")");
  CHECK(parse_endpoint_detailed("db", PortRule::NonZero, HostRule::AllowHostname).error ==
        "missing port (expected HOST:PORT)");
}

namespace {

// Stand-ins for getaddrinfo(): tests never depend on DNS.
std::string resolve_to_test_net(const std::string& host, sockaddr_storage& addr, socklen_t& len) {
  if (host != "db.internal") return "Name or service not known";
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  inet_pton(AF_INET, "192.0.2.7", &sin.sin_addr);
  std::memcpy(&addr, &sin, sizeof sin);
  len = sizeof sin;
  return {};
}

struct ResolverGuard {
  explicit ResolverGuard(ResolveFn fn) { set_resolver_for_testing(fn); }
  ~ResolverGuard() { set_resolver_for_testing(nullptr); }
};

}  // namespace

TEST_CASE("host names resolve for backends only", "[conf][endpoint]") {
  ResolverGuard guard(resolve_to_test_net);
  auto ok = parse_endpoint_detailed("db.internal:5432", PortRule::NonZero, HostRule::AllowHostname);
  REQUIRE(ok.value);
  CHECK(ok.value->text == "db.internal:5432");
  CHECK(ok.value->to_string() == "192.0.2.7:5432");
  CHECK(ok.value->port() == 5432);

  auto missing = parse_endpoint_detailed("nosuch.internal:5432", PortRule::NonZero, HostRule::AllowHostname);
  CHECK_FALSE(missing.value);
  CHECK(missing.error == R"(cannot resolve host "nosuch.internal": Name or service not known)");

  auto ip_only = parse_endpoint_detailed("db.internal:5432", PortRule::NonZero, HostRule::IpOnly);
  CHECK_FALSE(ip_only.value);
  CHECK(ip_only.error == R"(invalid IP address "db.internal" (host names are accepted only for backends))");

  // Digits and dots are a mistyped IPv4 address, never looked up.
  CHECK(parse_endpoint_detailed("10.0.0.256:80", PortRule::NonZero, HostRule::AllowHostname).error ==
        R"(invalid IP address "10.0.0.256")");
  CHECK(parse_endpoint_detailed("-db:80", PortRule::NonZero, HostRule::AllowHostname).error ==
        R"(invalid host name "-db")");
  CHECK(parse_endpoint_detailed("db..internal:80", PortRule::NonZero, HostRule::AllowHostname).error ==
        R"(invalid host name "db..internal")");
}

TEST_CASE("localhost resolves through the real resolver", "[conf][endpoint]") {
  // /etc/hosts answers for localhost; no DNS traffic.
  auto ep = parse_endpoint_detailed("localhost:9001", PortRule::NonZero, HostRule::AllowHostname);
  REQUIRE(ep.value);
  CHECK(ep.value->port() == 9001);
  const std::string s = ep.value->to_string();
  CHECK((s == "127.0.0.1:9001" || s == "[::1]:9001"));
}

TEST_CASE("parse_cidr reads prefixes", "[conf][cidr]") {
  auto v4 = parse_cidr("10.0.0.0/8");
  REQUIRE(v4);
  CHECK(v4->text == "10.0.0.0/8");
  CHECK(v4->family == AF_INET);
  CHECK(v4->prefix_len == 8);
  CHECK(v4->bytes[0] == 10);
  CHECK(v4->bytes[1] == 0);

  auto host = parse_cidr("192.168.1.7");
  REQUIRE(host);
  CHECK(host->prefix_len == 32);
  CHECK(host->bytes[3] == 7);

  auto all = parse_cidr("0.0.0.0/0");
  REQUIRE(all);
  CHECK(all->prefix_len == 0);

  auto v6 = parse_cidr("2001:db8::/32");
  REQUIRE(v6);
  CHECK(v6->family == AF_INET6);
  CHECK(v6->prefix_len == 32);
  CHECK(v6->bytes[0] == 0x20);
  CHECK(v6->bytes[1] == 0x01);
  CHECK(v6->bytes[2] == 0x0d);
  CHECK(v6->bytes[3] == 0xb8);

  auto v6host = parse_cidr("::1");
  REQUIRE(v6host);
  CHECK(v6host->prefix_len == 128);
  CHECK(v6host->bytes[15] == 1);
}

TEST_CASE("parse_cidr zeroes host bits; the file refuses them", "[conf][cidr]") {
  auto c = parse_cidr("10.1.2.3/12");
  REQUIRE(c);
  CHECK(c->bytes[0] == 10);
  CHECK(c->bytes[1] == 0);  // 0x01 & 0xf0
  CHECK(c->bytes[2] == 0);
  CHECK(c->bytes[3] == 0);

  auto c2 = parse_cidr("10.31.0.0/12");
  REQUIRE(c2);
  CHECK(c2->bytes[1] == 0x10);

  auto v6 = parse_cidr("2001:db8:ffff::1/36");
  REQUIRE(v6);
  CHECK(v6->bytes[4] == 0xf0);
  CHECK(v6->bytes[5] == 0);
  CHECK(v6->bytes[15] == 0);

  CHECK(parse_cidr_detailed("10.1.2.3/12").value->host_bits_set);
  CHECK_FALSE(parse_cidr_detailed("10.16.0.0/12").value->host_bits_set);
  CHECK_FALSE(parse_cidr_detailed("10.1.2.3").value->host_bits_set);
}

TEST_CASE("parse_cidr refuses malformed prefixes", "[conf][cidr]") {
  for (const char* bad :
       {"", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/8/8", "10.0.0.0/x", "10.0.0/8",
        "::/129", "[::1]/128", "example.com/32", "10.0.0.0 /8", "10.0.0.0/ 8"}) {
    INFO("input: \"" << bad << "\"");
    CHECK_FALSE(parse_cidr(bad).has_value());
  }
}

TEST_CASE("enum names round-trip through to_string", "[conf][enum]") {
  for (const auto& e : kProtocolNames) CHECK(std::string(to_string(e.value)) == e.name);
  for (const auto& e : kProxyProtocolNames) CHECK(std::string(to_string(e.value)) == e.name);
  for (const auto& e : kSelectorNames) CHECK(std::string(to_string(e.value)) == e.name);
  for (const auto& e : kHashKeyNames) CHECK(std::string(to_string(e.value)) == e.name);
  for (const auto& e : kHealthTypeNames) CHECK(std::string(to_string(e.value)) == e.name);
  for (const auto& e : kLogLevelNames) CHECK(std::string(to_string(e.value)) == e.name);
  // The spellings of the spec.
  CHECK(std::string(to_string(Protocol::Udp)) == "udp");
  CHECK(std::string(to_string(ProxyProtocol::V2)) == "v2");
  CHECK(std::string(to_string(SelectorKind::LeastConnections)) == "least_connections");
  CHECK(std::string(to_string(SelectorKind::RandomTwo)) == "random_two");
  CHECK(std::string(to_string(HashKey::SourceIpPort)) == "source_ip_port");
  CHECK(std::string(to_string(HealthType::None)) == "none");
  CHECK(std::string(to_string(LogLevel::Warn)) == "warn");
}

TEST_CASE("Diagnostic::str is compiler style", "[conf][diagnostic]") {
  CHECK(Diagnostic{"lb.toml", 3, 8, "boom"}.str() == "lb.toml:3:8: error: boom");
  CHECK(Diagnostic{"lb.toml", 3, 0, "boom"}.str() == "lb.toml:3: error: boom");
  CHECK(Diagnostic{"lb.toml", 0, 0, "boom"}.str() == "lb.toml: error: boom");
}

TEST_CASE("quote escapes what would break a message line", "[conf][diagnostic]") {
  CHECK(quote("web") == "\"web\"");
  CHECK(quote("a\"b\\c") == R"("a\"b\\c")");
  CHECK(quote("a\r\nb") == R"("a\x0d\x0ab")");
}

TEST_CASE("suggestion finds near misses only", "[conf][diagnostic]") {
  const std::vector<std::string> keys = {"idle_timeout", "connect_timeout", "name", "pool", "weight"};
  CHECK(suggestion("idle_timout", keys) == "idle_timeout");
  CHECK(suggestion("wieght", keys) == "weight");  // a swap counts as one edit
  CHECK(suggestion("Name", keys) == "name");
  CHECK(suggestion("poool", keys) == "pool");
  CHECK(suggestion("backend", keys).empty());
  CHECK(suggestion("x", keys).empty());
}

TEST_CASE("Config::find_pool", "[conf]") {
  Config cfg;
  cfg.pools.resize(2);
  cfg.pools[0].name = "web";
  cfg.pools[1].name = "api";
  REQUIRE(cfg.find_pool("api") != nullptr);
  CHECK(cfg.find_pool("api") == &cfg.pools[1]);
  CHECK(cfg.find_pool("web") == &cfg.pools[0]);
  CHECK(cfg.find_pool("db") == nullptr);
}
