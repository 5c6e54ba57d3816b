// Server's reload (SIGHUP): the named steps described in lb/server.h.
#include <unistd.h>

#include "conf/load.h"
#include "core/log.h"
#include "health/health_checker.h"
#include "lb/server.h"

namespace lb::app {

namespace {

// How long a reload waits for backend host names (the resolver's own
// retries, five seconds each by default in glibc, may take longer).
constexpr std::chrono::milliseconds kResolveDeadline{5000};

template <class Diagnostics>
std::vector<std::string> error_texts(const Diagnostics& diags) {
  std::vector<std::string> errors;
  errors.reserve(diags.size());
  for (const auto& d : diags) errors.push_back(d.str());
  return errors;
}

}  // namespace

Server::Reload::~Reload() {
  if (admin) admin->close();
  if (access_log_fd >= 0 && access_log_fd != STDERR_FILENO) ::close(access_log_fd);
}

// SIGHUP. Step 1, load: read, parse and validate; host names wait.
void Server::reload() {
  if (draining_) return;
  if (reload_ || reload_announcing_) {
    reload_again_ = true;  // the file may have changed again since this one read it
    log::info("reload already in progress; reloading again once it ends");
    return;
  }
  log::info("reloading path={}", config_.path);
  notifier_.reloading();
  auto res = conf::load_file(config_.path, conf::Resolve::Later);
  reload_ = std::make_unique<Reload>();
  if (!res.ok()) return reload_abort(error_texts(res.errors));
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
    if (!diags.empty()) return reload_abort(error_texts(diags));
    reload_open();
  });
}

// Step 3: open every socket and file the new configuration needs and the
// running one does not have.
void Server::reload_open() {
  Reload& r = *reload_;
  activation_.match(r.config);
  r.sockets = open_listen_sockets(r.config, nworkers_, bound_, activation_);
  activation_.match(config_);  // until the commit
  // open_listen_sockets, reload_open_admin and reload_open_access_log log why.
  if (!r.sockets || !reload_open_admin() || !reload_open_access_log()) return reload_abort({});
  // SIGHUP re-reads every certificate, key and CA file, even when the text
  // of the configuration is unchanged.
  std::vector<std::string> errors;
  r.tls = load_tls(r.config, &errors);
  if (!r.tls) {
    for (auto& e : errors) e = "tls " + e;
    return reload_abort(errors);
  }
  reload_probe();
}

// An [admin] listen added or moved listens at its new address now.
bool Server::reload_open_admin() {
  Reload& r = *reload_;
  const auto& was = config_.admin.listen;
  const auto& now = r.config.admin.listen;
  r.admin_changes = was.has_value() != now.has_value() || (was && now && was->text != now->text);
  if (!r.admin_changes || !now) return true;
  r.admin = make_admin_server();
  int rc = r.admin->listen(reinterpret_cast<const sockaddr*>(&now->addr));
  if (rc != 0) {
    log::error("cannot bind admin address={} error=\"{}\"", now->text, uv_strerror(rc));
    return false;
  }
  return true;
}

// A new access log destination is opened now: the first log of this
// process, or the running log's next file.
bool Server::reload_open_access_log() {
  Reload& r = *reload_;
  const std::string& target = r.config.global.access_log;
  if (target == "off" || target == access_log_target_) return true;
  std::string err;
  if (!access_log_) {
    r.access_log = std::make_unique<core::AccessLog>(target, nworkers_);
    if (!r.access_log->open(&err)) r.access_log.reset();
  } else {
    r.access_log_fd = core::AccessLog::open_target(target, &err);
  }
  if (!r.access_log && r.access_log_fd < 0) {
    log::error("cannot open access log path={} error=\"{}\"", target, err);
    return false;
  }
  return true;
}

