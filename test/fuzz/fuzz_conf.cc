// libFuzzer target: lb.toml loading (toml++ parse, schema pass, validation)
// on arbitrary text, through lb::conf::load_string() as lb calls it.
//
// Besides "never crash, never leak, no UB", it checks what the loader
// promises its callers:
//   - a Config comes out exactly when there is no diagnostic;
//   - every diagnostic names the file and is one line free of control bytes
//     (quote() exists so a hostile value cannot break or color a log line);
//   - a loaded Config satisfies the cross-object rules validate.cc enforces
//     (a listener's pool exists, binds and backends are non-empty, backend
//     ids are unique and non-empty within a pool, weights within 0..1000);
//   - every resolved address prints (Endpoint::to_string) as text that
//     parse_ip_endpoint() reads back to the same address and port.
//
// Host names of backends are resolved at load time. A fuzzer must neither
// wait on nor send DNS queries, so a deterministic fake resolver replaces
// getaddrinfo() through the hook conf/internal.h provides for tests: names
// ending in ".invalid" (RFC 6761) fail, every other name maps to an address
// derived from its spelling, v4 or v6, so both paths stay reachable.
//
// Thread rules: libFuzzer calls LLVMFuzzerTestOneInput on one thread.

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <string_view>

#include "conf/internal.h"
#include "conf/load.h"

namespace {

#define FUZZ_CHECK(cond)                                                                             \
  do {                                                                                               \
    if (!(cond)) {                                                                                   \
      std::fprintf(stderr, "fuzz_conf: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                                  \
    }                                                                                                \
  } while (0)

std::string fake_resolve(const std::string& host, sockaddr_storage& addr, socklen_t& len) {
  std::string_view h = host;
  if (!h.empty() && h.back() == '.') h.remove_suffix(1);
  if (h.size() >= 8 && h.substr(h.size() - 8) == ".invalid") return "Name or service not known";
  uint32_t hash = 2166136261u;  // FNV-1a: a stable address per name
  for (unsigned char c : h) hash = (hash ^ c) * 16777619u;
  addr = {};
  if (hash & 1) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_addr.s6_addr[0] = 0xfd;  // a unique-local address
    std::memcpy(&sin6.sin6_addr.s6_addr[12], &hash, sizeof hash);
    std::memcpy(&addr, &sin6, sizeof sin6);
    len = sizeof sin6;
  } else {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(0x0a000000u | (hash >> 8));  // 10.x.y.z
    std::memcpy(&addr, &sin, sizeof sin);
    len = sizeof sin;
  }
  return {};
}

// Family, address, port and zone; the rest of a sockaddr_storage is padding.
bool same_addr(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
  const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
  return x.sin6_port == y.sin6_port && x.sin6_scope_id == y.sin6_scope_id &&
         std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
}

void check_endpoint(const lb::conf::Endpoint& ep) {
  FUZZ_CHECK(ep.addr.ss_family == AF_INET || ep.addr.ss_family == AF_INET6);
  FUZZ_CHECK(ep.addr_len == (ep.is_v6() ? sizeof(sockaddr_in6) : sizeof(sockaddr_in)));
  const auto again = lb::conf::parse_ip_endpoint(ep.to_string());
  FUZZ_CHECK(again.has_value());
  FUZZ_CHECK(same_addr(again->addr, ep.addr));
}

void check_result(const lb::conf::LoadResult& r, const std::string& path) {
  FUZZ_CHECK(r.ok() == r.errors.empty());
  FUZZ_CHECK(r.config.has_value() == r.errors.empty());
  for (const auto& d : r.errors) {
    FUZZ_CHECK(!d.message.empty());
    FUZZ_CHECK(d.file == path);
    const std::string line = d.str();
    FUZZ_CHECK(line.compare(0, path.size(), path) == 0);
    // One line, and no raw control byte (ESC would reach the terminal).
    for (unsigned char c : line) FUZZ_CHECK(c >= 0x20 && c != 0x7f);
  }
  if (!r.config) return;

  const lb::conf::Config& cfg = *r.config;
  FUZZ_CHECK(!cfg.listeners.empty());
  for (const auto& l : cfg.listeners) {
    FUZZ_CHECK(!l.bind.empty());
    FUZZ_CHECK(cfg.find_pool(l.pool) != nullptr);
    for (const auto& ep : l.bind) check_endpoint(ep);
    (void)lb::conf::to_string(l.protocol);
    (void)lb::conf::to_string(l.proxy_protocol);
  }
  for (const auto& p : cfg.pools) {
    FUZZ_CHECK(!p.backends.empty());
    std::set<std::string> ids;
    for (const auto& b : p.backends) {
      FUZZ_CHECK(!b.id.empty());
      FUZZ_CHECK(ids.insert(b.id).second);
      FUZZ_CHECK(b.weight <= 1000);
      FUZZ_CHECK(b.address.port() != 0);
      check_endpoint(b.address);
    }
    FUZZ_CHECK(p.hash_balance_factor == 0 || p.hash_balance_factor > 100);
    (void)lb::conf::to_string(p.selector);
    (void)lb::conf::to_string(p.hash_key);
    (void)lb::conf::to_string(p.health_check.type);
  }
  if (cfg.admin.listen) check_endpoint(*cfg.admin.listen);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lb::conf::set_resolver_for_testing(&fake_resolve);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = "fuzz.toml";
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_result(lb::conf::load_string(text, path), path);
  return 0;
}
