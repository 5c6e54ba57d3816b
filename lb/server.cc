#include "lb/server.h"

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <ctime>
#include <stdexcept>

#include "core/descriptors.h"
#include "core/log.h"
#include "core/socket.h"
#include "core/tls/settings.h"
#include "health/health_checker.h"
#include "lb/admin_api.h"
#include "lb/privileges.h"
#include "lb/upgrade.h"

namespace lb::app {

using core::ListenerRuntime;
using core::ListenerRuntimePtr;

// Health thread -> control plane, plus the operational log line.
class HealthBridge : public health::HealthSink {
 public:
  explicit HealthBridge(core::ControlPlane& control) : control_(control) {}
  void on_health(const core::Backend& b, bool up, const std::string& reason) override {
    log::info("backend {} pool={} backend={} reason=\"{}\"", up ? "up" : "down", b.pool, b.id, reason);
    control_.set_health(b, up);
  }

 private:
  core::ControlPlane& control_;
};

namespace {

unsigned cpu_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

// Many connections need many descriptors: take the hard limit.
void raise_nofile(uint64_t max_connections) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  // Two descriptors per proxied connection, plus some for listeners and probes.
  if (rl.rlim_cur != RLIM_INFINITY && max_connections * 2 + 256 > rl.rlim_cur) {
    log::warn("open file limit too low for max_connections limit={} max_connections={}",
              static_cast<uint64_t>(rl.rlim_cur), max_connections);
  }
}

}  // namespace

std::string Server::admin_address(const conf::Endpoint& configured, uint16_t port) {
  conf::Endpoint ep = configured;
  reinterpret_cast<sockaddr_in*>(&ep.addr)->sin_port = htons(port);  // sin6_port: same offset
  return core::format_address(reinterpret_cast<sockaddr*>(&ep.addr));
}

unsigned Server::configured_workers(const conf::Config& cfg) {
  return cfg.global.workers ? cfg.global.workers : cpu_count();
}

Server::Server(conf::Config config) : config_(std::move(config)) {
  uv_loop_init(&loop_);
  exe_path_ = upgrade::own_executable();
  nworkers_ = configured_workers(config_);
}

Server::~Server() {
  // run() leaves nothing open; this only matters after a failed start.
  if (!loop_closed_) uv_loop_close(&loop_);
}

int Server::run() {
  if (!start()) {
    stopped_ = true;
    finish_stop();
    uv_run(&loop_, UV_RUN_DEFAULT);
    return 1;
  }
  uv_run(&loop_, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop_) != 0) {
    log::error("main loop has open handles at exit");
    leaked_handles_ = true;
  } else {
    loop_closed_ = true;
  }
  return leaked_handles_ ? 1 : 0;
}

// ---- start ------------------------------------------------------------------

bool Server::start() {
  apply_process_limits();
  if (handover_fd_ >= 0 && !take_over()) return false;
  if (!open_access_log()) return false;
  make_threads();
  // Bind everything first, so a busy port fails fast, and before privileges
  // are dropped.
  std::optional<OpenedSockets> fresh = open_listen_sockets(config_, nworkers_, bound_, activation_);
  if (!fresh) return false;
  for (const auto& [key, b] : fresh->binds) bound_[key] = b.socket;
  store_listener_fds(config_, *fresh);
  // Key files are often readable by root only: read them before privileges
  // are dropped.
  if (!load_start_tls()) return false;
  if (!open_admin() || !drop_user() || !start_health()) return false;
  start_workers(*fresh);
  install_signals();
  log_started();
  if (handover_) {
    drop_handover_sockets();
    took_over();
  } else {
    notifier_.ready();
  }
  notifier_.status(fmt::format("serving, generation {}", generation_));
  start_timers();
  return true;
}

