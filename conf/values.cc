// Value syntaxes of lb.toml: durations, endpoints, CIDRs, host resolution.

#include <arpa/inet.h>
#include <fmt/format.h>
#include <net/if.h>
#include <netdb.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "conf/internal.h"
#include "conf/load.h"

namespace lb::conf {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!is_digit(c)) return false;
  }
  return true;
}

// Decimal digits to an integer, saturating at `limit + 1` so that any length of
// digits compares correctly against `limit` without overflowing.
uint64_t digits_value(std::string_view s, uint64_t limit) {
  uint64_t v = 0;
  for (char c : s) {
    v = v * 10 + static_cast<uint64_t>(c - '0');
    if (v > limit) return limit + 1;
  }
  return v;
}

constexpr const char* kDurationExample = R"(expected a duration such as "250ms", "2s", "5m" or "1h")";

struct Unit {
  std::string_view name;
  int64_t ms;
};
// Largest first: segments of a compound duration ("1m30s") must follow this order.
constexpr Unit kUnits[] = {{"h", 3600 * 1000}, {"m", 60 * 1000}, {"s", 1000}, {"ms", 1}};

}  // namespace

// ---- durations ---------------------------------------------------------------

Parsed<Duration> parse_duration_detailed(std::string_view text) {
  using P = Parsed<Duration>;
  if (text.empty()) return P::fail(kDurationExample);
  if (text[0] == '-') return P::fail("must not be negative");

  // One or more NUMBER UNIT segments, units from largest to smallest: "2s",
  // "1m30s". Integers only, as in HAProxy: "1.5s" is written "1500ms".
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t total = 0;
  size_t next_unit = 0;  // index into kUnits of the smallest unit still allowed
  size_t i = 0;
  while (i < text.size()) {
    size_t start = i;
    while (i < text.size() && is_digit(text[i])) ++i;
    if (i == start) return P::fail(kDurationExample);
    std::string_view number = text.substr(start, i - start);
    if (i < text.size() && (text[i] == '.' || text[i] == ',')) {
      return P::fail(R"(fractions are not supported; use a smaller unit, e.g. "1500ms" for 1.5s)");
    }
    size_t ustart = i;
    while (i < text.size() && !is_digit(text[i])) ++i;
    std::string_view unit = text.substr(ustart, i - ustart);
    if (unit.empty()) return P::fail("missing unit (ms, s, m or h)");

    size_t u = 0;
    while (u < std::size(kUnits) && kUnits[u].name != unit) ++u;
    if (u == std::size(kUnits)) {
      return P::fail(fmt::format("unknown unit {} (expected ms, s, m or h)", quote(unit)));
    }
    if (u < next_unit) return P::fail(kDurationExample);  // "1s1m", "2s2s"
    next_unit = u + 1;

    uint64_t n = digits_value(number, static_cast<uint64_t>(kMax));
    if (n > static_cast<uint64_t>(kMax / kUnits[u].ms)) return P::fail("too large");
    int64_t part = static_cast<int64_t>(n) * kUnits[u].ms;
    if (total > kMax - part) return P::fail("too large");
    total += part;
  }
  return P::ok(Duration(total));
}

std::optional<Duration> parse_duration(std::string_view text) { return parse_duration_detailed(text).value; }

// ---- sizes -----------------------------------------------------------------------

Parsed<uint64_t> parse_size_detailed(std::string_view text) {
  using P = Parsed<uint64_t>;
  constexpr const char* kExample = R"(expected a size such as "64KiB", "512MiB" or "1GiB")";
  struct SizeUnit {
    std::string_view name;
    int shift;
  };
  static constexpr SizeUnit kSizeUnits[] = {{"B", 0}, {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}};
  if (!text.empty() && text[0] == '-') return P::fail("must not be negative");
  size_t i = 0;
  while (i < text.size() && is_digit(text[i])) ++i;
  if (i == 0) return P::fail(kExample);
  if (i < text.size() && (text[i] == '.' || text[i] == ',')) {
    return P::fail(R"(fractions are not supported; use a smaller unit, e.g. "1536MiB" for 1.5GiB)");
  }
  std::string_view unit = text.substr(i);
  if (unit.empty()) return P::fail("missing unit (B, KiB, MiB, GiB or TiB)");
  for (const auto& u : kSizeUnits) {
    if (u.name != unit) continue;
    const uint64_t max = std::numeric_limits<uint64_t>::max() >> u.shift;
    uint64_t n = digits_value(text.substr(0, i), max);
    if (n > max) return P::fail("too large");
    return P::ok(n << u.shift);
  }
  return P::fail(fmt::format("unknown unit {} (expected B, KiB, MiB, GiB or TiB)", quote(unit)));
}

