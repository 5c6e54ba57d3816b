// End-to-end: protection at the edge of a TCP listener. allow/deny, the
// listener and per-source connection limits, PROXY v1/v2 sent to backends
// (checked by a parser written here, independent of lb's), PROXY headers
// accepted from clients (their address then decides ACL, hashing and the
// header sent on) and malformed ones refused before any backend sees them.
//
// Client source addresses: every 127.0.0.0/8 address is local on Linux, so a
// client socket bound to 127.0.0.N before connect() is a distinct source.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <regex>
#include <set>

#include "test/support/backend_server.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

// Connects from source address `src` (an IP literal, port chosen by the
// kernel) to host:port. Invalid Socket on failure.
Socket connect_from(const std::string& src, const std::string& host, uint16_t port,
                    Deadline deadline = in(seconds(5))) {
  return tcp_connect_from(src, host, port, deadline);
}

// "ip:port" of a socket's local or peer end.
std::string endpoint(const Socket& s, bool peer) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  int rc = peer ? ::getpeername(s.fd(), reinterpret_cast<sockaddr*>(&a), &len)
                : ::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&a), &len);
  if (rc != 0) return "";
  char ip[INET6_ADDRSTRLEN] = {};
  uint16_t port = 0;
  if (a.ss_family == AF_INET) {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&a);
    inet_ntop(AF_INET, &in4->sin_addr, ip, sizeof ip);
    port = ntohs(in4->sin_port);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
    port = ntohs(in6->sin6_port);
  }
  return fmt::format("{}:{}", ip, port);
}

// What a backend learns from a PROXY header: "v1"/"v2", source and
// destination "ip:port", and the bytes after the header.
struct SeenHeader {
  std::string version;
  std::string src;
  std::string dst;
  std::string rest;
  std::string error;  // set when the bytes do not start with a valid header
};

// A deliberately separate, minimal reading of the PROXY protocol (not lb's
// parser), for what a backend receives.
SeenHeader read_proxy_header(const std::string& b) {
  SeenHeader h;
  static const char kV2Sig[] = "\r\n\r\n\0\r\nQUIT\n";
  if (b.rfind("PROXY ", 0) == 0) {
    size_t eol = b.find("\r\n");
    if (eol == std::string::npos) return {.error = "v1 without CRLF"};
    char proto[8] = {}, sip[64] = {}, dip[64] = {};
    unsigned sport = 0, dport = 0;
    std::string line = b.substr(0, eol);
    if (std::sscanf(line.c_str(), "PROXY %7s %63s %63s %u %u", proto, sip, dip, &sport, &dport) != 5)
      return {.error = "v1 fields: " + line};
    h.version = "v1";
    bool v6 = std::string(proto) == "TCP6";
    h.src = v6 ? fmt::format("[{}]:{}", sip, sport) : fmt::format("{}:{}", sip, sport);
    h.dst = v6 ? fmt::format("[{}]:{}", dip, dport) : fmt::format("{}:{}", dip, dport);
    h.rest = b.substr(eol + 2);
    return h;
  }
  if (b.size() >= 16 && std::memcmp(b.data(), kV2Sig, 12) == 0) {
    auto u8 = [&](size_t i) { return static_cast<uint8_t>(b[i]); };
    if (u8(12) != 0x21) return {.error = fmt::format("v2 version/command {:#x}", u8(12))};
    size_t len = (size_t{u8(14)} << 8) | u8(15);
    if (b.size() < 16 + len) return {.error = "v2 truncated"};
    h.version = "v2";
    uint8_t fam = u8(13);
    char sip[INET6_ADDRSTRLEN] = {}, dip[INET6_ADDRSTRLEN] = {};
    if (fam == 0x11 || fam == 0x12) {  // TCP or UDP over IPv4
      inet_ntop(AF_INET, b.data() + 16, sip, sizeof sip);
      inet_ntop(AF_INET, b.data() + 20, dip, sizeof dip);
      h.src = fmt::format("{}:{}", sip, (u8(24) << 8) | u8(25));
      h.dst = fmt::format("{}:{}", dip, (u8(26) << 8) | u8(27));
    } else if (fam == 0x21 || fam == 0x22) {
      inet_ntop(AF_INET6, b.data() + 16, sip, sizeof sip);
      inet_ntop(AF_INET6, b.data() + 32, dip, sizeof dip);
      h.src = fmt::format("[{}]:{}", sip, (u8(48) << 8) | u8(49));
      h.dst = fmt::format("[{}]:{}", dip, (u8(50) << 8) | u8(51));
    } else {
      return {.error = fmt::format("v2 family {:#x}", fam)};
    }
    h.rest = b.substr(16 + len);
    return h;
  }
  return {.error = "no PROXY header"};
}

