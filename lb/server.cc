#include "lb/server.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <stdexcept>

#include "conf/load.h"
#include "core/handover/channel.h"
#include "core/log.h"
#include "core/socket.h"
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

// An inherited UDP socket is served by one worker only.
constexpr int kNotOnWorker = -2;

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

Server::Server(conf::Config config) : config_(std::move(config)) {
  uv_loop_init(&loop_);
  exe_path_ = upgrade::own_executable();
  nworkers_ = config_.global.workers ? config_.global.workers : cpu_count();
}

Server::~Server() {
  // run() leaves nothing open; this only matters after a failed start.
  if (!loop_closed_) uv_loop_close(&loop_);
}

// A bind's identity across reloads. Port 0 means "a free port of its own"
// for each listener, so such binds are told apart by listener name too.
std::string Server::bind_key(const conf::Listener& l, const conf::Endpoint& e) {
  std::string key = std::string(conf::to_string(l.protocol)) + "|" + e.to_string();
  if (e.port() == 0) key += "|" + l.name;
  return key;
}

std::vector<ListenerRuntimePtr> Server::make_runtimes(const conf::Config& cfg) {
  std::vector<ListenerRuntimePtr> out;
  std::map<std::string, std::shared_ptr<core::ListenerStats>> stats;
  for (const auto& l : cfg.listeners) {
    auto rt = std::make_shared<ListenerRuntime>();
    rt->cfg = l;
    rt->acl = core::Acl(l.allow, l.deny);
    rt->proxy_trusted = core::PrefixSet(l.proxy_protocol_trusted);
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

void Server::NewSockets::close() {
  for (auto& [key, list] : fds)
    for (int fd : list)
      if (fd >= 0) ::close(fd);
  fds.clear();
  bound.clear();
}

Server::NewSockets& Server::NewSockets::operator=(NewSockets&& o) noexcept {
  if (this != &o) {
    close();
    fds.swap(o.fds);
    bound.swap(o.bound);
  }
  return *this;
}

// Opens one SO_REUSEPORT socket per worker for every bind that has none yet.
// Port 0 is resolved by the first socket; the others bind the port it got.
std::optional<Server::NewSockets> Server::bind_listeners(const conf::Config& cfg) {
  NewSockets out;  // on any failure, its destructor closes what was opened
  for (const auto& l : cfg.listeners) {
    int type = l.protocol == conf::Protocol::Tcp ? SOCK_STREAM : SOCK_DGRAM;
    for (const auto& e : l.bind) {
      std::string key = bind_key(l, e);
      if (bound_.count(key) || out.fds.count(key)) continue;
      Bound b;
      b.protocol_type = type;
      b.addr = e.addr;
      b.len = e.addr_len;
      std::vector<int>& fds = out.fds[key];
      if (auto it = activated_.find(key); it != activated_.end()) {
        // Socket activation: the inherited sockets replace binding. One per
        // worker (a previous lb's SO_REUSEPORT group, from the descriptor
        // store or an upgrade): each worker gets its own, so the connections
        // already queued on each are all accepted. Otherwise the one socket
        // systemd bound: TCP, every worker accepts from its own dup of it;
        // UDP, one worker only, so a client's datagrams are never split.
        const std::vector<systemd::InheritedSocket*>& socks = it->second;
        const bool per_worker = socks.size() == nworkers_;
        if (!per_worker && socks.size() > 1)
          log::warn(
              "inherited sockets for one bind differ from the worker count listener={} sockets={} workers={}",
              l.name, socks.size(), nworkers_);
        systemd::InheritedSocket* in = socks[0];
        b.addr = in->addr;
        b.len = in->len;
        b.single_worker = type == SOCK_DGRAM && !per_worker;
        for (unsigned w = 0; w < nworkers_; ++w) {
          int fd = per_worker                        ? systemd::dup_for_worker(*socks[w])
                   : (w == 0 || type == SOCK_STREAM) ? systemd::dup_for_worker(*in)
                                                     : kNotOnWorker;
          if (fd < 0 && fd != kNotOnWorker) {
            log::error("cannot use inherited socket listener={} error=\"{}\"", l.name, strerror(-fd));
            return std::nullopt;
          }
          fds.push_back(fd);
        }
        b.actual = core::format_address(reinterpret_cast<sockaddr*>(&b.addr));
        out.bound[key] = b;
        continue;
      }
      for (unsigned w = 0; w < nworkers_; ++w) {
        int fd = core::make_reuseport_socket(reinterpret_cast<sockaddr*>(&b.addr), b.len, type);
        if (fd < 0) {
          log::error("cannot bind listener={} address={} error=\"{}\"", l.name, e.text, strerror(-fd));
          return std::nullopt;
        }
        fds.push_back(fd);
        if (w == 0) core::local_address(fd, &b.addr, &b.len);
        if (type == SOCK_STREAM && ::listen(fd, 4096) != 0) {
          int err = errno;
          log::error("cannot listen listener={} address={} error=\"{}\"", l.name, e.text, strerror(err));
          return std::nullopt;
        }
      }
      b.actual = core::format_address(reinterpret_cast<sockaddr*>(&b.addr));
      out.bound[key] = b;
    }
  }
  return out;
}

// Hands the new sockets to the workers (`fresh` gives them up) with the
// listener set of `cfg`.
void Server::post_listeners(const conf::Config& cfg, NewSockets& sockets) {
  auto& fresh = sockets.fds;
  // Keep a copy of each for an upgrade (the workers own theirs).
  for (const auto& [key, list] : fresh) {
    std::vector<int>& held = held_[key];
    for (int fd : held)
      if (fd >= 0) ::close(fd);
    held.clear();
    // dup(), not fcntl(F_DUPFD_CLOEXEC): ThreadSanitizer sees dup() create
    // the copy, so closing it later is no race with a worker that once had
    // the number. Close-on-exec before anything can spawn (main thread only).
    for (int fd : list) {
      int copy = fd >= 0 ? ::dup(fd) : -1;
      if (copy >= 0) ::fcntl(copy, F_SETFD, FD_CLOEXEC);
      held.push_back(copy);
    }
  }
  for (unsigned w = 0; w < nworkers_; ++w) {
    core::WorkerMessage msg{core::WorkerMessage::Kind::Listeners, {}};
    for (size_t i = 0; i < cfg.listeners.size(); ++i) {
      const auto& l = cfg.listeners[i];
      for (const auto& e : l.bind) {
        std::string key = bind_key(l, e);
        auto bi = bound_.find(key);
        if (w != 0 && ((bi != bound_.end() && bi->second.single_worker) ||
                       (fresh.count(key) && fresh[key][w] == kNotOnWorker)))
          continue;
        core::ListenEntry entry;
        entry.key = key;
        entry.runtime = listeners_[i];
        auto it = fresh.find(key);
        entry.fd = it != fresh.end() ? it->second[w] : -1;
        msg.listeners.push_back(std::move(entry));
      }
    }
    workers_[w]->post(std::move(msg));
  }
  fresh.clear();
}

void Server::health_targets(const std::vector<core::ControlPlane::PoolBackends>& pools) {
  std::vector<health::HealthChecker::Target> targets;
  for (const auto& p : pools) {
    for (const auto& b : p.backends) targets.push_back({b, p.pool->health_check, p.pool->outlier});
  }
  health_->set_targets(std::move(targets));
}

// Socket activation: every bind that an inherited socket serves, matched by
// listener name first across all listeners, then by address.
void Server::match_inherited(const conf::Config& cfg) {
  activated_.clear();
  for (auto& in : inherited_) in.used = false;
  for (auto by : {systemd::MatchBy::NameOnly, systemd::MatchBy::AddressOnly}) {
    for (const auto& l : cfg.listeners) {
      int type = l.protocol == conf::Protocol::Tcp ? SOCK_STREAM : SOCK_DGRAM;
      for (const auto& e : l.bind) {
        std::string key = bind_key(l, e);
        if (activated_.count(key)) continue;
        auto* in = systemd::match(inherited_, l.name, type, reinterpret_cast<const sockaddr*>(&e.addr),
                                  e.addr_len, by);
        if (!in) continue;
        // The rest of its group: same name, type and address.
        std::vector<systemd::InheritedSocket*>& group = activated_[key];
        group.push_back(in);
        for (auto& other : inherited_)
          if (!other.used && other.type == in->type && other.name == in->name &&
              systemd::same_address(reinterpret_cast<const sockaddr*>(&other.addr), other.len,
                                    reinterpret_cast<const sockaddr*>(&in->addr), in->len)) {
            other.used = true;
            group.push_back(&other);
          }
      }
    }
  }
}

// The admin HTTP server, with the API's handlers and the [admin] allow list.
// The filter reads config_ at every accept, so a reload's list applies at once.
std::unique_ptr<admin::HttpServer> Server::make_admin_server() {
  auto server = std::make_unique<admin::HttpServer>(
      &loop_, [this](const admin::HttpRequest& req) { return handle_admin(*this, req); });
  server->set_accept_filter([this](const sockaddr* peer) { return admin_peer_allowed(config_.admin, peer); });
  return server;
}

bool Server::start() {
  log::set_level(config_.global.log_level);
  if (!notifier_.error().empty()) log::warn("NOTIFY_SOCKET ignored error=\"{}\"", notifier_.error());
  std::string warnings;
  inherited_ = systemd::inherited_sockets(&warnings);
  if (!warnings.empty()) log::warn("socket activation: {}", warnings);
  if (handover_fd_ >= 0 && !take_over()) return false;
  match_inherited(config_);
  raise_nofile(config_.global.max_connections);
  shared_.max_connections.store(config_.global.max_connections);
  shared_.buffers.limit.store(static_cast<int64_t>(config_.global.max_buffer_memory));

  if (config_.global.access_log != "off") {
    access_log_ = std::make_unique<core::AccessLog>(config_.global.access_log, nworkers_);
    std::string err;
    if (!access_log_->open(&err)) {
      log::error("cannot open access log path={} error=\"{}\"", config_.global.access_log, err);
      return false;
    }
    access_log_target_ = config_.global.access_log;
    shared_.access_log = access_log_.get();
  }
  running_user_ = config_.global.user;
  resolver_ = std::make_unique<HostResolver>(&loop_);

  for (unsigned i = 0; i < nworkers_; ++i) workers_.push_back(std::make_unique<core::Worker>(i, shared_));
  control_ = std::make_unique<core::ControlPlane>([this](const core::BackendTablePtr& t) {
    for (auto& w : workers_) w->publish(t);
  });
  health_bridge_ = std::make_unique<HealthBridge>(*control_);
  health_ = std::make_unique<health::HealthChecker>(*health_bridge_);
  shared_.report_backend = [h = health_.get()](const core::BackendPtr& b, bool ok) { h->report(b, ok); };

  // Bind everything first, so a busy port fails fast, and before privileges
  // are dropped.
  std::optional<NewSockets> fresh = bind_listeners(config_);
  if (!fresh) return false;
  bound_ = fresh->bound;
  store_listener_fds(config_, *fresh);
  if (config_.admin.listen) {
    admin_ = make_admin_server();
    int rc;
    if (handover_ && handover_->admin_fd) {
      // The previous program's admin socket: its port stays, and no request
      // is refused while both programs accept on it.
      rc = admin_->listen_fd(std::exchange(handover_fds_[*handover_->admin_fd], -1));
    } else {
      rc = admin_->listen(reinterpret_cast<const sockaddr*>(&config_.admin.listen->addr));
    }
    if (rc != 0) {
      log::error("cannot bind admin address={} error=\"{}\"", config_.admin.listen->text, uv_strerror(rc));
      return false;
    }
  }
  if (!config_.global.user.empty()) {
    std::string err;
    if (!drop_privileges(config_.global.user, &err)) {
      log::error("cannot drop privileges user={} error=\"{}\"", config_.global.user, err);
      return false;
    }
    log::info("dropped privileges user={}", config_.global.user);
  }

  try {
    health_->start();
  } catch (const std::exception& e) {
    log::error("cannot start health checker error=\"{}\"", e.what());
    return false;
  }
  auto pools = control_->apply(config_);
  if (handover_) control_->restore(handover_->backends);
  health_targets(pools);
  // Every backend gets its first probe before traffic is accepted for it.
  conf::Duration longest{0};
  for (const auto& p : config_.pools) longest = std::max(longest, p.health_check.timeout);
  if (!health_->wait_initial(longest + std::chrono::milliseconds(500)))
    log::warn("some backends had no first health result in time; they stay down until probed");

  listeners_ = make_runtimes(config_);
  generation_ = 1;
  if (handover_) {
    for (const auto& c : handover_->listener_counters) {
      auto it = stats_.find(c.listener);
      if (it == stats_.end()) continue;
      core::ListenerTotals& b = it->second->base;
      b.connections = c.connections;
      b.rejected_acl = c.rejected_acl;
      b.rejected_limit = c.rejected_limit;
      b.rejected_no_backend = c.rejected_no_backend;
      b.rejected_proxy = c.rejected_proxy;
      b.rejected_tls = c.rejected_tls;
      b.datagrams_in = c.datagrams_in;
      b.datagrams_out = c.datagrams_out;
    }
    generation_ = handover_->generation + 1;
    reloads_ok_ = handover_->reloads_ok;
    reloads_error_ = handover_->reloads_error;
    upgrades_ok_ = handover_->upgrades_ok + 1;
    upgrades_refused_ = handover_->upgrades_refused;
  }
  post_listeners(config_, *fresh);
  for (auto& w : workers_) w->start();

  for (int sig : {SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2}) {
    auto* sh = new uv_signal_t;
    uv_signal_init(&loop_, sh);
    sh->data = this;
    uv_signal_start(sh, on_signal, sig);
    signals_.push_back(sh);
  }
  std::signal(SIGPIPE, SIG_IGN);

  for (const auto& l : config_.listeners)
    for (const auto& e : l.bind) {
      std::string key = bind_key(l, e);
      log::info("listening listener={} address={}{}", l.name, bound_[key].actual,
                activated_.count(key) ? " inherited=true" : "");
    }
  for (const auto& in : inherited_)
    if (!in.used) log::warn("inherited socket matches no listener name={} fd={}", in.name, in.fd);
  if (handover_) {
    // The handed-over sockets live on in the workers and held_; the copies
    // received are not kept (unlike systemd's, which a later reload may
    // claim again), so the descriptor count is what it was before.
    for (size_t i = handover_first_; i < inherited_.size(); ++i) ::close(inherited_[i].fd);
    inherited_.resize(handover_first_);
    match_inherited(config_);
  }
  if (admin_) {
    conf::Endpoint ep = *config_.admin.listen;
    auto* sa = reinterpret_cast<sockaddr_in*>(&ep.addr);
    sa->sin_port = htons(admin_->port());  // sin6_port is at the same offset
    log::info("admin listening address={}", core::format_address(reinterpret_cast<sockaddr*>(&ep.addr)));
  }
  log::info("started version={} workers={}", LB_VERSION, nworkers_);
  if (handover_)
    took_over();
  else
    notifier_.ready();
  notifier_.status(fmt::format("serving, generation {}", generation_));
  start_watchdog();
  tick_timer_ = new uv_timer_t;
  uv_timer_init(&loop_, tick_timer_);
  tick_timer_->data = this;
  uv_timer_start(
      tick_timer_, [](uv_timer_t* t) { static_cast<Server*>(t->data)->control_->tick(); }, 250, 250);
  return true;
}

void Server::store_listener_fds(const conf::Config& cfg, const NewSockets& fresh) {
  if (!notifier_.enabled()) return;
  for (const auto& l : cfg.listeners) {
    std::vector<int> fds;
    for (const auto& e : l.bind) {
      std::string key = bind_key(l, e);
      // Inherited sockets are systemd's already (stored, or its socket unit's).
      if (activated_.count(key)) continue;
      if (auto it = fresh.fds.find(key); it != fresh.fds.end())
        for (int fd : it->second)
          if (fd >= 0) fds.push_back(fd);
    }
    if (fds.empty()) continue;
    if (!systemd::valid_fdname(l.name)) {
      log::warn(
          "listener name is not a valid FDNAME; its sockets stay out of the descriptor store listener={}",
          l.name);
      continue;
    }
    if (!notifier_.store_fds(l.name, fds))
      log::warn("cannot store listening sockets with systemd listener={} count={}", l.name, fds.size());
  }
}

void Server::start_watchdog() {
  auto interval = notifier_.watchdog_interval();
  if (!notifier_.enabled() || !interval) return;
  watchdog_timer_ = new uv_timer_t;
  uv_timer_init(&loop_, watchdog_timer_);
  watchdog_timer_->data = this;
  uint64_t ms = std::max<uint64_t>(1, static_cast<uint64_t>(interval->count() / 1000));
  notifier_.watchdog();
  uv_timer_start(
      watchdog_timer_, [](uv_timer_t* t) { static_cast<Server*>(t->data)->notifier_.watchdog(); }, ms, ms);
}

int Server::run() {
  bool ok = start();
  if (!ok) {
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

// How long a reload waits for backend host names (the resolver's own
// retries, five seconds each by default in glibc, may take longer).
constexpr std::chrono::milliseconds kResolveDeadline{5000};

// What a reload prepared off to the side. Destroying it closes everything it
// opened: that is the abort.
struct Server::Reload {
  conf::Config config;
  std::optional<NewSockets> sockets;            // new listening sockets
  bool admin_changes = false;                   // [admin] listen added, moved or removed
  std::unique_ptr<admin::HttpServer> admin;     // listening at the new address
  std::unique_ptr<core::AccessLog> access_log;  // the first access log of this process
  int access_log_fd = -1;                       // the running log's new destination
  uint64_t probe_deadline = 0;                  // loop time
  ~Reload() {
    if (admin) admin->close();
    if (access_log_fd >= 0 && access_log_fd != STDERR_FILENO) ::close(access_log_fd);
  }
};

// SIGHUP. Step 1, load: read, parse and validate; host names wait.
void Server::reload() {
  if (draining_) return;
  if (reload_) {
    reload_again_ = true;  // the file may have changed again since this one read it
    log::info("reload already in progress; reloading again once it ends");
    return;
  }
  log::info("reloading path={}", config_.path);
  notifier_.reloading();
  auto res = conf::load_file(config_.path, conf::Resolve::Later);
  reload_ = std::make_unique<Reload>();
  if (!res.ok()) {
    std::vector<std::string> errors;
    for (const auto& d : res.errors) errors.push_back(d.str());
    return reload_abort(errors);
  }
  reload_->config = std::move(*res.config);
  reload_resolve();
}

// Step 2: backend host names, off the loop and bounded.
void Server::reload_resolve() {
  std::vector<std::string> hosts;
  for (const auto& h : reload_->config.unresolved) hosts.push_back(h.host);
  if (hosts.empty()) return reload_open();
  resolver_->start(hosts, kResolveDeadline, [this](const HostResolver::Answers& answers) {
    auto diags = conf::apply_host_answers(reload_->config, answers);
    if (!diags.empty()) {
      std::vector<std::string> errors;
      errors.reserve(diags.size());
      for (const auto& d : diags) errors.push_back(d.str());
      return reload_abort(errors);
    }
    reload_open();
  });
}

// Step 3: open every socket and file the new configuration needs and the
// running one does not have.
void Server::reload_open() {
  Reload& r = *reload_;
  const conf::Config& next = r.config;
  match_inherited(next);
  r.sockets = bind_listeners(next);
  match_inherited(config_);                 // until the commit
  if (!r.sockets) return reload_abort({});  // bind_listeners logged why

  const auto& was = config_.admin.listen;
  const auto& now = next.admin.listen;
  r.admin_changes = was.has_value() != now.has_value() || (was && now && was->text != now->text);
  if (r.admin_changes && now) {
    r.admin = make_admin_server();
    int rc = r.admin->listen(reinterpret_cast<const sockaddr*>(&now->addr));
    if (rc != 0) {
      log::error("cannot bind admin address={} error=\"{}\"", now->text, uv_strerror(rc));
      return reload_abort({});
    }
  }

  const std::string& target = next.global.access_log;
  if (target != "off" && target != access_log_target_) {
    std::string err;
    if (!access_log_) {
      r.access_log = std::make_unique<core::AccessLog>(target, nworkers_);
      if (!r.access_log->open(&err)) r.access_log.reset();
    } else {
      r.access_log_fd = core::AccessLog::open_target(target, &err);
    }
    if (!r.access_log && r.access_log_fd < 0) {
      log::error("cannot open access log path={} error=\"{}\"", target, err);
      return reload_abort({});
    }
  }
  reload_probe();
}

// Step 4: the new backends, staged (traffic still uses the running table),
// each probed once before the listeners that need them accept.
void Server::reload_probe() {
  Reload& r = *reload_;
  health_targets(control_->stage(r.config));
  conf::Duration longest{0};
  for (const auto& p : r.config.pools) longest = std::max(longest, p.health_check.timeout);
  r.probe_deadline = uv_now(&loop_) + static_cast<uint64_t>(longest.count()) + 500;
  if (!reload_timer_) {
    reload_timer_ = new uv_timer_t;
    uv_timer_init(&loop_, reload_timer_);
    reload_timer_->data = this;
  }
  uv_timer_start(
      reload_timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Server*>(t->data);
        if (!self->reload_) return;
        const bool probed = self->health_->wait_initial(std::chrono::milliseconds(0));
        if (!probed && uv_now(t->loop) < self->reload_->probe_deadline) return;
        uv_timer_stop(t);
        if (!probed)
          log::warn("some backends had no first health result in time; they stay down until probed");
        self->reload_commit();
      },
      0, 5);
}

// Settings that only a restart changes: named, never silently ignored.
void Server::warn_restart_settings(const conf::Config& next) {
  const unsigned workers = next.global.workers ? next.global.workers : cpu_count();
  if (workers != nworkers_)
    log::warn("setting needs a restart to change key=workers running={} configured={}", nworkers_, workers);
  if (next.global.user != running_user_)
    log::warn("setting needs a restart to change key=user running=\"{}\" configured=\"{}\"", running_user_,
              next.global.user);
}

// Commit: nothing below can fail.
void Server::reload_commit() {
  std::unique_ptr<Reload> r = std::move(reload_);
  conf::Config& next = r->config;
  warn_restart_settings(next);
  log::set_level(next.global.log_level);
  shared_.max_connections.store(next.global.max_connections);
  // Sessions waiting for budget see a raised limit on their worker's next
  // budget poll; a lowered one stops reads once usage is above it.
  shared_.buffers.limit.store(static_cast<int64_t>(next.global.max_buffer_memory));

  control_->commit_staged();
  match_inherited(next);
  listeners_ = make_runtimes(next);
  // Forget binds no listener has any more (the workers close their sockets).
  std::map<std::string, Bound> kept;
  for (const auto& l : next.listeners) {
    for (const auto& e : l.bind) {
      std::string key = bind_key(l, e);
      if (auto it = bound_.find(key); it != bound_.end()) kept[key] = it->second;
      if (auto f = r->sockets->bound.find(key); f != r->sockets->bound.end()) {
        kept[key] = f->second;
        log::info("listening listener={} address={}", l.name, f->second.actual);
      }
    }
  }
  bound_ = std::move(kept);
  for (auto it = held_.begin(); it != held_.end();) {
    if (bound_.count(it->first) || r->sockets->fds.count(it->first)) {
      ++it;
      continue;
    }
    for (int fd : it->second)
      if (fd >= 0) ::close(fd);  // the workers close theirs: the socket goes
    it = held_.erase(it);
  }
  store_listener_fds(next, *r->sockets);
  if (notifier_.enabled())
    for (const auto& old : config_.listeners) {
      bool kept_name = std::any_of(next.listeners.begin(), next.listeners.end(),
                                   [&](const conf::Listener& l) { return l.name == old.name; });
      if (!kept_name && systemd::valid_fdname(old.name)) notifier_.remove_stored_fds(old.name);
    }
  post_listeners(next, *r->sockets);

  if (r->admin_changes) {
    if (admin_) admin_->close();
    admin_ = std::move(r->admin);
    if (admin_) {
      conf::Endpoint ep = *next.admin.listen;
      reinterpret_cast<sockaddr_in*>(&ep.addr)->sin_port = htons(admin_->port());  // sin6_port: same offset
      log::info("admin listening address={}", core::format_address(reinterpret_cast<sockaddr*>(&ep.addr)));
    } else {
      log::info("admin API closed");
    }
  }

  const std::string& target = next.global.access_log;
  if (r->access_log) {
    access_log_ = std::move(r->access_log);
    shared_.access_log = access_log_.get();
  } else if (r->access_log_fd >= 0) {
    access_log_->retarget(target, r->access_log_fd);
    r->access_log_fd = -1;
  }
  if (target != "off") access_log_target_ = target;
  if (access_log_) access_log_->set_enabled(target != "off");

  // A UDP bind's upstream sockets take their source addresses when it opens.
  auto sources = [](const conf::Listener& l) {
    std::vector<std::string> v;
    for (const auto& c : l.udp_source) v.push_back(c.text);
    return v;
  };
  for (const auto& l : next.listeners)
    for (const auto& old : config_.listeners)
      if (l.name == old.name && l.protocol == conf::Protocol::Udp && sources(l) != sources(old))
        log::warn("udp_source changes need a restart for binds already open listener={}", l.name);
  config_ = std::move(next);
  ++generation_;
  ++reloads_ok_;
  log::info("reloaded generation={}", generation_);
  reload_finished();
}

// Abort: everything prepared is closed (the Reload's destructor), the
// running configuration carries on untouched.
void Server::reload_abort(const std::vector<std::string>& errors) {
  if (reload_timer_) uv_timer_stop(reload_timer_);
  resolver_->cancel();
  control_->drop_staged();
  if (reload_ && !reload_->config.pools.empty() && reload_->probe_deadline != 0) {
    // Probes had started for the staged backends: back to the running ones.
    std::vector<core::ControlPlane::PoolBackends> pools;
    auto snap = control_->snapshot();
    for (size_t i = 0; i < config_.pools.size() && i < snap.size(); ++i) {
      core::ControlPlane::PoolBackends pb{&config_.pools[i], {}};
      for (auto& b : snap[i].backends) pb.backends.push_back(b.backend);
      pools.push_back(std::move(pb));
    }
    health_targets(pools);
  }
  reload_.reset();
  ++reloads_error_;
  for (const auto& e : errors) log::error("reload failed: {}", e);
  log::error("reload failed, keeping the running configuration generation={}", generation_);
  reload_finished();
}

void Server::reload_finished() {
  if (draining_) return;
  // READY=1 whether it worked or not: a configuration serves either way.
  notifier_.ready();
  notifier_.status(fmt::format("serving, generation {}", generation_));
  if (reload_again_) {
    reload_again_ = false;
    reload();
  }
}

void Server::begin_stop() {
  if (draining_) return;
  draining_ = true;
  if (upgrade_) upgrade_refused("stopping");
  if (reload_) reload_abort({"stopping"});
  notifier_.stopping();
  log::info("stopping drain_delay={}ms shutdown_timeout={}ms", config_.global.drain_delay.count(),
            config_.global.shutdown_timeout.count());
  stop_timer_ = new uv_timer_t;
  uv_timer_init(&loop_, stop_timer_);
  stop_timer_->data = this;
  // Lame duck: keep serving (with /healthz at 503) for drain_delay first.
  uv_timer_start(
      stop_timer_, [](uv_timer_t* t) { static_cast<Server*>(t->data)->stop_accepting(); },
      static_cast<uint64_t>(config_.global.drain_delay.count()), 0);
}

void Server::stop_accepting() {
  accepting_stopped_ = true;
  close_held();
  for (auto& w : workers_) w->post({core::WorkerMessage::Kind::Drain, {}});
  stop_deadline_ = uv_now(&loop_) + static_cast<uint64_t>(config_.global.shutdown_timeout.count());
  uv_timer_start(
      stop_timer_, [](uv_timer_t* t) { static_cast<Server*>(t->data)->check_drained(); }, 0, 20);
}

void Server::check_drained() {
  int64_t open = 0;
  for (auto& w : workers_) open += w->open_sessions();
  if (open == 0) {
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
  if (health_ && !health_->stop()) {
    log::error("health loop has open handles at exit");
    leaked_handles_ = true;
  }
  shared_.report_backend = nullptr;
  if (admin_) admin_->close();
  for (auto* s : signals_)
    uv_close(reinterpret_cast<uv_handle_t*>(s),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_signal_t*>(h); });
  signals_.clear();
  if (resolver_) resolver_->cancel();
  reload_.reset();
  for (uv_timer_t** t : {&stop_timer_, &watchdog_timer_, &tick_timer_, &reload_timer_}) {
    if (!*t) continue;
    uv_close(reinterpret_cast<uv_handle_t*>(*t),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    *t = nullptr;
  }
  // Flush the access log before exit.
  access_log_.reset();
  shared_.access_log = nullptr;
  log::info("stopped");
}

// ------------------------------------------------------------------ upgrade

// How long the old program waits for the new one to serve: its start-up
// waits for every backend's first probe.
constexpr std::chrono::milliseconds kUpgradeCheckTimeout{10000};
constexpr std::chrono::milliseconds kHandoverIoTimeout{10000};

struct Server::Upgrade {
  pid_t pid = -1;               // the new program
  uv_poll_t* poll = nullptr;    // readable: the new program's reply
  uv_timer_t* timer = nullptr;  // no reply in time
  int sock = -1;                // our end of the hand-over channel
};

void Server::close_held() {
  for (auto& [key, list] : held_)
    for (int fd : list)
      if (fd >= 0) ::close(fd);
  held_.clear();
}

std::string Server::upgrade() {
  std::string why;
  if (draining_)
    why = "lb is stopping";
  else if (upgrade_)
    why = "an upgrade is already in progress";
  else if (reload_)
    why = "a reload is in progress";
  if (why.empty()) why = upgrade::check_program(exe_path_, config_.path, kUpgradeCheckTimeout);
  if (!why.empty()) {
    ++upgrades_refused_;
    log::error("upgrade refused reason=\"{}\"", why);
    return why;
  }

  // The state, with every descriptor it names.
  core::handover::HandoverState st;
  std::vector<int> fds;
  st.generation = generation_;
  st.reloads_ok = reloads_ok_;
  st.reloads_error = reloads_error_;
  st.upgrades_ok = upgrades_ok_;
  st.upgrades_refused = upgrades_refused_;
  st.access_log_dropped = access_log_dropped();
  for (const auto& l : config_.listeners)
    for (const auto& e : l.bind) {
      auto it = held_.find(bind_key(l, e));
      if (it == held_.end()) continue;
      core::handover::ListenerSocket ls;
      ls.listener = l.name;
      ls.key = it->first;
      ls.kind = l.protocol == conf::Protocol::Tcp ? 1 : 2;
      for (int fd : it->second) {
        if (fd < 0) continue;
        ls.fds.push_back(static_cast<uint32_t>(fds.size()));
        fds.push_back(fd);
      }
      st.listeners.push_back(std::move(ls));
    }
  if (admin_ && admin_->listener_fd() >= 0) {
    st.admin_fd = static_cast<uint32_t>(fds.size());
    fds.push_back(admin_->listener_fd());
  }
  for (const auto& rt : listeners_) {
    core::ListenerTotals t = rt->stats->sum();
    st.listener_counters.push_back({rt->cfg.name, t.connections, t.rejected_acl, t.rejected_limit,
                                    t.rejected_no_backend, t.rejected_proxy, t.rejected_tls, t.datagrams_in,
                                    t.datagrams_out});
  }
  st.backends = control_->save();
  const std::vector<uint8_t> bytes = core::handover::encode(st, static_cast<uint32_t>(fds.size()));

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    upgrade_refused(std::string("socketpair: ") + strerror(errno));
    return "socketpair failed";
  }
  auto up = std::make_unique<Upgrade>();
  up->sock = sv[0];
  upgrade_ = std::move(up);
  notifier_.reloading();

  // The new program: the same configuration file, the channel on fd 3.
  std::string spawn_error;
  const pid_t pid = upgrade::spawn_with_fd3({exe_path_, "--config", config_.path, "--handover-fd", "3"},
                                            upgrade::child_environment(), sv[1], &spawn_error);
  ::close(sv[1]);
  if (pid < 0) {
    upgrade_refused("cannot start the new program: " + spawn_error);
    return "cannot start the new program: " + spawn_error;
  }
  upgrade_->pid = pid;
  log::info("upgrade started program={} pid={} generation={}", exe_path_, pid, generation_);

  std::string err;
  if (!core::handover::send_state(upgrade_->sock, bytes, fds, kHandoverIoTimeout, &err)) {
    upgrade_refused("cannot send the hand-over: " + err);
    return "cannot send the hand-over";
  }
  upgrade_->poll = new uv_poll_t;
  uv_poll_init(&loop_, upgrade_->poll, upgrade_->sock);
  upgrade_->poll->data = this;
  uv_poll_start(upgrade_->poll, UV_READABLE,
                [](uv_poll_t* p, int, int) { static_cast<Server*>(p->data)->upgrade_reply(); });
  conf::Duration longest{0};
  for (const auto& p : config_.pools) longest = std::max(longest, p.health_check.timeout);
  upgrade_->timer = new uv_timer_t;
  uv_timer_init(&loop_, upgrade_->timer);
  upgrade_->timer->data = this;
  uv_timer_start(
      upgrade_->timer,
      [](uv_timer_t* t) {
        static_cast<Server*>(t->data)->upgrade_refused("the new program did not serve in time");
      },
      static_cast<uint64_t>(longest.count()) + 30000, 0);
  return {};
}

void Server::upgrade_reply() {
  if (!upgrade_) return;
  auto line = core::handover::receive_line(upgrade_->sock, std::chrono::milliseconds(100));
  if (!line) return upgrade_refused("the new program ended (closed the hand-over channel) before it served");
  if (line->rfind("SERVING ", 0) == 0) return handed_over(*line);
  if (line->rfind("FAILED ", 0) == 0) return upgrade_refused("the new program failed: " + line->substr(7));
  upgrade_refused("unexpected reply from the new program: " + line->substr(0, 100));
}

// Closes the channel; kills the new program if it still runs (a refusal).
void Server::end_upgrade() {
  if (!upgrade_) return;
  std::unique_ptr<Upgrade> up = std::move(upgrade_);
  if (up->poll)
    uv_close(reinterpret_cast<uv_handle_t*>(up->poll),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  if (up->timer)
    uv_close(reinterpret_cast<uv_handle_t*>(up->timer),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  if (up->sock >= 0) ::close(up->sock);
  if (up->pid > 0 && !handed_over_) {
    // Refused: the new program must not serve. Its exit (or the closed
    // channel) is what brought us here, or it is killed now; either way it
    // is reaped at once. Once it serves it outlives this process instead.
    ::kill(up->pid, SIGKILL);
    while (::waitpid(up->pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
}

void Server::upgrade_refused(const std::string& reason) {
  if (!upgrade_) return;
  end_upgrade();
  ++upgrades_refused_;
  log::error("upgrade refused reason=\"{}\"", reason);
  if (!draining_) {
    notifier_.ready();  // after RELOADING=1: this program serves on
    notifier_.status(fmt::format("serving, generation {}", generation_));
  }
}

// The new program serves: this one stops accepting (the listening sockets
// stay open in the new one), lets its connections finish within
// shutdown_timeout, and leaves. It tells systemd nothing more: the new
// program is the main process now.
void Server::handed_over(const std::string& reply) {
  handed_over_ = true;
  log::info("upgrade handed over to pid={} generation={}", reply.substr(8), generation_ + 1);
  end_upgrade();
  if (watchdog_timer_) uv_timer_stop(watchdog_timer_);
  if (admin_) admin_->close();
  if (reload_) reload_abort({"upgraded"});
  draining_ = true;
  stop_timer_ = new uv_timer_t;
  uv_timer_init(&loop_, stop_timer_);
  stop_timer_->data = this;
  stop_accepting();
}

// The new program's side, before anything is bound.
bool Server::take_over() {
  const int fd = std::exchange(handover_fd_, -1);
  auto fail = [&](const std::string& why) {
    log::error("cannot take over from the running lb error=\"{}\"", why);
    core::handover::send_line(fd, "FAILED " + why, kHandoverIoTimeout);
    ::close(fd);
    return false;
  };
  std::string err;
  auto rec = core::handover::receive_state(fd, kHandoverIoTimeout, &err);
  if (!rec) return fail("cannot receive the hand-over: " + err);
  auto st = core::handover::decode(rec->bytes, static_cast<uint32_t>(rec->fds.size()), &err);
  if (!st) {
    for (int f : rec->fds) ::close(f);
    return fail("cannot read the hand-over: " + err);
  }
  // The listening sockets become inherited sockets named after their
  // listeners: socket activation's matching (by name, then address) and its
  // per-worker groups do the rest.
  handover_first_ = inherited_.size();
  for (const auto& l : st->listeners)
    for (uint32_t i : l.fds) {
      systemd::InheritedSocket in;
      in.fd = rec->fds[i];
      in.name = l.listener;
      socklen_t tlen = sizeof in.type;
      in.len = sizeof in.addr;
      if (::getsockopt(in.fd, SOL_SOCKET, SO_TYPE, &in.type, &tlen) != 0 ||
          ::getsockname(in.fd, reinterpret_cast<sockaddr*>(&in.addr), &in.len) != 0) {
        log::warn("hand-over: listener socket unusable listener={}", l.listener);
        continue;
      }
      inherited_.push_back(in);
    }
  handover_fds_ = std::move(rec->fds);
  if (st->admin_fd && !config_.admin.listen) {
    ::close(handover_fds_[*st->admin_fd]);
    handover_fds_[*st->admin_fd] = -1;
  }
  handover_fd_ = fd;  // for the reply once serving
  log::info("taking over from the running lb generation={} handover_version={}", st->generation, st->version);
  handover_ = std::move(*st);
  return true;
}

void Server::took_over() {
  const int fd = std::exchange(handover_fd_, -1);
  if (handover_->admin_fd && handover_fds_[*handover_->admin_fd] >= 0)
    ::close(handover_fds_[*handover_->admin_fd]);
  handover_fds_.clear();
  // Logged first: the old program's "handed over" line then always follows it.
  log::info("upgraded generation={}", generation_);
  notifier_.main_pid_ready();
  core::handover::send_line(fd, "SERVING " + std::to_string(::getpid()), kHandoverIoTimeout);
  ::close(fd);
}

}  // namespace lb::app
