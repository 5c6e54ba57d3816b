// ControlPlane: the state behind the BackendTable, and its publisher.
//
// Holds, per pool of the current configuration, every Backend with its
// health (from the health thread), admin state and weight override (from
// the admin API). Every change builds a new immutable BackendTable and hands
// it to the publish callback, which puts it in each worker's latest-wins
// mailbox. Only the pools the change touched get a new PoolTable (and hash
// lookup table); the others' PoolTable objects are shared with the previous
// BackendTable, and a change no worker would see publishes nothing.
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
#include "core/handover/state.h"

namespace lb::core {

class ControlPlane {
 public:
  using Publisher = std::function<void(BackendTablePtr)>;
  // Slow start reads the time from `clock` (tests step it by hand); empty:
  // std::chrono::steady_clock::now.
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  explicit ControlPlane(Publisher publish, Clock clock = {});

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
  // A second stage() replaces the first. `tls` (the configuration's
  // contexts, null without TLS) is published with the pools, in every table.
  std::vector<PoolBackends> stage(const conf::Config& cfg,
                                  std::shared_ptr<const tls::Contexts> tls = nullptr);
  void commit_staged();
  void drop_staged();
  // stage() and commit_staged() at once (start-up).
  std::vector<PoolBackends> apply(const conf::Config& cfg,
                                  std::shared_ptr<const tls::Contexts> tls = nullptr);

  // From the health thread: probe state (or passive ejection) changed. A
  // backend that comes back up in a pool with slow_start ramps its weight up.
  void set_health(const Backend& b, bool up);

  // Advances slow-start ramps (call a few times a second); publishes a new
  // table, with new tables for the ramping pools only, while some backend is
  // ramping and its weight moved. Returns whether one is ramping.
  bool tick();

  enum class Status { Ok, NoPool, NoBackend };
  Status set_drain(const std::string& pool, const std::string& id, bool drain);
  Status set_weight(const std::string& pool, const std::string& id, unsigned weight);

  // Upgrade hand-over. save(): every backend's health, admin state, weight
  // override, slow-start progress and counters. restore(): applies them to
  // the installed backends of the same pool and id (others are left alone)
  // and adds the counters to theirs, so no counter goes back; publishes.
  std::vector<handover::BackendState> save() const;
  void restore(const std::vector<handover::BackendState>& saved);

  struct BackendView {
    BackendPtr backend;
    bool up = false;
    bool drain = false;
    uint32_t weight = 0;  // effective configured weight (admin override included)
    // The weight in force now: `weight`, scaled down while slow start ramps
    // it up (not rounded: 0.35 is a weight of 1 at 35% of its ramp). Health
    // and drain do not change it; they decide whether it is used at all.
    double effective_weight = 0;
  };
  struct PoolView {
    std::string name;
    conf::SelectorKind selector;
    conf::HealthType health_type = conf::HealthType::None;
    bool has_digest = false;
    uint64_t digest = 0;
    std::vector<BackendView> backends;  // config order
  };
  // A consistent copy for the admin API and /metrics.
  std::vector<PoolView> snapshot() const;
  BackendTablePtr current() const;

  // What publishing has cost so far: tables published, pool tables built,
  // and hash lookup tables (Maglev, ring) built among them.
  struct BuildStats {
    uint64_t publishes = 0;
    uint64_t pool_tables = 0;
    uint64_t lookup_tables = 0;
  };
  BuildStats build_stats() const;

 private:
  struct BackendState {
    BackendPtr backend;
    conf::Backend cfg;  // settings of its generation (written to backend at commit)
    bool up = false;
    bool drain = false;
    int weight_override = -1;                            // -1: use the configured weight
    bool seen_up = false;                                // has been up before (the first result never ramps)
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
  Clock clock_;
  mutable std::mutex mu_;
  std::vector<PoolState> pools_;
  std::vector<PoolState> staged_;  // a reload's pools until commit_staged()
  bool has_staged_ = false;
  std::shared_ptr<const tls::Contexts> tls_, staged_tls_;
  BackendTablePtr current_;
  uint64_t version_ = 0;
  BuildStats stats_;
};

}  // namespace lb::core
