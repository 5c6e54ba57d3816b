// Server: wires configuration, workers, the health checker, the control
// plane and the admin API together, and owns the process lifecycle (start,
// reload on SIGHUP, graceful stop on SIGTERM/SIGINT, SIGUSR1, upgrade on SIGUSR2). It only wires:
// sockets are opened by lb/listen_sockets.h, the admin API answers through
// AdminControl (lb/admin_api.h), everything else lives in core/ and health/.
//
// Start (server.cc) is a list of named steps, each returning whether the
// process can go on: process limits, access log, threads and control plane,
// listening sockets, admin listener, privilege drop, health checker and first
// probes, workers, signals and timers.
//
// An upgrade in place (server_upgrade.cc; docs/upgrade.md) starts the
// program now on disk with a versioned hand-over (core/handover/): the
// listening sockets, the admin listener, counters and backend state. Once
// the new program serves, this one stops accepting and drains.
//
// A reload (server_reload.cc) is a transaction of named steps, each started
// by the previous one's completion on the main loop (nothing in it blocks the
// loop):
//   prepare:  load (parse + validate)  ->  resolve backend host names
//             (HostResolver, bounded)  ->  open (bind every new listening
//             socket, a moved admin listener, a new access log file)  ->
//             stage backends and wait for the first probe of every new one
//             (bounded by the pools' probe timeouts);
//   commit:   install backends, listeners, admin, access log, settings;
//   abort:    on any failure before commit, close everything prepared; the
//             running configuration never saw any of it.
//
// Thread: everything here runs on the main thread's loop, except what the
// ControlPlane, HealthChecker and Workers document as thread-safe.
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"
#include "core/access_log.h"
#include "core/admin/http_server.h"
#include "core/control.h"
#include "core/handover/state.h"
#include "core/tls/ticket_keys.h"
#include "core/uv_ptr.h"
#include "core/worker.h"
#include "lb/admin_control.h"
#include "lb/listen_sockets.h"
#include "lb/resolver.h"
#include "lb/systemd.h"

namespace lb::health {
class HealthChecker;
}

namespace lb::app {

class HealthBridge;

class Server final : public AdminControl {
 public:
  explicit Server(conf::Config config);
  ~Server() override;
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds, starts every thread and runs until stopped. Returns the process
  // exit code (0 after a graceful stop, 1 on a start-up error).
  int run();

  // --- AdminControl (main thread) ---
  const conf::Config& config() const override { return config_; }
  uint64_t generation() const override { return generation_; }
  bool draining() const override { return draining_; }
  uint64_t reloads_ok() const override { return reloads_ok_; }
  uint64_t reloads_error() const override { return reloads_error_; }
  const std::vector<core::ListenerRuntimePtr>& listeners() const override { return listeners_; }
  core::ControlPlane& control() override { return *control_; }
  // Main loop only (the access log is replaced there). The previous
  // programs' drops (an upgrade's hand-over) are the base.
  uint64_t access_log_dropped() const override {
    return access_log_dropped_base_ + (access_log_ ? access_log_->dropped() : 0);
  }
  uint64_t upgrades_ok() const override { return upgrades_ok_; }
  uint64_t upgrades_refused() const override { return upgrades_refused_; }

  // Upgrade in place (SIGUSR2, POST /api/v1/upgrade; docs/upgrade.md):
  // checks the program now at the path lb was started from, then starts it
  // with the hand-over. "" when it started (the outcome follows
  // asynchronously: the new program serves and this one leaves, or the
  // refusal is logged and counted); otherwise why it was refused (logged
  // and counted too), and nothing changed.
  std::string upgrade() override;
  // This process takes over from a running lb: the hand-over arrives on
  // `fd` (lb --handover-fd). Call before run().
  void set_handover_fd(int fd) { handover_fd_ = fd; }
  // Test builds only (lb_crash): abort right after reporting SERVING, to
  // test what a new program that crashes after taking over leaves behind.
  void abort_after_takeover() { abort_after_takeover_ = true; }

 private:
  struct Reload;   // a reload in progress (server_reload.cc)
  struct Upgrade;  // an upgrade in progress: the new program and its channel (server_upgrade.cc)
  struct Move;     // old program: established connections being frozen and sent (server_moves.cc)

  // --- start steps (server.cc) ---
  bool start();
  void apply_process_limits();
  bool open_access_log();
  void make_threads();
  bool open_admin();
  bool drop_user();
  bool load_start_tls();
  bool start_health();
  void start_workers(OpenedSockets& fresh);
  void install_signals();
  void start_timers();
  void log_started() const;

