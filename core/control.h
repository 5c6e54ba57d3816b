// ControlPlane: the state behind the BackendTable, and its publisher.
//
// Holds, per pool of the current configuration, every Backend with its
// health (from the health thread), admin state and weight override (from
// the admin API). Every change builds a new immutable BackendTable (with the
// hash selectors' lookup tables) and hands it to the publish callback, which
// puts it in each worker's latest-wins mailbox.
//
// Thread-safe: called from the main thread (reload, admin API) and the health
// thread (transitions). One mutex serialises changes so tables are published
// in version order; it is never taken on the data path.
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "conf/config.h"
#include "core/backend_table.h"

namespace lb::core {

class ControlPlane {
 public:
  using Publisher = std::function<void(BackendTablePtr)>;
  explicit ControlPlane(Publisher publish);

  // Per pool (in config order), its Backend objects: the health targets.
  struct PoolBackends {
    const conf::Pool* pool;
    std::vector<BackendPtr> backends;
  };

  // A reload in two steps, so that nothing changes for traffic until every
  // part of the reload is ready:
  //  - stage(): the Backend objects of a new configuration, returned as the
  //    health targets, but not installed (the current table keeps serving).
  //    A backend with the same pool, id and address as before is the same
  //    object (its new weight, backup and max_connections are applied at
  //    commit); another address is a new object that continues the old one's
  //    cumulative counters and admin state. A new object starts down when
  //    its pool is health checked (its first probe decides) and up otherwise;
  //    set_health() already records its first result while staged.
  //  - commit_staged(): installs it and publishes; every kept backend takes
  //    its live state (health, drain, weight override) as it is by then.
  //  - drop_staged(): forgets it (an aborted reload).
  // A second stage() replaces the first.
  std::vector<PoolBackends> stage(const conf::Config& cfg);
  void commit_staged();
  void drop_staged();
  // stage() and commit_staged() at once (start-up).
  std::vector<PoolBackends> apply(const conf::Config& cfg);

  // From the health thread: probe state (or passive ejection) changed. A
  // backend that comes back up in a pool with slow_start ramps its weight up.
  void set_health(const Backend& b, bool up);

  // Advances slow-start ramps (call a few times a second); publishes a new
  // table only while some backend is ramping. Returns whether one is.
  bool tick();

  enum class Status { Ok, NoPool, NoBackend };
  Status set_drain(const std::string& pool, const std::string& id, bool drain);
  Status set_weight(const std::string& pool, const std::string& id, unsigned weight);

  struct BackendView {
    BackendPtr backend;
    bool up = false;
    bool drain = false;
    uint32_t weight = 0;  // effective configured weight (admin override included)
  };
  struct PoolView {
    std::string name;
    conf::SelectorKind selector;
    bool has_digest = false;
    uint64_t digest = 0;
    std::vector<BackendView> backends;  // config order
  };
  // A consistent copy for the admin API and /metrics.
  std::vector<PoolView> snapshot() const;
  BackendTablePtr current() const;

 private:
  struct BackendState {
    BackendPtr backend;
    conf::Backend cfg;         // settings of its generation (written to backend at commit)
    bool up = false;
    bool drain = false;
    int weight_override = -1;  // -1: use the configured weight
    bool seen_up = false;      // has been up before (the first result never ramps)
    std::chrono::steady_clock::time_point ramp_start{};  // slow start began
    bool ramping = false;
    uint32_t weight() const {
      return weight_override >= 0 ? static_cast<uint32_t>(weight_override) : cfg.weight;
    }
  };
  struct PoolState {
    conf::Pool cfg;
    std::vector<BackendState> backends;  // config order
  };

  BackendState* find(const std::string& pool, const std::string& id, Status* st);
  std::vector<PoolState> stage_locked(const conf::Config& cfg) const;
  static std::vector<PoolBackends> targets_of(const conf::Config& cfg, const std::vector<PoolState>& pools);
  void commit_locked();
  template <class F>
  void for_staged(const std::string& pool, const std::string& id, F&& f);
  void rebuild_locked();

  Publisher publish_;
  mutable std::mutex mu_;
  std::vector<PoolState> pools_;
  std::vector<PoolState> staged_;  // a reload's pools until commit_staged()
  bool has_staged_ = false;
  BackendTablePtr current_;
  uint64_t version_ = 0;
};

}  // namespace lb::core
