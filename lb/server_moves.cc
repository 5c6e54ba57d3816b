// Upgrade in place, second half (docs/upgrade.md, "Moving connections"):
// once the new program serves, the old one freezes its established TCP
// connections and sends them over the hand-over channel; the new one
// resumes them on its workers.
//
// Old side: every worker is asked to freeze (WorkerMessage::Freeze); each
// answers once per round on its own thread, into Move under its mutex, and
// wakes the main loop (Move::async). Sessions waiting for their client (a
// PROXY header or a ClientHello) move at once, in that state. Sessions
// still connecting to their backend are given kSettleMs to get there
// (asked again every kSettleRetryMs; a connect on the same network takes
// far less); then those still connecting move as not connected yet (the
// new program connects anew, see TcpSession::freeze). Rounds go on for up
// to kSettleMs more for what is between two states (a connect completed
// but not reported yet, a relay between the copy and splice paths); only
// what is still settling then finishes here. Then "DONE", and the usual
// drain ends the process once nothing is left. Should the new program be gone when a batch is sent, the
// batch's sessions are resumed here instead (nothing is lost to a dead successor).
//
// New side: the channel is watched by the main loop after SERVING; each
// batch is decoded and its sessions are spread over the workers
// (WorkerMessage::Resume), round-robin.
#include <unistd.h>

#include <cstring>

#include <condition_variable>
#include <mutex>

#include "core/handover/channel.h"
#include "core/log.h"
#include "lb/server.h"