  // --- shared by start and reload ---
  std::unique_ptr<admin::HttpServer> make_admin_server();
  std::vector<core::ListenerRuntimePtr> make_runtimes(const conf::Config& cfg,
                                                      const std::shared_ptr<const tls::Contexts>& tls);
  // Every certificate, key and CA file of `cfg`; null (errors in `errors`)
  // when one fails.
  std::shared_ptr<const tls::Contexts> load_tls(const conf::Config& cfg, std::vector<std::string>* errors);
  // Hands the new sockets to the workers (`fresh` gives them up) with the
  // listener set of `cfg`.
  void post_listeners(const conf::Config& cfg, OpenedSockets& fresh);
  void health_targets(const std::vector<core::ControlPlane::PoolBackends>& pools,
                      const std::shared_ptr<const tls::Contexts>& tls);
  conf::Duration longest_probe_timeout(const conf::Config& cfg) const;

  // --- reload steps (server_reload.cc; see the top of this file) ---
  void reload();
  void reload_resolve();
  void reload_open();
  bool reload_open_admin();
  bool reload_open_access_log();
  void reload_probe();
  void reload_commit();
  void announce_reload();
  void commit_listeners(const conf::Config& next, OpenedSockets& fresh);
  void commit_admin(const conf::Config& next);
  void commit_access_log(const conf::Config& next);
  void reload_abort(const std::vector<std::string>& errors);
  void reload_finished();
  void warn_restart_settings(const conf::Config& next) const;

  // --- upgrade steps (server_upgrade.cc) ---
  // The new program's side: receive the hand-over (false, with the reason
  // sent back, when it cannot), apply what it carried, drop the received
  // copies of the listening sockets once the workers have theirs, then
  // report that it serves.
  bool take_over();
  int take_admin_fd();  // the handed-over admin socket, -1 when none
  void restore_counters();
  void drop_handover_sockets();
  void took_over();
  // The old program's side.
  void upgrade_refused(const std::string& reason);
  void upgrade_reply();
  void handed_over(const std::string& reply);
  void end_upgrade();
  // --- moving established connections (server_moves.cc) ---
  // Old program, after SERVING: freeze rounds until nothing settles any
  // more (bounded), each round's sessions sent in batches, then DONE.
  void start_moving(int sock);
  void freeze_round();
  void frozen_arrived();
  void send_frozen(std::vector<core::FrozenSession>& sessions, std::vector<core::handover::UdpSession>& udp);
  // Every worker's UDP sessions, listed (before the state is sent).
  std::vector<core::handover::UdpSession> list_udp_sessions();
  // New program: the UDP sessions' backends, kept for their clients' next
  // datagram (core/udp/pins.h).
  void pin_udp_sessions(const std::vector<core::handover::UdpSession>& sessions);
  void end_moving();
  // New program: batches arrive on the channel until DONE or its end.
  void receive_moves(int sock);
  void moves_arrived();
  void end_moves_in();
  // Both: frozen sessions continue on this program's workers, spread
  // round-robin (a record whose listener or backend is unknown is reset).
  void resume_here(std::vector<core::FrozenSession> sessions);
  // held_: a copy of each socket handed to the workers.
  void hold_copies(const OpenedSockets& fresh);
  void forget_held_unbound();  // after a reload: binds no listener has any more
  void close_held();
  // File descriptor store: every socket of `fresh` that lb bound itself
  // goes to systemd, named after its listener.
  void store_listener_fds(const conf::Config& cfg, const OpenedSockets& fresh);
  // ... and a reload's removed listeners leave it.
  void remove_stored_fds(const conf::Config& next);

  // --- stop steps (server.cc) ---
  void begin_stop();
  void stop_accepting();
  void check_drained();
  void finish_stop();

  static void on_signal(uv_signal_t* s, int signum);
  // [global] workers, or one per CPU this process may run on.
  static unsigned configured_workers(const conf::Config& cfg);
  // The admin address as bound: the configured one with the real port.
  static std::string admin_address(const conf::Endpoint& configured, uint16_t port);

