// Listener counters, kept per worker without locks and summed on scrape.
//
// Each worker writes only its own cache-line-aligned slot (single writer, so
// a relaxed load+store is enough and there is no lock prefix on the hot
// path); the admin thread reads every slot with relaxed loads. ListenerStats
// objects are keyed by listener name and survive reloads.
//
// The listener's cross-worker limits live here too, because they need the
// same identity and lifetime: `open` (connections or sessions of this
// listener on every worker, for its max_connections) and `sources` (open
// connections per client IP, for max_connections_per_source). Both are
// touched once per connection, never per byte.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "core/source_limiter.h"

namespace lb::core {

// Single-writer increment: cheaper than fetch_add, correct only when one
// thread writes the counter.
template <typename T>
inline void bump(std::atomic<T>& a, T n = 1) {
  a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// Every counter of a listener, once: X(type, name). ListenerTotals holds them
// as plain numbers, a Slot as atomics, and sum() adds the slots up.
//   rejected_proxy  missing, malformed or late PROXY header
//   rejected_tls    TLS listeners: no valid ClientHello in time, failed handshake
//   tls_ok, tls_failed, tls_timeout
//                   terminate: handshakes finished, failed, not finished
//                   within tls_handshake_timeout
#define LB_LISTENER_COUNTERS(X)    \
  X(uint64_t, connections)         \
  X(int64_t, active)               \
  X(uint64_t, rejected_acl)        \
  X(uint64_t, rejected_limit)      \
  X(uint64_t, rejected_no_backend) \
  X(uint64_t, rejected_proxy)      \
  X(uint64_t, rejected_tls)        \
  X(uint64_t, tls_ok)              \
  X(uint64_t, tls_failed)          \
  X(uint64_t, tls_timeout)         \
  X(uint64_t, datagrams_in)        \
  X(uint64_t, datagrams_out)

struct ListenerTotals {
#define LB_TOTAL(type, name) type name = 0;
  LB_LISTENER_COUNTERS(LB_TOTAL)
#undef LB_TOTAL
};

class ListenerStats {
 public:
  struct alignas(64) Slot {
// A template argument cannot be parenthesized.
#define LB_SLOT(type, name) std::atomic<type> name{0};  // NOLINT(bugprone-macro-parentheses)
    LB_LISTENER_COUNTERS(LB_SLOT)
#undef LB_SLOT
  };

  explicit ListenerStats(unsigned workers) : n_(workers), slots_(new Slot[workers]) {}
  Slot& slot(unsigned worker) { return slots_[worker]; }

  // Counts one more open connection unless `limit` (0 = none) is reached.
  bool try_open(uint64_t limit) {
    int64_t now = open.fetch_add(1, std::memory_order_relaxed);
    if (limit == 0 || now < static_cast<int64_t>(limit)) return true;
    open.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  void close_one() { open.fetch_sub(1, std::memory_order_relaxed); }

  std::atomic<int64_t> open{0};
  SourceLimiter sources;
  // What a previous program counted before an upgrade handed over (added to
  // every sum, so counters never go back). Set on the main thread before
  // the workers start, read-only afterwards.
  ListenerTotals base;

  ListenerTotals sum() const {
    ListenerTotals t = base;
    t.active = 0;
    auto r = std::memory_order_relaxed;
    for (unsigned i = 0; i < n_; ++i) {
      const Slot& s = slots_[i];
#define LB_ADD(type, name) t.name += s.name.load(r);
      LB_LISTENER_COUNTERS(LB_ADD)
#undef LB_ADD
    }
    return t;
  }

 private:
  unsigned n_;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace lb::core