std::string listener_config(const std::string& listener_extra, const std::string& pool_extra,
                            const std::vector<std::string>& backends, unsigned workers = 1,
                            const std::string& bind = "127.0.0.1:0") {
  std::string c = global_section(workers) + fmt::format(R"(
[[listener]]
name = "edge"
bind = "{}"
pool = "p"
connect_timeout = "2s"
{}

[[pool]]
name = "p"
{}
[pool.health_check]
type = "none"
)",
                                                        bind, listener_extra, pool_extra);
  for (auto& b : backends) c += fmt::format("[[pool.backend]]\naddress = \"{}\"\n", b);
  return c;
}

double metric(const LbProcess& lb, const std::string& name, const Labels& labels) {
  auto m = fetch_metrics(lb.admin_port());
  if (!m) return -1;
  return m->value(name, labels).value_or(-1);
}

// Whether a connection through a Name backend is served: the greeting arrives.
bool served(const Socket& s, const std::string& greeting = "b\n") {
  return s && read_exact(s, greeting.size(), in(seconds(5))).data == greeting;
}

// A refused connection is closed by lb without a byte.
bool refused(const Socket& s) {
  if (!s) return true;  // also fine: closed before the connect completed
  ReadResult r = read_until_eof(s, in(seconds(5)));
  return r.data.empty() && (r.end == ReadEnd::Eof || r.end == ReadEnd::Reset);
}

}  // namespace

TEST_CASE("edge: allow and deny decide at accept, deny wins, refusals are counted", "[e2e][edge][acl]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  LbProcess lb(listener_config(R"(allow = ["127.0.0.0/29", "10.0.0.0/8"]
deny = ["127.0.0.3/32"])",
                               "", {backend.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("edge");

  CHECK(served(connect_from("127.0.0.2", "127.0.0.1", port)));
  CHECK(served(connect_from("127.0.0.7", "127.0.0.1", port)));
  CHECK(refused(connect_from("127.0.0.3", "127.0.0.1", port)));  // allowed, but denied
  CHECK(refused(connect_from("127.0.0.8", "127.0.0.1", port)));  // outside allow
  CHECK(refused(connect_from("127.0.1.1", "127.0.0.1", port)));
  CHECK(backend.accepted() == 2);  // refused clients never reached a backend
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "acl"}}) == 3);
  CHECK(metric(lb, "lb_listener_connections_total", {{"listener", "edge"}}) == 2);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("edge: IPv6 deny on an IPv6 listener", "[e2e][edge][acl][ipv6]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  LbProcess lb(listener_config(R"(deny = ["::1/128"])", "", {backend.address()}, 1, "[::1]:0"));
  REQUIRE(lb.wait_started());
  CHECK(refused(connect_from("::1", "::1", lb.listener_port("edge"))));
  CHECK(backend.accepted() == 0);
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "acl"}}) == 1);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("edge: max_connections_per_source counts each client IP over every worker", "[e2e][edge][limits]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  // Two workers: the kernel spreads one source's connections over both, so
  // the limit holds only if the count is shared.
  LbProcess lb(listener_config("max_connections_per_source = 3", "", {backend.address()}, 2));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("edge");

  std::vector<Socket> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(connect_from("127.0.0.2", "127.0.0.1", port));
    REQUIRE(served(held.back()));
  }
  for (int i = 0; i < 4; ++i) CHECK(refused(connect_from("127.0.0.2", "127.0.0.1", port)));
  // Another source is not affected.
  Socket other = connect_from("127.0.0.3", "127.0.0.1", port);
  CHECK(served(other));
  // Closing one frees a place for the same source (once lb has seen it go).
  held.pop_back();
  CHECK(wait_until(
      [&] {
        return metric(lb, "lb_listener_active", {{"listener", "edge"}}) == 3;
      },
      in(seconds(5))));
  CHECK(served(connect_from("127.0.0.2", "127.0.0.1", port)));
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "limit"}}) == 4);
  held.clear();
  other.close();
  CHECK(lb.terminate() == 0);
}

