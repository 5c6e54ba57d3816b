// Server: wires configuration, workers, the health checker, the control
// plane and the admin API together, and owns the process lifecycle (start,
// reload on SIGHUP, graceful stop on SIGTERM/SIGINT, SIGUSR1).
//
// A reload is a transaction of named steps, each started by the previous
// one's completion on the main loop (nothing in it blocks the loop):
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
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"
#include "core/access_log.h"
#include "core/admin/http_server.h"
#include "core/control.h"
#include "core/handover/state.h"
#include "core/worker.h"
#include "lb/resolver.h"
#include "lb/systemd.h"

namespace lb::health {
class HealthChecker;
}

namespace lb::app {

class HealthBridge;

class Server {
 public:
  explicit Server(conf::Config config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds, starts every thread and runs until stopped. Returns the process
  // exit code (0 after a graceful stop, 1 on a start-up error).
  int run();

  // --- for the admin API (main thread) ---
  const conf::Config& config() const { return config_; }
  uint64_t generation() const { return generation_; }
  bool draining() const { return draining_; }
  uint64_t reloads_ok() const { return reloads_ok_; }
  uint64_t reloads_error() const { return reloads_error_; }
  const std::vector<core::ListenerRuntimePtr>& listeners() const { return listeners_; }
  core::ControlPlane& control() { return *control_; }
  // Access-log lines dropped because the writer fell behind (0 when off).
  // Main loop only (the access log is replaced there).
  uint64_t access_log_dropped() const { return access_log_ ? access_log_->dropped() : 0; }
  uint64_t upgrades_ok() const { return upgrades_ok_; }
  uint64_t upgrades_refused() const { return upgrades_refused_; }

  // Upgrade in place (SIGUSR2, POST /api/v1/upgrade; docs/upgrade.md):
  // checks the program now at the path lb was started from, then starts it
  // with the hand-over. "" when it started (the outcome follows
  // asynchronously: the new program serves and this one leaves, or the
  // refusal is logged and counted); otherwise why it was refused (logged
  // and counted too), and nothing changed.
  std::string upgrade();
  // This process takes over from a running lb: the hand-over arrives on
  // `fd` (lb --handover-fd). Call before run().
  void set_handover_fd(int fd) { handover_fd_ = fd; }

 private:
  struct Bound {
    int protocol_type;   // SOCK_STREAM / SOCK_DGRAM
    std::string actual;  // address with the real port
    sockaddr_storage addr{};
    socklen_t len = 0;
    bool single_worker = false;  // an inherited UDP socket: worker 0 only
  };
  // Listening sockets opened for binds that had none. Owns the descriptors
  // until post_listeners() hands them to the workers; whatever is left is
  // closed on destruction (a failed start or an aborted reload).
  struct NewSockets {
    std::map<std::string, std::vector<int>> fds;  // bind key -> one per worker (or kNotOnWorker)
    std::map<std::string, Bound> bound;
    NewSockets() = default;
    NewSockets(NewSockets&& o) noexcept { *this = std::move(o); }
    NewSockets& operator=(NewSockets&& o) noexcept;
    ~NewSockets() { close(); }
    void close();
  };
  struct Reload;   // a reload in progress (server.cc)
  struct Upgrade;  // an upgrade in progress: the new program and its channel

  bool start();
  std::unique_ptr<admin::HttpServer> make_admin_server();
  // Every bind of `cfg` that has no socket yet; nullopt (error logged,
  // nothing left open) when one cannot be opened.
  std::optional<NewSockets> bind_listeners(const conf::Config& cfg);
  std::vector<core::ListenerRuntimePtr> make_runtimes(const conf::Config& cfg);
  void post_listeners(const conf::Config& cfg, NewSockets& fresh);
  // The reload steps (see the top of this file).
  void reload();
  void reload_resolve();
  void reload_open();
  void reload_probe();
  void reload_commit();
  void reload_abort(const std::vector<std::string>& errors);
  void reload_finished();
  void warn_restart_settings(const conf::Config& next);
  void match_inherited(const conf::Config& cfg);
  void begin_stop();
  void stop_accepting();
  void check_drained();
  void finish_stop();
  void health_targets(const std::vector<core::ControlPlane::PoolBackends>& pools);
  void start_watchdog();
  // The new program's side: receive and apply the hand-over (false, with
  // the reason sent back, when it cannot), then report that it serves.
  bool take_over();
  void took_over();
  // The old program's side.
  void upgrade_refused(const std::string& reason);
  void upgrade_reply();
  void handed_over(const std::string& reply);
  void end_upgrade();
  void close_held();
  // File descriptor store: every socket of `fresh` that lb bound itself
  // goes to systemd, named after its listener.
  void store_listener_fds(const conf::Config& cfg, const NewSockets& fresh);
  systemd::InheritedSocket* inherited_for(const conf::Listener& l, const conf::Endpoint& e);

  static std::string bind_key(const conf::Listener& l, const conf::Endpoint& e);
  static void on_signal(uv_signal_t* s, int signum);

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
  std::map<std::string, Bound> bound_;                                 // bind key -> socket facts
  std::map<std::string, std::shared_ptr<core::ListenerStats>> stats_;  // by listener name
  std::vector<core::ListenerRuntimePtr> listeners_;
  std::vector<uv_signal_t*> signals_;
  systemd::Notifier notifier_;
  std::vector<systemd::InheritedSocket> inherited_;  // socket activation (LISTEN_FDS)
  // bind key -> its inherited sockets: one per worker when a previous lb
  // stored (or handed over) its SO_REUSEPORT group, else the one systemd bound
  std::map<std::string, std::vector<systemd::InheritedSocket*>> activated_;
  // A copy of every listening socket the workers have (bind key -> one per
  // worker, -1 where a worker has none), for an upgrade to hand over.
  std::map<std::string, std::vector<int>> held_;
  std::string exe_path_;  // the program lb was started from (upgrade target)
  int handover_fd_ = -1;  // new program: the channel from the old one
  std::unique_ptr<Upgrade> upgrade_;
  std::optional<core::handover::HandoverState> handover_;  // new program: what it took over
  std::vector<int> handover_fds_;                          // ... and the descriptors it came with
  size_t handover_first_ = 0;                              // inherited_ from here on: handed over
  uint64_t upgrades_ok_ = 0;
  uint64_t upgrades_refused_ = 0;
  bool handed_over_ = false;  // old program: the new one serves, this one drains and leaves
  uv_timer_t* watchdog_timer_ = nullptr;
  uv_timer_t* tick_timer_ = nullptr;    // slow-start ramps
  uv_timer_t* stop_timer_ = nullptr;    // drain_delay, then polling for drained workers
  uv_timer_t* reload_timer_ = nullptr;  // a reload waiting for first probes
  std::unique_ptr<Reload> reload_;      // the reload in progress
  bool reload_again_ = false;           // SIGHUP during a reload: another one follows
  std::unique_ptr<HostResolver> resolver_;
  std::string running_user_;  // [global] user as applied at start
  uint64_t stop_deadline_ = 0;
  uint64_t generation_ = 0;
  uint64_t reloads_ok_ = 0;
  uint64_t reloads_error_ = 0;
  bool draining_ = false;
  bool accepting_stopped_ = false;
  bool stopped_ = false;
  // A loop ended with a handle still open (a bug): run() returns 1, so every
  // test that stops lb and checks its exit status catches the leak.
  bool leaked_handles_ = false;
  bool loop_closed_ = false;
};

}  // namespace lb::app