namespace lb::app {

namespace {

constexpr std::chrono::milliseconds kMoveIoTimeout{10000};
constexpr uint64_t kSettleMs = 1000;
// After kSettleMs, rounds that move connecting sessions too, for at most
// this long (only a session between two states needs another one).
constexpr uint64_t kMoveConnectingMs = 1000;
constexpr uint64_t kSettleRetryMs = 20;
// Sessions per SESSIONS batch: two descriptors each, and the receiver holds
// a batch's descriptors at once.
constexpr size_t kSessionsPerBatch = 256;

}  // namespace

// ---- the old program --------------------------------------------------------

void Server::start_moving(int sock) {
  move_ = std::make_unique<Move>();
  move_->sock = sock;
  move_->started_ms = uv_now(&loop_);
  move_->async = make_uv<uv_async_t>(&loop_, this, nullptr, uv_async_init,
                                     [](uv_async_t* a) { static_cast<Server*>(a->data)->frozen_arrived(); });
  move_->retry = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  freeze_round();
}

void Server::freeze_round() {
  Move* m = move_.get();
  {
    std::lock_guard lk(m->mu);
    m->answers = 0;
    m->settling = 0;
  }
  for (auto& w : workers_) {
    core::WorkerMessage msg{core::WorkerMessage::Kind::Freeze, {}, {}};
    msg.connecting = uv_now(&loop_) - m->started_ms >= kSettleMs;
    msg.on_frozen = [m](core::FreezeResult r) {
      std::lock_guard lk(m->mu);
      for (auto& f : r.frozen) m->frozen.push_back(std::move(f));
      for (auto& u : r.udp) m->udp.push_back(std::move(u));
      m->settling += r.settling;
      ++m->answers;
      uv_async_send(m->async.get());
    };
    w->post(std::move(msg));
  }
}

void Server::frozen_arrived() {
  if (!move_) return;
  std::vector<core::FrozenSession> batch;
  std::vector<core::handover::UdpSession> udp;
  int64_t settling = 0;
  {
    std::lock_guard lk(move_->mu);
    if (move_->answers < workers_.size()) return;
    batch.swap(move_->frozen);
    udp.swap(move_->udp);
    settling = move_->settling;
  }
  // The UDP sessions of the first round only: the listeners stopped
  // taking new clients before it.
  if (move_->udp_sent) udp.clear();
  move_->udp_sent = true;
  send_frozen(batch, udp);
  if (settling > 0 && uv_now(&loop_) - move_->started_ms < kSettleMs + kMoveConnectingMs) {
    uv_timer_start(
        move_->retry.get(), [](uv_timer_t* t) { static_cast<Server*>(t->data)->freeze_round(); },
        kSettleRetryMs, 0);
    return;
  }
  if (move_->sock >= 0) core::handover::send_line(move_->sock, "DONE", kMoveIoTimeout);
  log::info("upgrade moved connections count={} kept={} settling={}", move_->moved, move_->kept, settling);
  end_moving();
}

void Server::send_frozen(std::vector<core::FrozenSession>& sessions,
                         std::vector<core::handover::UdpSession>& udp) {
  // UDP records go with the first batch (no descriptors: re-created there).
  for (size_t first = 0; first < sessions.size() || !udp.empty(); first += kSessionsPerBatch) {
    const size_t last = std::min(sessions.size(), first + kSessionsPerBatch);
    core::handover::HandoverState st;
    st.udp_sessions = std::move(udp);
    udp.clear();
    std::vector<int> fds;
    for (size_t i = first; i < last; ++i) {
      core::FrozenSession rec = sessions[i];  // a copy whose fds become indexes
      rec.client_fd = static_cast<int>(fds.size());
      fds.push_back(sessions[i].client_fd);
      if (sessions[i].backend_fd >= 0) {  // none before the session relays
        rec.backend_fd = static_cast<int>(fds.size());
        fds.push_back(sessions[i].backend_fd);
      }
      st.tcp_sessions.push_back(std::move(rec));
    }
    std::string err;
    const auto bytes = core::handover::encode(st, static_cast<uint32_t>(fds.size()));
    const std::string took = "TOOK " + std::to_string(last - first);
    if (move_->sock >= 0 &&
        core::handover::send_state(move_->sock, bytes, fds, kMoveIoTimeout, &err, "SESSIONS")) {
      // Closed here only once the new program says it has them: one that
      // died with the batch unread would take the connections with it.
      auto reply = core::handover::receive_line(move_->sock, kMoveIoTimeout);
      if (reply && *reply == took) {
        for (size_t i = first; i < last; ++i) {
          ::close(sessions[i].client_fd);
          if (sessions[i].backend_fd >= 0) ::close(sessions[i].backend_fd);
        }
        move_->moved += last - first;
        continue;
      }
      err = reply ? "unexpected reply: " + reply->substr(0, 100) : "no reply (the new program is gone)";
    }
    if (move_->sock >= 0) {
      log::error("upgrade cannot move connections, they stay here error=\"{}\"", err);
      ::close(std::exchange(move_->sock, -1));
    }
    std::vector<core::FrozenSession> rest(
        std::make_move_iterator(sessions.begin() + static_cast<long>(std::min(first, sessions.size()))),
        std::make_move_iterator(sessions.end()));
    move_->kept += rest.size();
    resume_here(std::move(rest));
    return;
  }
}

// ---- both: frozen records back into live sessions on this program's workers --

void Server::resume_here(std::vector<core::FrozenSession> sessions) {
  if (sessions.empty()) return;
  // What the records name, as this program knows it.
  std::map<std::pair<std::string, std::string>, core::BackendPtr> backends;
  for (const auto& p : control_->snapshot())
    for (const auto& b : p.backends) backends[{p.name, b.backend->id}] = b.backend;
  std::vector<std::vector<core::ResumeItem>> per_worker(workers_.size());
  size_t dropped = 0;
  for (auto& f : sessions) {
    core::ListenerRuntimePtr rt;
    for (const auto& l : listeners_)
      if (l->cfg.name == f.listener && l->cfg.protocol == conf::Protocol::Tcp) rt = l;
    // A session that is not relaying yet has no backend (it picks one here).
    core::BackendPtr backend;
    if (f.stage == core::FrozenSession::Stage::Relaying) {
      auto b = backends.find({f.pool, f.backend});
      if (b != backends.end()) backend = b->second;
    }
    if (!rt || (f.stage == core::FrozenSession::Stage::Relaying && !backend)) {
      ++dropped;
      core::discard(f);
      continue;
    }
    per_worker[next_resume_worker_++ % workers_.size()].push_back({rt, std::move(backend), std::move(f)});
  }
  if (dropped) log::warn("connections without their listener or backend here, reset count={}", dropped);
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (per_worker[i].empty()) continue;
    core::WorkerMessage msg{core::WorkerMessage::Kind::Resume, {}, {}};
    msg.resume = std::move(per_worker[i]);
    workers_[i]->post(std::move(msg));
  }
}

void Server::end_moving() {
  if (!move_) return;
  move_->async.reset();
  move_->retry.reset();
  if (move_->sock >= 0) ::close(move_->sock);
  move_.reset();
}

// ---- the new program --------------------------------------------------------

void Server::receive_moves(int sock) {
  moves_in_sock_ = sock;
  moves_in_poll_ = make_uv<uv_poll_t>(&loop_, this, nullptr, uv_poll_init, sock);
  uv_poll_start(moves_in_poll_.get(), UV_READABLE,
                [](uv_poll_t* p, int, int) { static_cast<Server*>(p->data)->moves_arrived(); });
}

