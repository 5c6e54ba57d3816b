// The admin API's request rules as pure functions: same_origin (POSTs from
// other origins are refused), bearer_matches (api_token_file) and
// admin_peer_allowed ([admin] allow).
#include <arpa/inet.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "conf/load.h"
#include "lb/admin_api.h"

using lb::app::admin_peer_allowed;
using lb::app::bearer_matches;
using lb::app::same_origin;

namespace {

sockaddr_storage addr(const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  if (std::strchr(ip, ':')) {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    REQUIRE(inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1);
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    REQUIRE(inet_pton(AF_INET, ip, &s4->sin_addr) == 1);
  }
  return ss;
}

}  // namespace

TEST_CASE("same_origin: the admin address as the client reached it, nothing else", "[admin][security]") {
  const auto local = addr("127.0.0.1", 9900);
  CHECK(same_origin("http://127.0.0.1:9900", local));
  CHECK(same_origin("HTTP://127.0.0.1:9900", local));
  CHECK(same_origin("http://localhost:9900", local));
  CHECK(same_origin("http://LocalHost:9900", local));

  CHECK_FALSE(same_origin("http://evil.example", local));
  CHECK_FALSE(same_origin("http://evil.example:9900", local));  // DNS rebinding keeps its name
  CHECK_FALSE(same_origin("http://127.0.0.1:9901", local));
  CHECK_FALSE(same_origin("http://127.0.0.1", local));  // port 80
  CHECK_FALSE(same_origin("https://127.0.0.1:9900", local));
  CHECK_FALSE(same_origin("http://127.0.0.2:9900", local));
  CHECK_FALSE(same_origin("null", local));
  CHECK_FALSE(same_origin("", local));
  CHECK_FALSE(same_origin("http://", local));
  CHECK_FALSE(same_origin("http://127.0.0.1:9900/path", local));
  CHECK_FALSE(same_origin("http://user@127.0.0.1:9900", local));
  CHECK_FALSE(same_origin("http://127.0.0.1:99000", local));
  CHECK_FALSE(same_origin("http://127.0.0.1:abc", local));

  // Not loopback: "localhost" is not this address.
  const auto lan = addr("10.1.2.3", 80);
  CHECK(same_origin("http://10.1.2.3", lan));
  CHECK(same_origin("http://10.1.2.3:80", lan));
  CHECK_FALSE(same_origin("http://localhost", lan));

  const auto v6 = addr("::1", 9900);
  CHECK(same_origin("http://[::1]:9900", v6));
  CHECK(same_origin("http://localhost:9900", v6));
  CHECK_FALSE(same_origin("http://[::2]:9900", v6));
  CHECK_FALSE(same_origin("http://[::1:9900", v6));

  // An IPv4 client of a [::] listener: the local address is v4-mapped.
  const auto mapped = addr("::ffff:192.0.2.7", 9900);
  CHECK(same_origin("http://192.0.2.7:9900", mapped));
}

TEST_CASE("bearer_matches: exactly the token, scheme case-insensitive", "[admin][security]") {
  const std::string token = "abc123";
  const std::string ok = "Bearer abc123";
  const std::string lower = "bearer abc123";
  const std::string spaced = "Bearer   abc123 ";
  const std::string wrong = "Bearer abc124";
  const std::string prefix = "Bearer abc12";
  const std::string longer = "Bearer abc1234";
  const std::string basic = "Basic abc123";
  const std::string bare = "abc123";
  const std::string empty = "Bearer ";
  CHECK(bearer_matches(&ok, token));
  CHECK(bearer_matches(&lower, token));
  CHECK(bearer_matches(&spaced, token));
  CHECK_FALSE(bearer_matches(nullptr, token));
  CHECK_FALSE(bearer_matches(&wrong, token));
  CHECK_FALSE(bearer_matches(&prefix, token));
  CHECK_FALSE(bearer_matches(&longer, token));
  CHECK_FALSE(bearer_matches(&basic, token));
  CHECK_FALSE(bearer_matches(&bare, token));
  CHECK_FALSE(bearer_matches(&empty, token));
}

TEST_CASE("admin_peer_allowed: empty allow admits anyone, else only the listed CIDRs", "[admin][security]") {
  lb::conf::Admin a;
  const auto lo = addr("127.0.0.1", 5000);
  const auto ten = addr("10.9.8.7", 5000);
  const auto mapped = addr("::ffff:10.9.8.7", 5000);
  const auto v6 = addr("2001:db8::1", 5000);
  auto sa = [](const sockaddr_storage& s) { return reinterpret_cast<const sockaddr*>(&s); };
  CHECK(admin_peer_allowed(a, sa(lo)));
  a.allow.push_back(*lb::conf::parse_cidr("10.0.0.0/8"));
  CHECK_FALSE(admin_peer_allowed(a, sa(lo)));
  CHECK(admin_peer_allowed(a, sa(ten)));
  CHECK(admin_peer_allowed(a, sa(mapped)));
  CHECK_FALSE(admin_peer_allowed(a, sa(v6)));
  a.allow.push_back(*lb::conf::parse_cidr("2001:db8::/32"));
  CHECK(admin_peer_allowed(a, sa(v6)));
}
