// TcpSession, freezing (Relaying | HalfClosed -> Frozen) and resuming from a
// FrozenSession (-> Relaying | HalfClosed, on the copy path); and the same
// for a session that is not relaying yet (Header | Hello | Connecting ->
// Frozen -> Header | Hello | Routing).
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/proxy_protocol.h"
#include "core/tcp_session.h"

namespace lb::core {

namespace {

FrozenSession::Way frozen_way(const Direction& d, std::string pending) {
  FrozenSession::Way w;
  w.pending = std::move(pending);
  w.eof = d.eof;
  w.shutdown_done = d.finished;
  return w;
}

int dup_cloexec(uv_tcp_t* h) {
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(h), &fd) != 0) return -1;
  // dup(), then CLOEXEC: see switch_to_splice().
  int d = ::dup(fd);
  if (d >= 0) ::fcntl(d, F_SETFD, FD_CLOEXEC);
  return d;
}

void reset_fd(int fd) {
  if (fd < 0) return;
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

}  // namespace

void discard(FrozenSession& f) {
  reset_fd(f.client_fd);
  reset_fd(f.backend_fd);
  f.client_fd = f.backend_fd = -1;
}

bool FrozenSession::operator==(const FrozenSession& o) const {
  return stage == o.stage && deadline_ms == o.deadline_ms && client_fd == o.client_fd &&
         backend_fd == o.backend_fd && path == o.path && to_backend == o.to_backend &&
         to_client == o.to_client && listener == o.listener && pool == o.pool && backend == o.backend &&
         std::memcmp(&client, &o.client, sizeof client) == 0 &&
         std::memcmp(&local, &o.local, sizeof local) == 0 && flow_hash == o.flow_hash &&
         started_ms == o.started_ms && bytes_to_backend == o.bytes_to_backend &&
         bytes_to_client == o.bytes_to_client;
}

bool TcpSession::freeze(FrozenSession* out, bool connecting) {
  // OpenSSL's state cannot move: a terminated or re-encrypted session ends
  // where it is.
  if (tls_ || up_tls_) return false;
  if (state_ == State::Header || state_ == State::Hello || (connecting && state_ == State::Connecting))
    return freeze_waiting(out);
  if (!relaying()) return false;
  FrozenSession f;
  if (path_ == Path::Copy) {
    // The handles keep their fds until they close: take duplicates. What
    // libuv has not written yet is copied out of the queued writes, which
    // the close then cancels.
    f.path = FrozenSession::Path::Copy;
    f.client_fd = dup_cloexec(client_.get());
    f.backend_fd = f.client_fd < 0 ? -1 : dup_cloexec(upstream_.get());
    if (f.backend_fd < 0) {
      if (f.client_fd >= 0) ::close(f.client_fd);
      return false;
    }
    f.to_backend = frozen_way(up_.flow, unwritten(up_, upstream_.get()));
    f.to_client = frozen_way(down_.flow, unwritten(down_, client_.get()));
    enter_frozen();
    close_handle(client_, false);
    close_handle(upstream_, false);
  } else {
    // Between the paths (the relay is handing back): not now.
    if (path_ != Path::Splice || !relay_->running()) return false;
    f.path = FrozenSession::Path::Splice;
    if (!relay_->freeze(&f.to_backend.pending, &f.to_client.pending, &f.client_fd, &f.backend_fd))
      return false;
    // The relay's closed() follows and drops its reference.
    for (bool to_backend : {true, false}) {
      FrozenSession::Way& w = to_backend ? f.to_backend : f.to_client;
      w = frozen_way(relay_->flow(to_backend), std::move(w.pending));
    }
    enter_frozen();
  }
  f.listener = listener_->cfg.name;
  f.pool = backend_->pool;
  f.backend = backend_->id;
  f.client = client_addr_.storage();
  if (have_local_) f.local = local_addr_.storage();
  f.flow_hash = flow_hash_;
  f.started_ms = started_ms_;
  f.bytes_to_backend = bytes_to_backend_;
  f.bytes_to_client = bytes_to_client_;
  *out = std::move(f);
  return true;
}

bool TcpSession::connect_unanswered() const {
  uv_os_fd_t fd;
  if (!upstream_ || uv_fileno(reinterpret_cast<const uv_handle_t*>(upstream_.get()), &fd) != 0) return false;
  tcp_info ti{};
  socklen_t len = sizeof ti;
  return ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state == TCP_SYN_SENT;
}