  conf::Config config_;
  uv_loop_t loop_;
  unsigned nworkers_ = 1;
  core::SharedState shared_;
  std::unique_ptr<core::ControlPlane> control_;
  std::vector<std::unique_ptr<core::Worker>> workers_;
  std::unique_ptr<core::AccessLog> access_log_;  // lives as long as the workers once made
  std::string access_log_target_;                // where access_log_ writes (even while off)
  std::unique_ptr<HealthBridge> health_bridge_;
  std::unique_ptr<health::HealthChecker> health_;
  std::unique_ptr<admin::HttpServer> admin_;
  BoundSockets bound_;                                                 // the workers' binds
  std::map<std::string, std::shared_ptr<core::ListenerStats>> stats_;  // by listener name
  std::vector<core::ListenerRuntimePtr> listeners_;
  // Session-ticket keys of every terminate listener and worker, for the
  // process's life (a reload keeps tickets valid).
  std::shared_ptr<tls::TicketKeyStore> ticket_keys_;
  std::shared_ptr<const tls::Contexts> tls_;  // the running generation's
  std::vector<UvPtr<uv_signal_t>> signals_;
  systemd::Notifier notifier_;
  SocketActivation activation_;
  UvPtr<uv_timer_t> watchdog_timer_;
  UvPtr<uv_timer_t> tick_timer_;    // slow-start ramps
  UvPtr<uv_timer_t> stop_timer_;    // drain_delay, then polling for drained workers
  UvPtr<uv_timer_t> reload_timer_;  // a reload waiting for first probes
  std::unique_ptr<Reload> reload_;  // the reload in progress
  bool reload_again_ = false;       // SIGHUP during a reload: another one follows
  // A committed reload waiting for every worker to use its listener set
  // before it counts (generation, reload counter, log line, READY=1).
  bool reload_announcing_ = false;
  uint64_t announce_deadline_ = 0;
  uint64_t listeners_posted_ = 0;  // seq of the last Listeners message posted
  std::unique_ptr<HostResolver> resolver_;
  std::string running_user_;  // [global] user as applied at start
  uint64_t stop_deadline_ = 0;
  uint64_t generation_ = 0;
  uint64_t reloads_ok_ = 0;
  uint64_t reloads_error_ = 0;
  // A copy of every listening socket the workers have (bind key -> one per
  // worker that serves it), for an upgrade to hand over.
  std::map<std::string, std::vector<int>> held_;
  std::string exe_path_;  // the program lb was started from (upgrade target)
  int handover_fd_ = -1;  // new program: the channel from the old one
  std::unique_ptr<Upgrade> upgrade_;
  std::unique_ptr<Move> move_;  // old program: connections being moved
  int moves_in_sock_ = -1;      // new program: the channel, until DONE
  UvPtr<uv_poll_t> moves_in_poll_;
  size_t moved_in_ = 0;                                    // new program: connections taken over
  UvPtr<uv_timer_t> pins_timer_;                           // new program: unused UDP pins expire
  size_t next_resume_worker_ = 0;                          // round-robin for resume_here()
  std::optional<core::handover::HandoverState> handover_;  // new program: what it took over
  std::vector<int> handover_fds_;                          // ... and the descriptors it came with
  size_t handover_first_ = 0;                              // activation_'s sockets from here on: handed over
  uint64_t upgrades_ok_ = 0;
  uint64_t upgrades_refused_ = 0;
  uint64_t access_log_dropped_base_ = 0;  // new program: the old one's count
  bool abort_after_takeover_ = false;
  bool handed_over_ = false;  // old program: the new one serves, this one drains and leaves
  bool draining_ = false;
  bool accepting_stopped_ = false;
  bool stopped_ = false;
  // A loop ended with a handle still open (a bug): run() returns 1, so every
  // test that stops lb and checks its exit status catches the leak.
  bool leaked_handles_ = false;
  bool loop_closed_ = false;
};

// What a reload prepared off to the side. Destroying it closes everything it
// opened: that is the abort.
struct Server::Reload {
  conf::Config config;
  std::optional<OpenedSockets> sockets;         // new listening sockets
  bool admin_changes = false;                   // [admin] listen added, moved or removed
  std::unique_ptr<admin::HttpServer> admin;     // listening at the new address
  std::unique_ptr<core::AccessLog> access_log;  // the first access log of this process
  int access_log_fd = -1;                       // the running log's new destination, when it moves
  uint64_t probe_deadline = 0;                  // loop time
  std::shared_ptr<const tls::Contexts> tls;     // every certificate, key and CA file, read again
  ~Reload();
};

// An upgrade in progress, on the old program's side (server_upgrade.cc).
struct Server::Upgrade {
  pid_t pid = -1;           // the new program
  UvPtr<uv_poll_t> poll;    // readable: the new program's reply
  UvPtr<uv_timer_t> timer;  // no reply in time
  int sock = -1;            // our end of the hand-over channel
};

// Established connections being moved, on the old program's side
// (server_moves.cc). Workers write the guarded part from their threads.
struct Server::Move {
  int sock = -1;            // the hand-over channel
  uint64_t started_ms = 0;  // loop time of the first round
  UvPtr<uv_async_t> async;  // a worker answered
  UvPtr<uv_timer_t> retry;  // the next round, while sessions settle
  std::mutex mu;            // guards the three below
  std::vector<core::FrozenSession> frozen;
  std::vector<core::handover::UdpSession> udp;
  unsigned answers = 0;   // this round's
  int64_t settling = 0;   // this round's
  size_t moved = 0;       // sent to the new program
  size_t kept = 0;        // their batch failed: resumed here
  bool udp_sent = false;  // the UDP records went with the first round
};

}  // namespace lb::app
