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

struct ListenerTotals {
  uint64_t connections = 0;
  int64_t active = 0;
  uint64_t rejected_acl = 0;
  uint64_t rejected_limit = 0;
  uint64_t rejected_no_backend = 0;
  uint64_t rejected_proxy = 0;  // missing, malformed or late PROXY header
  uint64_t rejected_tls = 0;    // no valid ClientHello in time, failed handshake
  uint64_t tls_ok = 0;          // terminate: handshakes finished
  uint64_t tls_failed = 0;      // terminate: handshakes failed
  uint64_t tls_timeout = 0;     // terminate: not finished within tls_handshake_timeout
  uint64_t datagrams_in = 0;
  uint64_t datagrams_out = 0;
};

class ListenerStats {
 public:
  struct alignas(64) Slot {
    std::atomic<uint64_t> connections{0};
    std::atomic<int64_t> active{0};
    std::atomic<uint64_t> rejected_acl{0};
    std::atomic<uint64_t> rejected_limit{0};
    std::atomic<uint64_t> rejected_no_backend{0};
    std::atomic<uint64_t> rejected_proxy{0};
    std::atomic<uint64_t> rejected_tls{0};  // TLS listeners: no valid ClientHello in time, failed handshake
    std::atomic<uint64_t> tls_ok{0};
    std::atomic<uint64_t> tls_failed{0};
    std::atomic<uint64_t> tls_timeout{0};
    std::atomic<uint64_t> datagrams_in{0};
    std::atomic<uint64_t> datagrams_out{0};
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
      t.connections += s.connections.load(r);
      t.active += s.active.load(r);
      t.rejected_acl += s.rejected_acl.load(r);
      t.rejected_limit += s.rejected_limit.load(r);
      t.rejected_no_backend += s.rejected_no_backend.load(r);
      t.rejected_proxy += s.rejected_proxy.load(r);
      t.rejected_tls += s.rejected_tls.load(r);
      t.tls_ok += s.tls_ok.load(r);
      t.tls_failed += s.tls_failed.load(r);
      t.tls_timeout += s.tls_timeout.load(r);
      t.datagrams_in += s.datagrams_in.load(r);
      t.datagrams_out += s.datagrams_out.load(r);
    }
    return t;
  }

 private:
  unsigned n_;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace lb::core