std::optional<uint64_t> parse_size(std::string_view text) { return parse_size_detailed(text).value; }

// ---- endpoints -----------------------------------------------------------------

namespace {

ResolveFn g_resolver = nullptr;

std::string resolve_with_getaddrinfo(const std::string& host, sockaddr_storage& addr, socklen_t& len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;  // one entry per address, not one per socket type
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0) {
    return rc == EAI_SYSTEM ? std::string(std::strerror(errno)) : std::string(gai_strerror(rc));
  }
  // The first answer: getaddrinfo already orders them by RFC 6724 preference.
  std::string err = "no address returned";
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
        ai->ai_addrlen <= sizeof(sockaddr_storage)) {
      addr = {};
      std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
      len = ai->ai_addrlen;
      err.clear();
      break;
    }
  }
  freeaddrinfo(res);
  return err;
}

void set_port(sockaddr_storage& addr, uint16_t port) {
  if (addr.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in&>(addr).sin_port = htons(port);
  } else if (addr.ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6&>(addr).sin6_port = htons(port);
  }
}

// An IPv4 dotted quad (strict: no "1.2.3" or octal shorthands) into addr.
bool ipv4_literal(std::string_view host, sockaddr_storage& addr, socklen_t& len) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  if (inet_pton(AF_INET, std::string(host).c_str(), &sin.sin_addr) != 1) return false;
  addr = {};
  std::memcpy(&addr, &sin, sizeof sin);
  len = sizeof sin;
  return true;
}

// An IPv6 literal, optionally with a zone ("fe80::1%eth0" or "%2").
Parsed<bool> ipv6_literal(std::string_view host, sockaddr_storage& addr, socklen_t& len) {
  std::string_view ip = host;
  std::string_view zone;
  if (size_t pct = host.find('%'); pct != std::string_view::npos) {
    ip = host.substr(0, pct);
    zone = host.substr(pct + 1);
  }
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  if (inet_pton(AF_INET6, std::string(ip).c_str(), &sin6.sin6_addr) != 1) {
    return Parsed<bool>::fail(fmt::format("invalid IPv6 address {}", quote(ip)));
  }
  if (!zone.empty() || host.find('%') != std::string_view::npos) {
    unsigned index = 0;
    if (all_digits(zone)) {
      index = static_cast<unsigned>(digits_value(zone, std::numeric_limits<unsigned>::max()));
    } else if (!zone.empty()) {
      index = if_nametoindex(std::string(zone).c_str());
    }
    if (index == 0) return Parsed<bool>::fail(fmt::format("unknown interface {}", quote(zone)));
    sin6.sin6_scope_id = index;
  }
  addr = {};
  std::memcpy(&addr, &sin6, sizeof sin6);
  len = sizeof sin6;
  return Parsed<bool>::ok(true);
}

// RFC 1123 host name: dot-separated labels of letters, digits, '-' (and '_',
// which real deployments use in service names), optionally a final dot.
bool valid_hostname(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  if (h.back() == '.') h.remove_suffix(1);
  size_t label = 0;
  for (size_t i = 0; i <= h.size(); ++i) {
    if (i == h.size() || h[i] == '.') {
      if (label == 0 || label > 63) return false;
      if (h[i - 1] == '-' || h[i - label] == '-') return false;
      label = 0;
      continue;
    }
    char c = h[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-' || c == '_';
    if (!ok) return false;
    ++label;
  }
  return true;
}

}  // namespace

void set_resolver_for_testing(ResolveFn fn) { g_resolver = fn; }

std::string resolve_host(const std::string& host, sockaddr_storage& addr, socklen_t& len) {
  return g_resolver ? g_resolver(host, addr, len) : resolve_with_getaddrinfo(host, addr, len);
}

void set_endpoint_port(Endpoint& ep, uint16_t port) { set_port(ep.addr, port); }