void Server::moves_arrived() {
  std::string err;
  auto rec = core::handover::receive_state(moves_in_sock_, kMoveIoTimeout, &err);
  if (!rec || rec->kind != "SESSIONS") {
    // "DONE", or the old program closed the channel (a version 1 writer
    // sends no sessions and closes it after SERVING).
    if (!rec && err != "channel closed before the state")
      log::warn("upgrade: the connections' channel failed error=\"{}\"", err);
    if (rec)
      for (int fd : rec->fds) ::close(fd);
    log::info("upgrade took over connections count={}", moved_in_);
    end_moves_in();
    return;
  }
  auto st = core::handover::decode(rec->bytes, static_cast<uint32_t>(rec->fds.size()), &err);
  if (!st) {
    log::error("upgrade: unreadable batch of connections, reset error=\"{}\"", err);
    for (int fd : rec->fds) ::close(fd);
    return;
  }
  for (auto& f : st->tcp_sessions) {
    // Indexes to descriptors; each is used by one record only.
    f.client_fd = std::exchange(rec->fds[static_cast<size_t>(f.client_fd)], -1);
    if (f.backend_fd >= 0) f.backend_fd = std::exchange(rec->fds[static_cast<size_t>(f.backend_fd)], -1);
  }
  for (int fd : rec->fds)
    if (fd >= 0) ::close(fd);
  const size_t n = st->tcp_sessions.size();
  moved_in_ += n;
  pin_udp_sessions(st->udp_sessions);
  resume_here(std::move(st->tcp_sessions));
  // The old program closes its copies on this.
  core::handover::send_line(moves_in_sock_, "TOOK " + std::to_string(n), kMoveIoTimeout);
}

void Server::pin_udp_sessions(const std::vector<core::handover::UdpSession>& sessions) {
  if (sessions.empty()) return;
  std::map<std::pair<std::string, std::string>, core::BackendPtr> backends;
  for (const auto& p : control_->snapshot())
    for (const auto& b : p.backends) backends[{p.name, b.backend->id}] = b.backend;
  size_t pinned = 0;
  for (const auto& u : sessions) {
    auto b = backends.find({u.pool, u.backend});
    if (b == backends.end() || u.client.size() > sizeof(sockaddr_storage)) continue;
    sockaddr_storage client{};
    std::memcpy(&client, u.client.data(), u.client.size());
    shared_.udp_pins.add(u.listener, client, b->second);
    ++pinned;
  }
  log::info("upgrade took over udp sessions count={}", pinned);
  // A client that never sends again would keep its pin: they go once the
  // longest session_timeout has passed (its session would have ended).
  conf::Duration longest{0};
  for (const auto& l : config_.listeners) longest = std::max(longest, l.session_timeout);
  if (!pins_timer_) pins_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  uv_timer_start(
      pins_timer_.get(), [](uv_timer_t* t) { static_cast<Server*>(t->data)->shared_.udp_pins.clear(); },
      static_cast<uint64_t>(longest.count()) + 1000, 0);
}

// Before the state is sent: the UDP sessions, so that the new program's
// workers start with them pinned (they read the same sockets at once).
// Blocks the main loop until every worker answered (they answer at once;
// bounded all the same).
std::vector<core::handover::UdpSession> Server::list_udp_sessions() {
  struct Answers {
    std::mutex mu;
    std::condition_variable cv;
    size_t answers = 0;
    std::vector<core::handover::UdpSession> udp;
  };
  auto a = std::make_shared<Answers>();
  for (auto& w : workers_) {
    core::WorkerMessage msg{core::WorkerMessage::Kind::Freeze, {}, {}};
    msg.tcp = false;
    msg.on_frozen = [a](core::FreezeResult r) {
      std::lock_guard lk(a->mu);
      for (auto& u : r.udp) a->udp.push_back(std::move(u));
      ++a->answers;
      a->cv.notify_one();
    };
    w->post(std::move(msg));
  }
  std::unique_lock lk(a->mu);
  if (!a->cv.wait_for(lk, std::chrono::seconds(2), [&] { return a->answers == workers_.size(); }))
    log::warn("upgrade: not every worker listed its UDP sessions in time");
  return std::move(a->udp);
}

void Server::end_moves_in() {
  moves_in_poll_.reset();
  if (moves_in_sock_ >= 0) ::close(std::exchange(moves_in_sock_, -1));
}

}  // namespace lb::app