// An IPv6 host owns its /64 and can use any address in it: the per-source
// limit counts the /64. Clients with many IPv6 addresses come through a
// trusted PROXY peer here (binding them on lo would need root and cleanup).
TEST_CASE("edge: max_connections_per_source counts an IPv6 /64 as one source", "[e2e][edge][limits][ipv6]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  LbProcess lb(listener_config(R"(accept_proxy_protocol = true
proxy_protocol_trusted = ["127.0.0.1/32"]
max_connections_per_source = 2)",
                               "", {backend.address()}, 2));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("edge");
  auto as_client = [&](const std::string& client) {
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    if (c) write_all(c, fmt::format("PROXY TCP6 {} 2001:db8::1 4000 80\r\n", client), in(seconds(5)));
    return c;
  };
  std::vector<Socket> held;
  held.push_back(as_client("2001:db8:aa:bb::1"));
  REQUIRE(served(held.back()));
  held.push_back(as_client("2001:db8:aa:bb:1234:5678:9abc:def0"));
  REQUIRE(served(held.back()));
  // A third interface identifier in the same /64: the same source.
  CHECK(refused(as_client("2001:db8:aa:bb:ffff::3")));
  // The next /64 is another source.
  held.push_back(as_client("2001:db8:aa:bc::1"));
  CHECK(served(held.back()));
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "limit"}}) == 1);
  held.clear();
  CHECK(lb.terminate() == 0);
}

TEST_CASE("edge: a listener's max_connections holds across workers", "[e2e][edge][limits]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  LbProcess lb(listener_config("max_connections = 4", "", {backend.address()}, 2));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("edge");
  std::vector<Socket> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(connect_from(fmt::format("127.0.0.{}", 10 + i), "127.0.0.1", port));
    REQUIRE(served(held.back()));
  }
  for (int i = 0; i < 5; ++i)
    CHECK(refused(connect_from(fmt::format("127.0.0.{}", 20 + i), "127.0.0.1", port)));
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "limit"}}) == 5);
  CHECK(metric(lb, "lb_listener_active", {{"listener", "edge"}}) == 4);
  held.clear();
  CHECK(wait_until(
      [&] {
        return metric(lb, "lb_listener_active", {{"listener", "edge"}}) == 0;
      },
      in(seconds(5))));
  CHECK(served(connect_from("127.0.0.20", "127.0.0.1", port)));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("edge: proxy_protocol v1 and v2 give the backend the client and lb addresses first",
          "[e2e][edge][proxy]") {
  // The backend answers, after the client's EOF, with every byte it got.
  TestBackend backend(TestBackend::read_until_eof_then_reply([](const std::string& got) { return got; }));
  REQUIRE(backend.ok());
  for (const char* version : {"v1", "v2"}) {
    for (const char* family : {"127.0.0.1", "::1"}) {
      DYNAMIC_SECTION(version << " over " << family) {
        const std::string bind = std::string(family) == "::1" ? "[::1]:0" : "127.0.0.1:0";
        LbProcess lb(listener_config(fmt::format("proxy_protocol = \"{}\"", version), "", {backend.address()},
                                     1, bind));
        REQUIRE(lb.wait_started());
        Socket c = connect_from(family, family, lb.listener_port("edge"));
        REQUIRE(c);
        const std::string client_end = endpoint(c, false), lb_end = endpoint(c, true);
        const std::string payload = random_bytes(100 * 1024, 3);
        REQUIRE(write_all(c, payload, in(seconds(5))) == payload.size());
        REQUIRE(shutdown_write(c));
        ReadResult r = read_until_eof(c, in(seconds(10)));
        REQUIRE(r.end == ReadEnd::Eof);
        SeenHeader h = read_proxy_header(r.data);
        INFO(h.error);
        REQUIRE(h.error.empty());
        CHECK(h.version == version);
        auto bracket = [&](std::string s) {
          // endpoint() prints IPv6 without brackets; the header reader with them.
          if (std::string(family) != "::1") return s;
          size_t colon = s.rfind(':');
          return "[" + s.substr(0, colon) + "]" + s.substr(colon);
        };
        CHECK(h.src == bracket(client_end));
        CHECK(h.dst == bracket(lb_end));
        CHECK(h.rest.size() == payload.size());
        CHECK(mismatch_offset(h.rest, payload) == std::string::npos);
        CHECK(lb.terminate() == 0);
      }
    }
  }
}