Parsed<Endpoint> parse_endpoint_detailed(std::string_view text, PortRule ports, HostRule hosts) {
  using P = Parsed<Endpoint>;
  const char* form = hosts != HostRule::IpOnly ? "HOST:PORT" : "IP:PORT";

  // Split HOST and PORT.
  std::string_view host;
  std::string_view port;
  bool bracketed = false;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return P::fail(R"(missing "]" after the IPv6 address)");
    host = text.substr(1, close - 1);
    bracketed = true;
    std::string_view rest = text.substr(close + 1);
    if (rest.empty()) return P::fail(fmt::format("missing port (expected [IPv6]:PORT)"));
    if (rest[0] != ':') return P::fail(R"(expected ":PORT" after "]")");
    port = rest.substr(1);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return P::fail(fmt::format("missing port (expected {})", form));
    }
    if (text.find(':') != colon) {
      return P::fail(R"(an IPv6 address must be in brackets, as in "[::1]:80")");
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }

  if (port.empty()) return P::fail(fmt::format("missing port (expected {})", form));
  if (!all_digits(port)) return P::fail(fmt::format("invalid port {}", quote(port)));
  uint64_t port_num = digits_value(port, 65535);
  if (port_num > 65535 || (port_num == 0 && ports == PortRule::NonZero)) {
    return P::fail("port out of range 1-65535");
  }

  Endpoint ep;
  ep.text = std::string(text);
  if (host.empty()) {
    if (hosts != HostRule::IpOnly) return P::fail("missing host");
    return P::fail(R"(missing address (for every interface write "0.0.0.0:PORT" or "[::]:PORT"))");
  }
  if (bracketed) {
    auto v6 = ipv6_literal(host, ep.addr, ep.addr_len);
    if (!v6.value) return P::fail(v6.error);
  } else if (!ipv4_literal(host, ep.addr, ep.addr_len)) {
    // Digits and dots only can never be a host name: it is a mistyped IPv4.
    bool numeric = host.find_first_not_of("0123456789.") == std::string_view::npos;
    if (hosts == HostRule::IpOnly && !numeric && valid_hostname(host)) {
      return P::fail(
          fmt::format("invalid IP address {} (host names are accepted only for backends)", quote(host)));
    }
    if (hosts == HostRule::IpOnly || numeric) {
      return P::fail(fmt::format("invalid IP address {}", quote(host)));
    }
    if (!valid_hostname(host)) return P::fail(fmt::format("invalid host name {}", quote(host)));
    ep.host = std::string(host);
    if (hosts == HostRule::HostnameLater) return P::ok(std::move(ep));
    std::string err = resolve_host(ep.host, ep.addr, ep.addr_len);
    if (!err.empty()) return P::fail(fmt::format("cannot resolve host {}: {}", quote(host), err));
  }
  set_port(ep.addr, static_cast<uint16_t>(port_num));
  return P::ok(std::move(ep));
}

std::optional<Endpoint> parse_ip_endpoint(std::string_view text) {
  return parse_endpoint_detailed(text, PortRule::AllowZero, HostRule::IpOnly).value;
}

// ---- CIDRs -----------------------------------------------------------------------

Parsed<CidrParse> parse_cidr_detailed(std::string_view text) {
  using P = Parsed<CidrParse>;
  std::string_view ip = text;
  std::string_view len;
  bool has_len = false;
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    ip = text.substr(0, slash);
    len = text.substr(slash + 1);
    has_len = true;
  }
  CidrParse out;
  out.cidr.text = std::string(text);
  std::string ip_str(ip);
  if (inet_pton(AF_INET, ip_str.c_str(), out.cidr.bytes) == 1) {
    out.cidr.family = AF_INET;
  } else if (inet_pton(AF_INET6, ip_str.c_str(), out.cidr.bytes) == 1) {
    out.cidr.family = AF_INET6;
  } else {
    return P::fail(fmt::format("invalid IP address {}", quote(ip)));
  }
  const int max_len = out.cidr.family == AF_INET ? 32 : 128;
  int prefix = max_len;  // a bare address is a single host
  if (has_len) {
    if (!all_digits(len)) return P::fail(fmt::format("invalid prefix length {}", quote(len)));
    uint64_t v = digits_value(len, static_cast<uint64_t>(max_len));
    if (v > static_cast<uint64_t>(max_len)) {
      return P::fail(fmt::format("prefix length {} out of range 0-{}", len, max_len));
    }
    prefix = static_cast<int>(v);
  }
  out.cidr.prefix_len = prefix;

  const int nbytes = max_len / 8;
  for (int i = 0; i < nbytes; ++i) {
    int bits_kept = std::clamp(prefix - i * 8, 0, 8);
    auto mask = static_cast<uint8_t>(bits_kept == 0 ? 0 : 0xff << (8 - bits_kept));
    if ((out.cidr.bytes[i] & ~mask) != 0) out.host_bits_set = true;
    out.cidr.bytes[i] &= mask;
  }
  return P::ok(std::move(out));
}

std::optional<Cidr> parse_cidr(std::string_view text) {
  auto p = parse_cidr_detailed(text);
  if (!p.value) return std::nullopt;
  return std::move(p.value->cidr);
}

}  // namespace lb::conf
