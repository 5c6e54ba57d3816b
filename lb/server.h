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
#include "core/tls/ticket_keys.h"
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
  struct Reload;  // a reload in progress (server.cc)

  bool start();
  std::unique_ptr<admin::HttpServer> make_admin_server();
  // Every bind of `cfg` that has no socket yet; nullopt (error logged,
  // nothing left open) when one cannot be opened.
  std::optional<NewSockets> bind_listeners(const conf::Config& cfg);
  std::vector<core::ListenerRuntimePtr> make_runtimes(const conf::Config& cfg,
                                                      std::shared_ptr<const tls::Contexts> tls);
  // Every certificate, key and CA file of `cfg`; null (errors logged or in
  // `errors`) when one fails.
  std::shared_ptr<const tls::Contexts> load_tls(const conf::Config& cfg, std::vector<std::string>* errors);
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
  void health_targets(const std::vector<core::ControlPlane::PoolBackends>& pools,
                      const std::shared_ptr<const tls::Contexts>& tls);
  void start_watchdog();
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
  // Session-ticket keys of every terminate listener and worker, for the
  // process's life (a reload keeps tickets valid).
  std::shared_ptr<tls::TicketKeyStore> ticket_keys_;
  std::shared_ptr<const tls::Contexts> tls_;  // the running generation's
  std::vector<uv_signal_t*> signals_;
  systemd::Notifier notifier_;
  std::vector<systemd::InheritedSocket> inherited_;             // socket activation (LISTEN_FDS)
  std::map<std::string, systemd::InheritedSocket*> activated_;  // bind key -> inherited socket
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