TEST_CASE("edge: an accepted PROXY header's addresses replace the client's and are sent on",
          "[e2e][edge][proxy]") {
  TestBackend backend(TestBackend::read_until_eof_then_reply([](const std::string& got) { return got; }));
  REQUIRE(backend.ok());
  LbProcess lb(
      listener_config("accept_proxy_protocol = true\nproxy_protocol = \"v2\"", "", {backend.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("edge");

  // v1 from the client, in pieces, with payload right behind the header.
  {
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    REQUIRE(write_all(c, "PROXY TCP4 203.0.113.7 ", in(seconds(5))) > 0);
    REQUIRE(write_all(c, "198.51.100.1 5555 443\r\nhello after the header", in(seconds(5))) > 0);
    REQUIRE(shutdown_write(c));
    ReadResult r = read_until_eof(c, in(seconds(10)));
    SeenHeader h = read_proxy_header(r.data);
    INFO(h.error);
    REQUIRE(h.error.empty());
    CHECK(h.version == "v2");
    CHECK(h.src == "203.0.113.7:5555");
    CHECK(h.dst == "198.51.100.1:443");
    CHECK(h.rest == "hello after the header");
  }
  // v2 IPv6 from the client.
  {
    std::string v2("\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24", 16);
    in6_addr s6{}, d6{};
    inet_pton(AF_INET6, "2001:db8::7", &s6);
    inet_pton(AF_INET6, "2001:db8::1", &d6);
    v2.append(reinterpret_cast<char*>(&s6), 16);
    v2.append(reinterpret_cast<char*>(&d6), 16);
    v2 += std::string("\x1f\x90\x01\xbb", 4);  // ports 8080 -> 443
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    REQUIRE(write_all(c, v2 + "data", in(seconds(5))) == v2.size() + 4);
    REQUIRE(shutdown_write(c));
    ReadResult r = read_until_eof(c, in(seconds(10)));
    SeenHeader h = read_proxy_header(r.data);
    INFO(h.error);
    REQUIRE(h.error.empty());
    CHECK(h.src == "[2001:db8::7]:8080");
    CHECK(h.dst == "[2001:db8::1]:443");
    CHECK(h.rest == "data");
  }
  CHECK(lb.terminate() == 0);
}

TEST_CASE("edge: the accepted PROXY source is the address that is hashed and checked", "[e2e][edge][proxy]") {
  TestBackend b1(TestBackend::named("one\n")), b2(TestBackend::named("two\n")),
      b3(TestBackend::named("six\n"));
  REQUIRE((b1.ok() && b2.ok() && b3.ok()));
  // Two listeners on one maglev pool: "edge" takes PROXY headers, "direct"
  // sees real sources. Both must place a given source IP on the same backend.
  std::string cfg = listener_config(R"(accept_proxy_protocol = true
deny = ["192.0.2.0/24"])",
                                    "selector = \"maglev\"", {b1.address(), b2.address(), b3.address()});
  cfg += R"(
[[listener]]
name = "direct"
bind = "127.0.0.1:0"
pool = "p"
)";
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());
  const uint16_t edge = lb.listener_port("edge");
  const uint16_t direct = lb.listener_port("direct");

  std::set<std::string> seen;
  for (int i = 10; i < 40; ++i) {
    const std::string ip = fmt::format("127.0.0.{}", i);
    Socket d = connect_from(ip, "127.0.0.1", direct);
    REQUIRE(d);
    std::string via_direct = read_exact(d, 4, in(seconds(5))).data;
    // The PROXY connection itself comes from 127.0.0.1.
    Socket p = tcp_connect("127.0.0.1", edge, in(seconds(5)));
    REQUIRE(p);
    REQUIRE(write_all(p, fmt::format("PROXY TCP4 {} 127.0.0.1 4000 80\r\n", ip), in(seconds(5))) > 0);
    std::string via_proxy = read_exact(p, 4, in(seconds(5))).data;
    INFO("source " << ip);
    CHECK(via_proxy == via_direct);
    seen.insert(via_direct);
  }
  // Sources really spread, so a lb that hashed 127.0.0.1 instead would fail.
  CHECK(seen.size() >= 2);

  // deny applies to the header's source, not to the real peer (127.0.0.1).
  Socket c = tcp_connect("127.0.0.1", edge, in(seconds(5)));
  REQUIRE(c);
  REQUIRE(write_all(c, "PROXY TCP4 192.0.2.9 127.0.0.1 4000 80\r\n", in(seconds(5))) > 0);
  CHECK(refused(c));
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "acl"}}) == 1);
  CHECK(lb.terminate() == 0);
}