// A session waiting for its client (Header, Hello) or its backend
// (Connecting): only the client's socket moves, with what lb has read from
// it and not passed on.
bool TcpSession::freeze_waiting(FrozenSession* out) {
  // A connect the kernel has completed but libuv has not reported yet:
  // the session relays in a moment, and moves then. One whose SYN is
  // unanswered is given up: closing a socket in SYN_SENT sends nothing, so
  // the backend never accepts it (an answer that arrives later gets a reset
  // from the kernel), and nothing was sent on it. The resuming side
  // connects anew.
  if (state_ == State::Connecting && !connect_unanswered()) return false;
  FrozenSession f;
  f.client_fd = dup_cloexec(client_.get());
  if (f.client_fd < 0) return false;
  switch (state_) {
    case State::Header:
      f.stage = FrozenSession::Stage::Header;
      f.to_backend.pending.assign(reinterpret_cast<const char*>(header_.data), header_.len);
      f.deadline_ms = wait_deadline_ms_;
      break;
    case State::Hello:
      f.stage = FrozenSession::Stage::Hello;
      f.to_backend.pending = early_;  // the hello so far
      f.deadline_ms = wait_deadline_ms_;
      break;
    default:
      f.stage = FrozenSession::Stage::Connecting;
      f.pool = *pool_;
      f.to_backend.pending = early_;
      break;
  }
  enter_frozen();
  release_backend();
  close_handle(client_, false);
  close_handle(upstream_, false);  // Connecting: the attempt is given up (above)
  f.listener = listener_->cfg.name;
  f.client = client_addr_.storage();
  if (have_local_) f.local = local_addr_.storage();
  f.flow_hash = flow_hash_;
  f.started_ms = started_ms_;
  *out = std::move(f);
  return true;
}

bool TcpSession::settling() const {
  if (tls_) return false;
  switch (state_) {
    case State::Accepting:
    case State::Header:
    case State::Routing:
    case State::Hello:
    case State::Connecting:
      return true;
    case State::Relaying:
    case State::HalfClosed:
      return path_ == Path::Unsplicing || (path_ == Path::Splice && !relay_->running());
    default:
      return false;
  }
}

void TcpSession::enter_frozen() {
  state_ = State::Frozen;
  worker_.timeouts().disarm(&timeout_);
  worker_.timeouts().disarm(&keepalive_);
  worker_.cancel_budget_wait(this);
  starved_ = 0;
}

void TcpSession::resume(Worker& worker, ListenerRuntimePtr listener, BackendPtr backend, FrozenSession&& f) {
  auto* s = new TcpSession(worker, std::move(listener), nullptr);
  if (f.stage == FrozenSession::Stage::Relaying)
    s->restore(std::move(backend), f);
  else
    s->restore_waiting(f);
}

