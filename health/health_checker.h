// HealthChecker: active probes and passive ejection for every backend, on a
// thread of its own with its own libuv loop.
//
// Threads:
//   - The health thread (started by start()) owns every probe, timer and
//     per-backend state, and is the only thread that calls the HealthSink.
//   - set_targets(), report(), wait_initial(), start() and stop() may be
//     called from any other thread. set_targets() hands a full target list to
//     the health thread through a latest-wins slot (only the newest list
//     matters); report() appends to a small mutex-protected batch that the
//     health thread swaps out. Both wake the loop with uv_async_send, which
//     libuv coalesces.
//   - The sink is called without any checker lock held, so it may call
//     report() or set_targets().
//
// Identity: a target is its Backend object. The same BackendPtr in a later
// set_targets() keeps its state (rise/fall streaks, ejection); a new one is
// probed at once and reported when its first result is in; a removed one
// stops being probed (in-flight probes are cancelled) and is never reported
// again.
//
// Signals: probes write with libuv (write(2)), so the process must ignore
// SIGPIPE (lb does at start) or a backend resetting a probe kills it.
//
// What the sink hears, per backend: the first result (also for type "none":
// up at once), then every change of the effective state, where effective =
// probe state is up AND not ejected by passive health.
#pragma once

#include <uv.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "conf/config.h"
#include "core/backend.h"
#include "core/tls/client_context.h"
#include "core/uv_ptr.h"
#include "health/hysteresis.h"
#include "health/probe.h"
#include "health/tls_probe.h"

namespace lb::health {

class HealthSink {
 public:
  virtual ~HealthSink() = default;
  // Health thread only. `reason` is the probe's (e.g. "connect: connection
  // refused", "http status 500"), or "ejected" / "ejection ended" for passive
  // health, "no health check" for type none.
  virtual void on_health(const core::Backend& backend, bool up, const std::string& reason) = 0;
};

class HealthChecker {
 public:
  struct Target {
    core::BackendPtr backend;
    conf::HealthCheck check;
    conf::Outlier outlier;
    // tls probes of a pool with [pool.tls]: its client context (verification,
    // client certificate) and the server name to send and verify. Null: the
    // checker's own context, no verification, check.tls_sni.
    std::shared_ptr<const tls::ClientContext> tls;
    std::string tls_name;
  };

  // The sink must outlive the checker (or at least stop()).
  explicit HealthChecker(HealthSink& sink);
  ~HealthChecker();  // stop()
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Starts the health thread; call once. Throws std::runtime_error when the
  // loop or the TLS context cannot be created (a start-up error).
  void start();
  // Cancels every probe, closes every handle and joins the thread. Never call
  // it from the sink (the health thread would join itself). Returns
  // true when the loop closed with no handle left (uv_loop_close == 0).
  // Idempotent; later calls return the first result.
  bool stop();

  // Replaces the whole target list (start-up and every reload).
  void set_targets(std::vector<Target> targets);

  // Passive health from a worker: a connection to `backend` succeeded or
  // failed (connect failure/reset). Cheap: a short lock and, for the first
  // report of a batch, one uv_async_send.
  void report(const core::BackendPtr& backend, bool success);

  // Blocks until every target of the latest set_targets() has had its first
  // result, or the deadline passes (false) or the checker stops (false).
  bool wait_initial(std::chrono::milliseconds deadline);

 private:
  struct State;  // one target, health thread only

  static void on_wake(uv_async_t* a);
  static void on_probe_timer(uv_timer_t* t);
  static void on_ejection_timer(uv_timer_t* t);

  void run();
  void apply_targets(std::vector<Target> targets, uint64_t generation);
  void apply_report(const core::BackendPtr& backend, bool success);
  void start_probe(State& s);
  void on_probe_result(State& s, bool pass, const std::string& reason);
  void schedule_probe(State& s, std::chrono::milliseconds delay);
  // Tells the sink when the effective state differs from what it last heard
  // (or was never told).
  void publish(State& s, const std::string& reason);
  void first_result_done();
  void shutdown_loop();

  HealthSink& sink_;

  // Set in start(), used by the health thread; uv_loop_close'd by it at exit.
  std::unique_ptr<uv_loop_t> loop_;
  uv_async_t* wake_ = nullptr;  // owned by wake_owner_ on the health thread
  UvPtr<uv_async_t> wake_owner_;
  SslCtxPtr tls_;
  std::thread thread_;

  // Health-thread state.
  std::unordered_map<const core::Backend*, std::unique_ptr<State>> states_;

  // Cross-thread state, under mu_.
  std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false;  // wake_ may be signalled
  bool stop_requested_ = false;
  bool stopped_ = false;  // the thread has finished (or never started)
  std::optional<bool> stop_result_;
  std::optional<std::vector<Target>> pending_targets_;
  uint64_t requested_generation_ = 0;  // set_targets() calls so far
  uint64_t applied_generation_ = 0;    // the newest one the thread applied
  size_t awaiting_first_ = 0;          // targets of applied_generation_ without a result

  // Passive reports, under report_mu_ (kept apart from mu_ so workers never
  // wait behind a set_targets() copy).
  std::mutex report_mu_;
  bool accept_reports_ = false;
  std::vector<std::pair<core::BackendPtr, bool>> reports_;
  // Health thread: the previous batch's storage, swapped back into reports_
  // so that workers rarely allocate under report_mu_.
  std::vector<std::pair<core::BackendPtr, bool>> spare_reports_;
};

}  // namespace lb::health
