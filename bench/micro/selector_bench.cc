// Micro-benchmarks of backend selection: pick cost per selector and lookup
// table build time. Run: lb_micro_bench "[select]" (Release build).
#include <catch2/catch.hpp>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include <netinet/in.h>

#include "conf/config.h"
#include "core/backend.h"
#include "core/backend_table.h"
#include "core/hash/flow_hash.h"
#include "core/hash/hash.h"
#include "core/hash/prng.h"
#include "core/select/maglev.h"
#include "core/select/ring_hash.h"
#include "core/select/selector.h"

using namespace lb::core;
using lb::conf::SelectorKind;

namespace {

struct BenchPool {
  std::vector<BackendPtr> backends;
  PoolTable table;

  BenchPool(size_t n, SelectorKind kind, unsigned balance_factor = 0, bool weighted = false) {
    lb::hash::Xoshiro256 rng(n);
    for (size_t i = 0; i < n; ++i) {
      lb::conf::Backend c;
      c.id = "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256) + ":8080";
      c.weight = weighted ? 1 + static_cast<unsigned>(rng.below(5)) : 1;
      backends.push_back(std::make_shared<Backend>("bench", c));
      // Some load, so least-loaded comparisons do real work.
      backends.back()->active = static_cast<int64_t>(rng.below(100));
      table.candidates.push_back({backends.back().get(), c.weight});
    }
    table.name = "bench";
    table.selector = kind;
    table.hash_balance_factor = balance_factor;
    table.backends = backends;
    table.lookup = build_lookup_table(kind, table.candidates);
  }
};

// Flow hashes of 4096 distinct clients, so table lookups miss cache as a
// busy proxy's would.
const std::array<uint64_t, 4096>& client_hashes() {
  static const auto hashes = [] {
    std::array<uint64_t, 4096> h{};
    for (uint32_t i = 0; i < h.size(); ++i) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(0x0a000000u + i * 2654435761u % (1u << 24));
      a.sin_port = htons(static_cast<uint16_t>(1024 + i));
      h[i] = lb::hash::flow_hash(reinterpret_cast<const sockaddr*>(&a), true);
    }
    return h;
  }();
  return hashes;
}

void bench_picks(const char* name, SelectorKind kind, unsigned balance_factor = 0) {
  for (size_t n : {size_t{10}, size_t{100}}) {
    BenchPool pool(n, kind, balance_factor, /*weighted=*/true);
    auto selector = make_selector(pool.table, 1);
    const auto& hashes = client_hashes();
    size_t i = 0;
    BENCHMARK(std::string(name) + " pick, " + std::to_string(n) + " backends") {
      PickContext ctx;
      ctx.hash = hashes[i++ & 4095];
      return selector->pick(ctx);
    };
  }
}

}  // namespace

TEST_CASE("selector pick cost", "[select][pick]") {
  bench_picks("round_robin", SelectorKind::RoundRobin);
  bench_picks("least_connections", SelectorKind::LeastConnections);
  bench_picks("random_two", SelectorKind::RandomTwo);
  bench_picks("ring_hash", SelectorKind::RingHash);
  bench_picks("maglev", SelectorKind::Maglev);
  bench_picks("ring_hash bounded 125", SelectorKind::RingHash, 125);
  bench_picks("maglev bounded 125", SelectorKind::Maglev, 125);
}

TEST_CASE("flow hash cost", "[select][hash]") {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr.s6_addr[0] = 0x20;
  a.sin6_addr.s6_addr[15] = 1;
  sockaddr_in b{};
  b.sin_family = AF_INET;
  b.sin_addr.s_addr = htonl(0x0a000001);
  uint16_t port = 0;
  BENCHMARK("flow_hash IPv4 source_ip_port") {
    b.sin_port = port++;
    return lb::hash::flow_hash(reinterpret_cast<const sockaddr*>(&b), true);
  };
  BENCHMARK("flow_hash IPv6 source_ip_port") {
    a.sin6_port = port++;
    return lb::hash::flow_hash(reinterpret_cast<const sockaddr*>(&a), true);
  };
}

TEST_CASE("lookup table build time", "[select][build]") {
  for (size_t n : {size_t{10}, size_t{100}, size_t{1000}}) {
    BenchPool pool(n, SelectorKind::RoundRobin);  // candidates only
    BENCHMARK("maglev build, " + std::to_string(n) + " backends") {
      return MaglevTable::build(pool.table.candidates);
    };
  }
  {
    BenchPool pool(100, SelectorKind::RoundRobin, 0, /*weighted=*/true);
    BENCHMARK("maglev build, 100 backends, weights 1-5") {
      return MaglevTable::build(pool.table.candidates);
    };
  }
  for (size_t n : {size_t{10}, size_t{100}, size_t{1000}}) {
    BenchPool pool(n, SelectorKind::RoundRobin);
    BENCHMARK("ring_hash build, " + std::to_string(n) + " backends") {
      return RingHashTable::build(pool.table.candidates);
    };
  }
}