// Goes on where the frozen session stopped: the header or hello parsed
// again with the bytes read so far (then read on, until the same deadline),
// or a backend chosen and connected to (a new attempt, with the whole
// connect_timeout and every retry).
void TcpSession::restore_waiting(FrozenSession& f) {
  const int client_fd = std::exchange(f.client_fd, -1);
  client_addr_ = InetAddress(f.client);
  if (f.local.ss_family != AF_UNSPEC) {
    local_addr_ = InetAddress(f.local);
    have_local_ = true;
  }
  // Before its PROXY header the client address is not final: only the
  // listener's and the global place are taken (step 1), the rest follows
  // the header as for any connection.
  admission_.readmit(worker_.shared(), *listener_, client_addr_.get(),
                     f.stage != FrozenSession::Stage::Header);
  flow_hash_ = f.flow_hash;
  started_ms_ = f.started_ms;
  client_ = make_uv<uv_tcp_t>(worker_.loop(), this, nullptr, uv_tcp_init);
  ++refs_;
  if (uv_tcp_open(client_.get(), client_fd) != 0) {
    linger l{1, 0};
    ::setsockopt(client_fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(client_fd);
    finish(Result::Reset, true);
    return;
  }
  const std::string& got = f.to_backend.pending;
  const uint64_t now = uv_now(worker_.loop());
  const uint64_t left = f.deadline_ms > now ? f.deadline_ms - now : 0;
  wait_deadline_ms_ = f.deadline_ms;
  switch (f.stage) {
    case FrozenSession::Stage::Header:
      if (got.size() >= proxy::kMaxHeader) return refuse_header("oversized");
      state_ = State::Header;
      header_.data = new uint8_t[proxy::kMaxHeader];
      header_.len = got.copy(reinterpret_cast<char*>(header_.data), got.size());
      worker_.timeouts().arm(&timeout_, left);
      on_header_bytes(0);
      break;
    case FrozenSession::Stage::Hello:
      if (got.size() >= tls::kMaxClientHello) return refuse_tls("too large");
      state_ = State::Hello;
      pool_ = &listener_->cfg.pool;
      hello_ = std::make_unique<tls::Passthrough>();
      early_ = got;
      worker_.timeouts().arm(&timeout_, left);
      if (!early_.empty()) on_hello_bytes(0, nullptr);
      // Read on, as enter_hello() does: the rest of the hello, then what
      // the client sends while its backend connects.
      if (state_ == State::Hello) {
        if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_.get()), on_alloc, on_read_cb) != 0) {
          refuse_tls("read");
          return;
        }
        early_reading_ = true;
      }
      return;
    default:
      // Routed as the old program routed it: the listener's pool, or on a
      // passthrough listener the one its hello's server name routes to (the
      // hello is all of `got`, learnt again for the access log and the
      // PROXY header).
      state_ = State::Routing;
      pool_ = &listener_->cfg.pool;
      early_ = got;
      if (listener_->cfg.tls == conf::TlsMode::Passthrough) {
        hello_ = std::make_unique<tls::Passthrough>();
        tls::ClientHello hello;
        if (tls::parse(reinterpret_cast<const uint8_t*>(early_.data()), early_.size(), &hello).status ==
            tls::Status::Complete) {
          hello_->learn(hello, access_logged());
          pool_ = tls::route_pool(listener_->cfg, hello_->sni_key);
        }
      }
      choose_backend();
      return;
  }
  if (state_ == State::Header &&
      uv_read_start(reinterpret_cast<uv_stream_t*>(client_.get()), on_alloc, on_read_cb) != 0)
    finish(Result::Reset, false);
}

void TcpSession::restore(BackendPtr backend, FrozenSession& f) {
  int client_fd = f.client_fd, backend_fd = f.backend_fd;
  f.client_fd = f.backend_fd = -1;
  client_addr_ = InetAddress(f.client);
  if (f.local.ss_family != AF_UNSPEC) {
    local_addr_ = InetAddress(f.local);
    have_local_ = true;
  }
  // Counted as at accept, but never refused: the connection was admitted.
  // The destructor gives it back as for any session.
  admission_.readmit(worker_.shared(), *listener_, client_addr_.get());
  flow_hash_ = f.flow_hash;
  started_ms_ = f.started_ms;
  bytes_to_backend_ = f.bytes_to_backend;
  bytes_to_client_ = f.bytes_to_client;
  backend_ = std::move(backend);
  pool_ = &backend_->pool;
  backend_->active.fetch_add(1, std::memory_order_relaxed);
  holds_active_ = true;
  state_ = State::Relaying;
  path_ = Path::Copy;
  if (!adopt_fds(client_fd, backend_fd)) return;
  worker_.timeouts().arm(&timeout_, static_cast<uint64_t>(listener_->cfg.idle_timeout.count()));
  // The previous program may have handed the socket over before its own
  // keepalive_ was due.
  arm_keepalive();
  // First what was in flight, in order, then the EOFs still to pass on.
  struct Leg {
    Way& way;
    FrozenSession::Way& frozen;
    uv_tcp_t* src;
    uv_tcp_t* dst;
  };
  Leg legs[2] = {{up_, f.to_backend, client_.get(), upstream_.get()},
                 {down_, f.to_client, upstream_.get(), client_.get()}};
  for (Leg& l : legs) {
    if (l.frozen.shutdown_done) {
      l.way.flow.eof = l.way.flow.shutdown_sent = l.way.flow.finished = true;
      state_ = State::HalfClosed;
    }
    if (!l.frozen.pending.empty())
      forward(l.way, l.src, l.dst, l.frozen.pending.data(), l.frozen.pending.size());
    if (!relaying()) return;
  }
  for (Leg& l : legs) {
    if (l.frozen.eof && !l.frozen.shutdown_done) on_eof(l.way, l.dst);
    if (!relaying()) return;
  }
  if (relay_finished(up_.flow, down_.flow)) {
    finish(Result::Ok, false);
    return;
  }
  if (up_.flow.wants_read() && !resume_read(client_.get())) return;
  if (down_.flow.wants_read()) resume_read(upstream_.get());
}

}  // namespace lb::core