// proxy_protocol_trusted: only the balancer in front may speak for its
// clients. An untrusted peer that sends a header is refused (it would
// otherwise pick any client address and pass allow/deny and the per-source
// limit); a trusted peer's header decides the ACL.
TEST_CASE(
    "edge: PROXY headers are accepted only from proxy_protocol_trusted peers, whose header source "
    "is what allow/deny check",
    "[e2e][edge][proxy][trust]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  LbProcess lb(listener_config(R"(accept_proxy_protocol = true
proxy_protocol_trusted = ["127.0.0.2/32"]
allow = ["198.51.100.0/24"]
deny = ["198.51.100.66/32"])",
                               "", {backend.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("edge");
  CHECK_FALSE(lb.process().find_line(std::regex("^warn listener=edge accepts PROXY headers from any peer")));
  auto proxied = [&](const std::string& peer, const std::string& client) {
    Socket c = connect_from(peer, "127.0.0.1", port);
    if (c) write_all(c, fmt::format("PROXY TCP4 {} 127.0.0.1 4000 80\r\n", client), in(seconds(5)));
    return c;
  };

  // Untrusted peers, whatever address their header claims: refused.
  CHECK(refused(proxied("127.0.0.3", "198.51.100.7")));
  CHECK(refused(proxied("127.0.0.1", "198.51.100.7")));
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "proxy_protocol"}}) == 2);
  CHECK(backend.accepted() == 0);

  // The trusted peer: its header's source is the client, for allow and deny.
  CHECK(served(proxied("127.0.0.2", "198.51.100.7")));    // in allow
  CHECK(refused(proxied("127.0.0.2", "198.51.100.66")));  // in allow, but denied
  CHECK(refused(proxied("127.0.0.2", "203.0.113.1")));    // outside allow
  // The peer's own address (127.0.0.2) is outside allow: it did not decide.
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "acl"}}) == 2);
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "proxy_protocol"}}) == 2);
  CHECK(backend.accepted() == 1);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("edge: accept_proxy_protocol without proxy_protocol_trusted warns at start",
          "[e2e][edge][proxy][trust]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  LbProcess lb(listener_config("accept_proxy_protocol = true", "", {backend.address()}));
  REQUIRE(lb.wait_started());
  CHECK(lb.process().find_line(std::regex("^warn listener=edge accepts PROXY headers from any peer")));
  // Still any peer's header is believed (the documented default).
  Socket c = connect_from("127.0.0.9", "127.0.0.1", lb.listener_port("edge"));
  REQUIRE(c);
  REQUIRE(write_all(c, "PROXY TCP4 198.51.100.7 127.0.0.1 4000 80\r\n", in(seconds(5))) > 0);
  CHECK(served(c));
  c.close();
  CHECK(lb.terminate() == 0);
}

