// Upgrade in place (docs/upgrade.md): the old program's steps (check the new
// program, send the hand-over, wait for it to serve, then drain and leave)
// and the new program's (receive it, serve, report). Also the copies of the
// listening sockets an upgrade hands over, and systemd's descriptor store.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "core/handover/channel.h"
#include "core/log.h"
#include "lb/server.h"
#include "lb/upgrade.h"

namespace lb::app {

namespace {

// How long the old program waits for the new one's checks; its start-up
// waits for every backend's first probe.
constexpr std::chrono::milliseconds kUpgradeCheckTimeout{10000};
constexpr std::chrono::milliseconds kHandoverIoTimeout{10000};

}  // namespace

// ---- held sockets and the descriptor store ----------------------------------

void Server::hold_copies(const OpenedSockets& fresh) {
  for (const auto& [key, b] : fresh.binds) {
    std::vector<int>& held = held_[key];
    for (int fd : held)
      if (fd >= 0) ::close(fd);
    held.clear();
    // dup(), not fcntl(F_DUPFD_CLOEXEC): ThreadSanitizer sees dup() create
    // the copy, so closing it later is no race with a worker that once had
    // the number. Close-on-exec before anything can spawn (main thread only).
    for (const OwnedFd& fd : b.fds) {
      int copy = fd.get() >= 0 ? ::dup(fd.get()) : -1;
      if (copy >= 0) ::fcntl(copy, F_SETFD, FD_CLOEXEC);
      held.push_back(copy);
    }
  }
}

void Server::forget_held_unbound() {
  for (auto it = held_.begin(); it != held_.end();) {
    if (bound_.count(it->first)) {
      ++it;
      continue;
    }
    for (int fd : it->second)
      if (fd >= 0) ::close(fd);  // the workers close theirs: the socket goes
    it = held_.erase(it);
  }
}

void Server::close_held() {
  for (auto& [key, list] : held_)
    for (int fd : list)
      if (fd >= 0) ::close(fd);
  held_.clear();
}

void Server::store_listener_fds(const conf::Config& cfg, const OpenedSockets& fresh) {
  if (!notifier_.enabled()) return;
  for (const auto& l : cfg.listeners) {
    std::vector<int> fds;
    for (const auto& e : l.bind) {
      auto it = fresh.binds.find(bind_key(l, e, bound_));
      // Inherited sockets are systemd's already (stored, or its socket unit's).
      if (it == fresh.binds.end() || it->second.socket.inherited) continue;
      for (const OwnedFd& fd : it->second.fds)
        if (fd.get() >= 0) fds.push_back(fd.get());
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

void Server::remove_stored_fds(const conf::Config& next) {
  if (!notifier_.enabled()) return;
  for (const auto& old : config_.listeners) {
    bool kept_name = std::any_of(next.listeners.begin(), next.listeners.end(),
                                 [&](const conf::Listener& l) { return l.name == old.name; });
    if (!kept_name && systemd::valid_fdname(old.name)) notifier_.remove_stored_fds(old.name);
  }
}

// ---- the old program --------------------------------------------------------

std::string Server::upgrade() {
  std::string why;
  if (draining_)
    why = "lb is stopping";
  else if (upgrade_)
    why = "an upgrade is already in progress";
  else if (reload_ || reload_announcing_)
    why = "a reload is in progress";
  if (why.empty()) {
    // The checks block this loop for as long as the new program takes (up
    // to their timeout): the watchdog must not starve meanwhile.
    upgrade::Keepalive keepalive;
    if (watchdog_timer_) {
      keepalive.every =
          std::chrono::milliseconds(std::max<uint64_t>(1, uv_timer_get_repeat(watchdog_timer_.get())));
      keepalive.fn = [this] { notifier_.watchdog(); };
    }
    why = upgrade::check_program(exe_path_, config_.path, kUpgradeCheckTimeout, keepalive);
  }
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
      auto it = held_.find(bind_key(l, e, bound_));
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
  // The access log's descriptor, when the file's target is the running one.
  OwnedFd log_fd(access_log_ && access_log_target_ == config_.global.access_log ? access_log_->dup_fd() : -1);
  if (log_fd.get() >= 0) {
    st.access_log_fd = static_cast<uint32_t>(fds.size());
    fds.push_back(log_fd.get());
  }
  if (admin_ && admin_->listener_fd() >= 0) {
    st.admin_fd = static_cast<uint32_t>(fds.size());
    fds.push_back(admin_->listener_fd());
  }
  for (const auto& rt : listeners_) {
    core::ListenerTotals t = rt->stats->sum();
    st.listener_counters.push_back({rt->cfg.name, t.connections, t.rejected_acl, t.rejected_limit,
                                    t.rejected_no_backend, t.rejected_proxy, t.rejected_tls, t.datagrams_in,
                                    t.datagrams_out, t.tls_ok, t.tls_failed, t.tls_timeout});
  }
  st.backends = control_->save();
  st.udp_sessions = list_udp_sessions();
  const std::vector<uint8_t> bytes = core::handover::encode(st, static_cast<uint32_t>(fds.size()));

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    ++upgrades_refused_;
    log::error("upgrade refused reason=\"socketpair: {}\"", strerror(errno));
    return "socketpair failed";
  }
  upgrade_ = std::make_unique<Upgrade>();
  upgrade_->sock = sv[0];
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
  upgrade_->poll = make_uv<uv_poll_t>(&loop_, this, nullptr, uv_poll_init, upgrade_->sock);
  uv_poll_start(upgrade_->poll.get(), UV_READABLE,
                [](uv_poll_t* p, int, int) { static_cast<Server*>(p->data)->upgrade_reply(); });
  upgrade_->timer = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  uv_timer_start(
      upgrade_->timer.get(),
      [](uv_timer_t* t) {
        static_cast<Server*>(t->data)->upgrade_refused("the new program did not serve in time");
      },
      static_cast<uint64_t>(longest_probe_timeout(config_).count()) + 30000, 0);
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
  up->poll.reset();  // stops polling before the descriptor closes
  up->timer.reset();
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
  // The channel stays open for the established connections.
  const int sock = std::exchange(upgrade_->sock, -1);
  end_upgrade();
  if (watchdog_timer_) uv_timer_stop(watchdog_timer_.get());
  if (admin_) admin_->close();
  if (reload_) reload_abort({"upgraded"});
  draining_ = true;
  stop_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  // Drain first: the workers stop accepting before they freeze (their
  // messages are handled in order), so no session starts after its worker
  // froze the others.
  stop_accepting();
  start_moving(sock);
}

// ---- the new program --------------------------------------------------------

// Before anything is bound.
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
  if (rec->kind != "STATE") {
    for (int f : rec->fds) ::close(f);
    return fail("expected the state, got \"" + rec->kind + "\"");
  }
  auto st = core::handover::decode(rec->bytes, static_cast<uint32_t>(rec->fds.size()), &err);
  if (!st) {
    for (int f : rec->fds) ::close(f);
    return fail("cannot read the hand-over: " + err);
  }
  // The listening sockets become inherited sockets named after their
  // listeners: socket activation's matching (by name, then address) and its
  // per-worker groups do the rest.
  handover_first_ = activation_.count();
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
        ::close(in.fd);
        rec->fds[i] = -1;
        continue;
      }
      activation_.add(in);
    }
  activation_.match(config_);
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

int Server::take_admin_fd() {
  if (!handover_ || !handover_->admin_fd) return -1;
  return std::exchange(handover_fds_[*handover_->admin_fd], -1);
}

// Counters never go back: what the previous program counted is the base.
void Server::restore_counters() {
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
    b.tls_ok = c.tls_ok;
    b.tls_failed = c.tls_failed;
    b.tls_timeout = c.tls_timeout;
  }
  generation_ = handover_->generation + 1;
  reloads_ok_ = handover_->reloads_ok;
  reloads_error_ = handover_->reloads_error;
  upgrades_ok_ = handover_->upgrades_ok + 1;
  upgrades_refused_ = handover_->upgrades_refused;
  access_log_dropped_base_ = handover_->access_log_dropped;
}

// The handed-over sockets live on in the workers and held_; the copies
// received are not kept (unlike systemd's, which a later reload may claim
// again), so the descriptor count is what it was before.
void Server::drop_handover_sockets() {
  activation_.close_from(handover_first_);
  activation_.match(config_);
}

void Server::took_over() {
  const int fd = std::exchange(handover_fd_, -1);
  // Still here when the admin listener was not opened from it.
  if (int admin = take_admin_fd(); admin >= 0) ::close(admin);
  // ... and the access log's, when it was not used (access_log = "off").
  if (handover_->access_log_fd && handover_fds_[*handover_->access_log_fd] >= 0)
    ::close(std::exchange(handover_fds_[*handover_->access_log_fd], -1));
  // The listening sockets among them were closed by drop_handover_sockets().
  handover_fds_.clear();
  // Logged first: the old program's "handed over" line then always follows it.
  log::info("upgraded generation={}", generation_);
  notifier_.main_pid_ready();
  core::handover::send_line(fd, "SERVING " + std::to_string(::getpid()), kHandoverIoTimeout);
  if (abort_after_takeover_) std::abort();
  // The old program now sends its established connections on it.
  receive_moves(fd);
}

}  // namespace lb::app