void Server::apply_process_limits() {
  log::set_level(config_.global.log_level);
  if (!notifier_.error().empty()) log::warn("NOTIFY_SOCKET ignored error=\"{}\"", notifier_.error());
  std::string warnings = activation_.take_inherited();
  if (!warnings.empty()) log::warn("socket activation: {}", warnings);
  activation_.match(config_);
  raise_nofile(config_.global.max_connections);
  if (rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    core::descriptors::set_limit(rl.rlim_cur);
  shared_.max_connections.store(config_.global.max_connections);
  shared_.buffers.limit.store(static_cast<int64_t>(config_.global.max_buffer_memory));
  running_user_ = config_.global.user;
}

bool Server::open_access_log() {
  if (config_.global.access_log == "off") return true;
  access_log_ = std::make_unique<core::AccessLog>(config_.global.access_log, nworkers_);
  std::string err;
  // Taking over: the previous program's descriptor, so both write to the
  // same open file (the path may have been rotated meanwhile).
  int fd = -1;
  if (handover_ && handover_->access_log_fd && config_.global.access_log != "stderr")
    fd = std::exchange(handover_fds_[*handover_->access_log_fd], -1);
  if (!access_log_->open(&err, fd)) {
    log::error("cannot open access log path={} error=\"{}\"", config_.global.access_log, err);
    return false;
  }
  access_log_target_ = config_.global.access_log;
  shared_.access_log = access_log_.get();
  return true;
}

// Workers (not started yet), the control plane that feeds them tables, and
// the health checker that feeds the control plane.
void Server::make_threads() {
  resolver_ = std::make_unique<HostResolver>(&loop_);
  for (unsigned i = 0; i < nworkers_; ++i) workers_.push_back(std::make_unique<core::Worker>(i, shared_));
  control_ = std::make_unique<core::ControlPlane>([this](const core::BackendTablePtr& t) {
    for (auto& w : workers_) w->publish(t);
  });
  health_bridge_ = std::make_unique<HealthBridge>(*control_);
  health_ = std::make_unique<health::HealthChecker>(*health_bridge_);
  shared_.report_backend = [h = health_.get()](const core::BackendPtr& b, bool ok) { h->report(b, ok); };
}

// The admin HTTP server, with the API's handlers and the [admin] allow list.
// The filter reads config_ at every accept, so a reload's list applies at once.
std::unique_ptr<admin::HttpServer> Server::make_admin_server() {
  auto server = std::make_unique<admin::HttpServer>(
      &loop_, [this](const admin::HttpRequest& req) { return handle_admin(*this, req); });
  server->set_accept_filter([this](const sockaddr* peer) { return admin_peer_allowed(config_.admin, peer); });
  return server;
}

bool Server::open_admin() {
  if (!config_.admin.listen) return true;
  admin_ = make_admin_server();
  // After an upgrade, the previous program's admin socket: its port stays,
  // and no request is refused while both programs accept on it.
  const int handed = take_admin_fd();
  int rc = handed >= 0 ? admin_->listen_fd(handed)
                       : admin_->listen(reinterpret_cast<const sockaddr*>(&config_.admin.listen->addr));
  if (rc != 0) {
    log::error("cannot bind admin address={} error=\"{}\"", config_.admin.listen->text, uv_strerror(rc));
    return false;
  }
  return true;
}

bool Server::drop_user() {
  if (config_.global.user.empty()) return true;
  std::string err;
  if (!drop_privileges(config_.global.user, &err)) {
    log::error("cannot drop privileges user={} error=\"{}\"", config_.global.user, err);
    return false;
  }
  log::info("dropped privileges user={}", config_.global.user);
  return true;
}

conf::Duration Server::longest_probe_timeout(const conf::Config& cfg) const {
  conf::Duration longest{0};
  for (const auto& p : cfg.pools) longest = std::max(longest, p.health_check.timeout);
  return longest;
}

bool Server::load_start_tls() {
  std::vector<std::string> errors;
  tls_ = load_tls(config_, &errors);
  for (const auto& e : errors) log::error("tls {}", e);
  return tls_ != nullptr;
}

// Every backend gets its first probe before traffic is accepted for it.
bool Server::start_health() {
  try {
    health_->start();
  } catch (const std::exception& e) {
    log::error("cannot start health checker error=\"{}\"", e.what());
    return false;
  }
  auto pools = control_->apply(config_, tls_);
  if (handover_) control_->restore(handover_->backends);
  health_targets(pools, tls_);
  if (!health_->wait_initial(longest_probe_timeout(config_) + std::chrono::milliseconds(500)))
    log::warn("some backends had no first health result in time; they stay down until probed");
  return true;
}

void Server::start_workers(OpenedSockets& fresh) {
  listeners_ = make_runtimes(config_, tls_);
  generation_ = 1;
  if (handover_) {
    restore_counters();
    pin_udp_sessions(handover_->udp_sessions);
  }
  post_listeners(config_, fresh);
  for (auto& w : workers_) w->start();
}

void Server::install_signals() {
  for (int sig : {SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2}) {
    auto sh = make_uv<uv_signal_t>(&loop_, this, nullptr, uv_signal_init);
    uv_signal_start(sh.get(), on_signal, sig);
    signals_.push_back(std::move(sh));
  }
  std::signal(SIGPIPE, SIG_IGN);
}

void Server::log_started() const {
  for (const auto& l : config_.listeners)
    for (const auto& e : l.bind) {
      const BoundSocket& b = bound_.at(bind_key(l, e, bound_));
      log::info("listening listener={} address={}{}", l.name, b.actual, b.inherited ? " inherited=true" : "");
    }
  activation_.warn_unused();
  if (admin_) log::info("admin listening address={}", admin_address(*config_.admin.listen, admin_->port()));
  log::info("started version={} workers={}", LB_VERSION, nworkers_);
}

// The systemd watchdog (when asked for) and the slow-start ramps.
void Server::start_timers() {
  auto interval = notifier_.watchdog_interval();
  if (notifier_.enabled() && interval) {
    watchdog_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
    uint64_t ms = std::max<uint64_t>(1, static_cast<uint64_t>(interval->count() / 1000));
    notifier_.watchdog();
    uv_timer_start(
        watchdog_timer_.get(), [](uv_timer_t* t) { static_cast<Server*>(t->data)->notifier_.watchdog(); }, ms,
        ms);
  }
  tick_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  uv_timer_start(
      tick_timer_.get(), [](uv_timer_t* t) { static_cast<Server*>(t->data)->control_->tick(); }, 250, 250);
}

// ---- shared by start and reload ---------------------------------------------

std::shared_ptr<const tls::Contexts> Server::load_tls(const conf::Config& cfg,
                                                      std::vector<std::string>* errors) {
  if (!ticket_keys_) ticket_keys_ = std::make_shared<tls::TicketKeyStore>();
  auto contexts = std::make_shared<tls::Contexts>();
  if (!tls::load_contexts(cfg, ticket_keys_, contexts.get(), errors)) return nullptr;
  for (const auto& f : tls::check_contexts(cfg, *contexts, static_cast<int64_t>(std::time(nullptr))))
    log::warn("tls {}", f.message);
  return contexts;
}

std::vector<ListenerRuntimePtr> Server::make_runtimes(const conf::Config& cfg,
                                                      const std::shared_ptr<const tls::Contexts>& tls) {
  std::vector<ListenerRuntimePtr> out;
  std::map<std::string, std::shared_ptr<core::ListenerStats>> stats;
  for (const auto& l : cfg.listeners) {
    auto rt = std::make_shared<ListenerRuntime>();
    rt->cfg = l;
    rt->acl = core::Acl(l.allow, l.deny);
    rt->proxy_trusted = core::PrefixSet(l.proxy_protocol_trusted);
    rt->tls = tls;
    rt->tls_server = tls ? tls->listener(l.name) : nullptr;
    if (l.accept_proxy_protocol && l.proxy_protocol_trusted.empty()) {
      // Whoever can connect can then claim any client address, and with it
      // pass allow/deny and the per-source limit.
      log::warn("listener={} accepts PROXY headers from any peer; set proxy_protocol_trusted", l.name);
    }
    auto it = stats_.find(l.name);
    rt->stats = it != stats_.end() ? it->second : std::make_shared<core::ListenerStats>(nworkers_);
    stats[l.name] = rt->stats;
    out.push_back(std::move(rt));
  }
  stats_ = std::move(stats);
  return out;
}

void Server::post_listeners(const conf::Config& cfg, OpenedSockets& fresh) {
  hold_copies(fresh);
  for (unsigned w = 0; w < nworkers_; ++w) {
    core::WorkerMessage msg{core::WorkerMessage::Kind::Listeners, {}, listeners_posted_ + 1};
    for (size_t i = 0; i < cfg.listeners.size(); ++i) {
      const auto& l = cfg.listeners[i];
      for (const auto& e : l.bind) {
        std::string key = bind_key(l, e, bound_);
        if (w != 0 && bound_.at(key).single_worker) continue;
        core::WorkerBind bind;
        bind.key = key;
        bind.runtime = listeners_[i];
        bind.fd = fresh.take(key, w).value_or(-1);
        msg.binds.push_back(std::move(bind));
      }
    }
    workers_[w]->post(std::move(msg));
  }
  ++listeners_posted_;
  fresh.binds.clear();
}

void Server::health_targets(const std::vector<core::ControlPlane::PoolBackends>& pools,
                            const std::shared_ptr<const tls::Contexts>& tls) {
  std::vector<health::HealthChecker::Target> targets;
  for (const auto& p : pools) {
    std::shared_ptr<const tls::ClientContext> client;
    if (tls)
      if (auto it = tls->pools.find(p.pool->name); it != tls->pools.end()) client = it->second;
    for (const auto& b : p.backends) {
      health::HealthChecker::Target t{b, p.pool->health_check, p.pool->outlier, client, {}};
      if (client) t.tls_name = tls::backend_server_name(*client, b->address);
      targets.push_back(std::move(t));
    }
  }
  health_->set_targets(std::move(targets));
}

void Server::on_signal(uv_signal_t* s, int signum) {
  auto* self = static_cast<Server*>(s->data);
  switch (signum) {
    case SIGHUP:
      self->reload();
      break;
    case SIGUSR1:
      if (self->access_log_) self->access_log_->reopen();
      log::info("reopening access log");
      break;
    case SIGUSR2:
      self->upgrade();
      break;
    default:
      self->begin_stop();
  }
}

// ---- stop -------------------------------------------------------------------

void Server::begin_stop() {
  if (draining_) return;
  draining_ = true;
  if (upgrade_) upgrade_refused("stopping");
  if (reload_) reload_abort({"stopping"});
  notifier_.stopping();
  log::info("stopping drain_delay={}ms shutdown_timeout={}ms", config_.global.drain_delay.count(),
            config_.global.shutdown_timeout.count());
  stop_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  // Lame duck: keep serving (with /healthz at 503) for drain_delay first.
  uv_timer_start(
      stop_timer_.get(), [](uv_timer_t* t) { static_cast<Server*>(t->data)->stop_accepting(); },
      static_cast<uint64_t>(config_.global.drain_delay.count()), 0);
}

void Server::stop_accepting() {
  accepting_stopped_ = true;
  close_held();
  for (auto& w : workers_) w->post({core::WorkerMessage::Kind::Drain, {}});
  stop_deadline_ = uv_now(&loop_) + static_cast<uint64_t>(config_.global.shutdown_timeout.count());
  uv_timer_start(
      stop_timer_.get(), [](uv_timer_t* t) { static_cast<Server*>(t->data)->check_drained(); }, 0, 20);
}

// Every worker must have handled its Drain first: until then it may still
// accept a connection, which Abort would then cut.
void Server::check_drained() {
  // Connections being moved are not drained: wait for the last batch
  // (bounded by shutdown_timeout like the rest).
  if (move_ && uv_now(&loop_) < stop_deadline_) return;
  int64_t open = 0;
  bool drained = true;
  for (auto& w : workers_) {
    open += w->open_sessions();
    drained = drained && w->drained();
  }
  if (drained) {
    finish_stop();
    return;
  }
  if (uv_now(&loop_) >= stop_deadline_) {
    log::warn("shutdown timeout reached, closing connections count={}", open);
    finish_stop();
  }
}

void Server::finish_stop() {
  end_upgrade();
  close_held();
  for (auto& w : workers_) w->post({core::WorkerMessage::Kind::Abort, {}});
  for (auto& w : workers_) {
    w->join();
    if (w->leaked_handles()) leaked_handles_ = true;
  }
  // After the joins: no worker answers a freeze round any more.
  end_moving();
  end_moves_in();
  pins_timer_.reset();
  if (health_ && !health_->stop()) {
    log::error("health loop has open handles at exit");
    leaked_handles_ = true;
  }
  shared_.report_backend = nullptr;
  if (admin_) admin_->close();
  signals_.clear();
  if (resolver_) resolver_->cancel();
  reload_.reset();
  stop_timer_.reset();
  watchdog_timer_.reset();
  tick_timer_.reset();
  reload_timer_.reset();
  // Flush the access log before exit.
  access_log_.reset();
  shared_.access_log = nullptr;
  log::info("stopped");
}

}  // namespace lb::app
