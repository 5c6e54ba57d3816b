// Backend: one server of a pool, shared by every thread.
//
// Identity (pool, id, address) is immutable after construction. A Backend
// object survives reloads for as long as a backend with the same pool, id and
// address exists: a reload that changes its weight, backup or max_connections
// updates those settings in place (relaxed atomics, written by the control
// plane when a reload commits), so its live counters, health and admin state
// carry over and the sessions it already has keep counting against its limit.
// A reload that points an id at another address makes a new object (another
// server: probed before it takes traffic); it continues the old one's
// cumulative counters (ControlPlane::stage), while `active` counts the
// connections to the new address only.
//
// The live counters are relaxed atomics updated by every worker
// (least-connections, limits and bounded loads count connections of all
// workers together); they are read by the admin thread for metrics.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "conf/config.h"

namespace lb::core {

struct Backend : std::enable_shared_from_this<Backend> {
  Backend(std::string pool_name, const conf::Backend& c)
      : pool(std::move(pool_name)),
        id(c.id),
        address(c.address),
        weight(c.weight),
        backup(c.backup),
        max_connections(c.max_connections) {}
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  const std::string pool;
  const std::string id;  // stable name: hashing, metrics, admin API
  const conf::Endpoint address;
  // Settings a reload may change (ControlPlane only writes them).
  std::atomic<uint32_t> weight;  // configured weight; the table holds the effective one
  std::atomic<bool> backup;
  std::atomic<uint64_t> max_connections;  // 0 = unlimited

  // True when a new connection must pass this backend over (max_connections).
  bool full() const {
    const uint64_t limit = max_connections.load(std::memory_order_relaxed);
    return limit != 0 && static_cast<uint64_t>(active.load(std::memory_order_relaxed)) >= limit;
  }

  // Live counters, all workers together.
  std::atomic<int64_t> active{0};  // open connections / live UDP sessions
  std::atomic<uint64_t> total{0};  // connections / sessions ever sent here
  std::atomic<uint64_t> connect_failures{0};
  std::atomic<uint64_t> bytes_to_backend{0};
  std::atomic<uint64_t> bytes_to_client{0};
  std::atomic<uint64_t> checks_pass{0};  // health probes
  std::atomic<uint64_t> checks_fail{0};
  // Connect failures/resets in a row seen by workers (passive health); a
  // success resets it. Lets workers skip reporting successes when it is 0.
  std::atomic<uint32_t> consecutive_failures{0};

  // The latest active probe's verdict, for the admin API. Written by the
  // health thread after every probe, read by the main thread; a mutex because
  // the reason is a string, and neither side is on the data path.
  struct CheckResult {
    bool pass = false;
    std::string detail;  // the probe's reason: "tcp connect ok", "connect: connection refused"
    std::chrono::steady_clock::time_point at{};
  };
  void record_check(bool pass, std::string detail) {
    std::lock_guard lk(check_mu_);
    last_check_ = CheckResult{pass, std::move(detail), std::chrono::steady_clock::now()};
  }
  // std::nullopt until the first probe has finished.
  std::optional<CheckResult> last_check() const {
    std::lock_guard lk(check_mu_);
    return last_check_;
  }

 private:
  mutable std::mutex check_mu_;
  std::optional<CheckResult> last_check_;
};

using BackendPtr = std::shared_ptr<Backend>;

}  // namespace lb::core