// The README: an IPv4-mapped IPv6 source matches IPv4 prefixes. A `[::]` bind
// is IPv6-only, so such a source reaches allow/deny through a PROXY header
// (or a dual-stack socket inherited from systemd).
TEST_CASE("edge: an IPv4-mapped IPv6 header source matches IPv4 allow/deny prefixes",
          "[e2e][edge][proxy][acl]") {
  TestBackend backend(TestBackend::named("b\n"));
  REQUIRE(backend.ok());
  LbProcess lb(listener_config(R"(accept_proxy_protocol = true
proxy_protocol_trusted = ["127.0.0.0/8"]
deny = ["192.0.2.0/24"])",
                               "", {backend.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("edge");
  auto proxied6 = [&](const std::string& client) {
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    if (c) write_all(c, fmt::format("PROXY TCP6 {} ::1 4000 80\r\n", client), in(seconds(5)));
    return c;
  };
  CHECK(refused(proxied6("::ffff:192.0.2.9")));
  CHECK(served(proxied6("::ffff:198.51.100.9")));
  CHECK(served(proxied6("2001:db8::9")));
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "acl"}}) == 1);
  CHECK(lb.terminate() == 0);
}

TEST_CASE("edge: a missing, malformed, oversized or late PROXY header never reaches a backend",
          "[e2e][edge][proxy]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(listener_config("accept_proxy_protocol = true", "", {backend.address()}));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("edge");

  std::string oversized("\r\n\r\n\0\r\nQUIT\n\x21\x11\x13\x88", 16);  // length 5000
  oversized += std::string(5000, 'x');
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"plain HTTP", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
      {"v1 with an IPv6 address", "PROXY TCP4 ::1 127.0.0.1 1 2\r\n"},
      {"v1 port out of range", "PROXY TCP4 1.2.3.4 127.0.0.1 70000 80\r\n"},
      {"v1 without CRLF", "PROXY TCP4 1.2.3.4 127.0.0.1 1 80" + std::string(100, ' ')},
      {"v2 wrong version", std::string("\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c", 16) + std::string(12, '\0')},
      {"v2 oversized", oversized},
  };
  for (auto& [name, bytes] : bad) {
    INFO(name);
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    write_all(c, bytes, in(seconds(5)));  // may fail part-way once lb closed
    CHECK(refused(c));
  }
  // A header cut short by the client's close.
  {
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    REQUIRE(write_all(c, "PROXY TCP4 1.2.", in(seconds(5))) > 0);
    REQUIRE(shutdown_write(c));
    CHECK(refused(c));
  }
  // A client that sends nothing is cut after the header deadline (3 s).
  {
    Socket c = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(c);
    ReadResult r = read_until_eof(c, in(seconds(10)));
    CHECK(r.data.empty());
    CHECK(r.end != ReadEnd::Timeout);
  }
  CHECK(backend.accepted() == 0);
  CHECK(metric(lb, "lb_listener_rejected_total", {{"listener", "edge"}, {"reason", "proxy_protocol"}}) ==
        bad.size() + 2);
  // A good one still works.
  Socket ok = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(ok);
  REQUIRE(write_all(ok, "PROXY UNKNOWN\r\nping", in(seconds(5))) > 0);
  CHECK(read_exact(ok, 4, in(seconds(5))).data == "ping");
  ok.close();
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