// Step 4: the new backends, staged (traffic still uses the running table),
// each probed once before the listeners that need them accept.
void Server::reload_probe() {
  Reload& r = *reload_;
  health_targets(control_->stage(r.config, r.tls), r.tls);
  r.probe_deadline = uv_now(&loop_) + static_cast<uint64_t>(longest_probe_timeout(r.config).count()) + 500;
  if (!reload_timer_) reload_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  uv_timer_start(
      reload_timer_.get(),
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
void Server::warn_restart_settings(const conf::Config& next) const {
  const unsigned workers = configured_workers(next);
  if (workers != nworkers_)
    log::warn("setting needs a restart to change key=workers running={} configured={}", nworkers_, workers);
  if (next.global.user != running_user_)
    log::warn("setting needs a restart to change key=user running=\"{}\" configured=\"{}\"", running_user_,
              next.global.user);
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
  tls_ = r->tls;
  commit_listeners(next, *r->sockets);
  if (r->admin_changes) {
    if (admin_) admin_->close();
    admin_ = std::move(r->admin);
    commit_admin(next);
  }
  if (r->access_log) {
    access_log_ = std::move(r->access_log);
    shared_.access_log = access_log_.get();
  } else if (r->access_log_fd >= 0) {
    access_log_->retarget(next.global.access_log, r->access_log_fd);
    r->access_log_fd = -1;
  }
  commit_access_log(next);

  config_ = std::move(next);
  announce_reload();
}

// The workers switch to the new listener set (and its certificates) when
// their loops read the message. The reload is done, and says so (generation,
// lb_config_reloads_total, the log line, READY=1), once every worker has: a
// client that saw the new generation and then connects gets the new
// configuration, whichever worker accepts it.
void Server::announce_reload() {
  reload_announcing_ = true;
  announce_deadline_ = uv_now(&loop_) + 5000;
  if (!reload_timer_) reload_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  uv_timer_start(
      reload_timer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<Server*>(t->data);
        bool applied = true;
        for (const auto& w : self->workers_)
          applied = applied && w->listeners_applied() >= self->listeners_posted_;
        if (!applied && uv_now(t->loop) < self->announce_deadline_) return;
        uv_timer_stop(t);
        if (!applied)
          log::warn("a worker has not taken the new configuration after 5 s; counting the reload");
        self->reload_announcing_ = false;
        ++self->generation_;
        ++self->reloads_ok_;
        log::info("reloaded generation={}", self->generation_);
        self->reload_finished();
      },
      0, 1);
}

// The new listener set, with the sockets opened for it, to every worker.
void Server::commit_listeners(const conf::Config& next, OpenedSockets& fresh) {
  activation_.match(next);
  listeners_ = make_runtimes(next, tls_);
  // Forget binds no listener has any more (the workers close their sockets).
  BoundSockets kept;
  for (const auto& l : next.listeners) {
    for (const auto& e : l.bind) {
      std::string key = bind_key(l, e, bound_);
      if (auto it = bound_.find(key); it != bound_.end()) kept[key] = it->second;
      if (auto f = fresh.binds.find(key); f != fresh.binds.end()) {
        kept[key] = f->second.socket;
        log::info("listening listener={} address={}", l.name, f->second.socket.actual);
      }
    }
  }
  bound_ = std::move(kept);
  forget_held_unbound();
  store_listener_fds(next, fresh);
  remove_stored_fds(next);
  post_listeners(next, fresh);
}

void Server::commit_admin(const conf::Config& next) {
  if (admin_)
    log::info("admin listening address={}", admin_address(*next.admin.listen, admin_->port()));
  else
    log::info("admin API closed");
}

void Server::commit_access_log(const conf::Config& next) {
  const std::string& target = next.global.access_log;
  if (target != "off") access_log_target_ = target;
  if (access_log_) access_log_->set_enabled(target != "off");
}

// Abort: everything prepared is closed (the Reload's destructor), the
// running configuration carries on untouched.
void Server::reload_abort(const std::vector<std::string>& errors) {
  if (reload_timer_) uv_timer_stop(reload_timer_.get());
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
    health_targets(pools, tls_);
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

}  // namespace lb::app
