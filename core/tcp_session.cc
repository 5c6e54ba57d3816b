#include "core/tcp_session.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "core/access_log.h"
#include "core/log.h"
#include "core/proxy_protocol.h"
#include "core/socket.h"

namespace lb::core {

// A queued write: header and the bytes that could not be written at once, in
// one allocation. Only created when the destination's socket buffer is full.
struct TcpSession::WriteReq {
  uv_write_t req;
  TcpSession* session;
  Direction* dir;
  uv_tcp_t* src;
  size_t len;
  // The bytes follow the header in the same allocation.
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

void TcpSession::start(Worker& worker, ListenerRuntimePtr listener, uv_tcp_t* client) {
  auto* s = new TcpSession(worker, std::move(listener), client);
  s->begin();
}

TcpSession::TcpSession(Worker& worker, ListenerRuntimePtr listener, uv_tcp_t* client)
    : worker_(worker), listener_(std::move(listener)), client_(client) {
  client_->data = this;
  refs_ = 1;
  timeout_.fire = &TcpSession::on_timeout;
  timeout_.owner = this;
  started_ms_ = uv_now(worker_.loop());
  bump<int64_t>(listener_->stats->slot(worker_.index()).active, 1);
  worker_.session_opened(this);
}

TcpSession::~TcpSession() {
  worker_.cancel_budget_wait(this);
  delete[] header_buf_;
  if (holds_source_) listener_->stats->sources.release(reinterpret_cast<const sockaddr*>(&client_addr_));
  listener_->stats->close_one();
  bump<int64_t>(listener_->stats->slot(worker_.index()).active, -1);
  worker_.session_closed(this);
}

void TcpSession::begin() {
  int len = sizeof client_addr_;
  if (uv_tcp_getpeername(client_, reinterpret_cast<sockaddr*>(&client_addr_), &len) != 0) {
    // The client is already gone (reset before we got to it).
    finish(Result::Reset, false);
    return;
  }
  // TCP_NODELAY: inherited from the listening socket (Worker sets it there).
  if (listener_->cfg.accept_proxy_protocol) {
    // A PROXY header names the client, and everything after it (allow/deny,
    // the per-source limit, hashing) believes it: only a trusted peer (the
    // balancer in front) may send one. The peer itself is checked, never the
    // address it claims.
    if (!listener_->proxy_trusted.empty() &&
        !listener_->proxy_trusted.contains(reinterpret_cast<const sockaddr*>(&client_addr_))) {
      reject_header("untrusted peer");
      return;
    }
    state_ = State::Header;
    header_buf_ = new uint8_t[proxy::kMaxHeader];
    worker_.timeouts().arm(&timeout_, kProxyHeaderTimeoutMs);
    if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_), on_alloc, on_read_cb) != 0)
      finish(Result::Reset, false);
    return;
  }
  admit();
}

// Bytes of the client's PROXY header arrived in header_buf_ (or the client
// closed, nread < 0). Nothing of it, nor anything after it, may reach a
// backend unless the whole header is valid.
void TcpSession::header_bytes(ssize_t nread) {
  if (nread < 0) {
    reject_header(nread == UV_EOF ? "closed before the header" : "reset before the header");
    return;
  }
  header_len_ += static_cast<size_t>(nread);
  proxy::ParseResult r = proxy::parse(header_buf_, header_len_);
  if (r.status == proxy::Status::Invalid) {
    reject_header(r.error ? r.error : "malformed");
    return;
  }
  if (r.status == proxy::Status::NeedMore) {
    if (header_len_ >= proxy::kMaxHeader) reject_header("oversized");
    return;
  }
  uv_read_stop(reinterpret_cast<uv_stream_t*>(client_));
  worker_.timeouts().disarm(&timeout_);
  if (!r.header.local) {
    client_addr_ = r.header.src;
    local_addr_ = r.header.dst;
    have_local_ = true;
  }
  // Keep what the client sent after the header for the backend.
  header_len_ -= r.consumed;
  std::memmove(header_buf_, header_buf_ + r.consumed, header_len_);
  state_ = State::Connecting;
  admit();
}

void TcpSession::reject_header(const char* why) {
  log::debug("proxy header refused listener={} reason=\"{}\"", listener_->cfg.name, why);
  bump(listener_->stats->slot(worker_.index()).rejected_proxy);
  finish(Result::Refused, false);
}

// Access control and the per-source limit, on the client address as final
// (after a PROXY header); then the first backend.
void TcpSession::admit() {
  auto& slot = listener_->stats->slot(worker_.index());
  auto* client = reinterpret_cast<const sockaddr*>(&client_addr_);
  if (listener_->acl.enabled() && !listener_->acl.permits(client)) {
    bump(slot.rejected_acl);
    finish(Result::Refused, false);
    return;
  }
  if (uint64_t limit = listener_->cfg.max_connections_per_source) {
    if (!listener_->stats->sources.try_acquire(client, limit)) {
      bump(slot.rejected_limit);
      finish(Result::Refused, false);
      return;
    }
    holds_source_ = true;
  }
  bump(slot.connections);
  flow_hash_ = worker_.flow_hash_for(*listener_, client);
  connect_next();
}

void TcpSession::connect_next() {
  auto& cfg = listener_->cfg;
  Backend* b = nullptr;
  const PoolTable* pool = nullptr;
  if (attempts_ <= cfg.retries && attempts_ < kMaxAttempts) {
    PickContext ctx;
    ctx.hash = flow_hash_;
    ctx.attempt = attempts_;
    ctx.avoid = std::span<const Backend* const>(tried_, attempts_);
    b = worker_.pick(*listener_, ctx, &pool);
  }
  if (!b) {
    if (attempts_ == 0) {
      auto& slot = listener_->stats->slot(worker_.index());
      // Every usable backend at its max_connections is a limit, not an outage.
      if (pool && all_full(*pool))
        bump(slot.rejected_limit);
      else
        bump(slot.rejected_no_backend);
      finish(Result::Refused, false);
    } else {
      finish(Result::ConnectFailed, false);
    }
    return;
  }
  tried_[attempts_++] = b;
  backend_ = b->shared_from_this();
  backend_->active.fetch_add(1, std::memory_order_relaxed);
  holds_active_ = true;

  auto* up = new Upstream;
  uv_tcp_init(worker_.loop(), &up->tcp);
  up->tcp.data = this;
  up->connect.data = this;
  upstream_ = &up->tcp;
  ++refs_;
  int rc = uv_tcp_connect(&up->connect, &up->tcp, reinterpret_cast<const sockaddr*>(&b->address.addr),
                          on_connect_cb);
  if (rc != 0) {
    // Immediate failure (no route, no ephemeral port): same as a refused connect.
    connect_failed();
    return;
  }
  // Reading is asked for now, while libuv registers the socket for the
  // connect: it is then added once for both, instead of an add that fails
  // (EEXIST) and a modify after the connect. libuv reports the connect
  // before any read, so nothing is read while Connecting.
  upstream_reading_ = uv_read_start(reinterpret_cast<uv_stream_t*>(upstream_), on_alloc, on_read_cb) == 0;
  worker_.timeouts().arm(&timeout_, static_cast<uint64_t>(cfg.connect_timeout.count()));
}

void TcpSession::on_connect_cb(uv_connect_t* req, int status) {
  auto* s = static_cast<TcpSession*>(req->data);
  // A superseded attempt (closed after its timeout) reports UV_ECANCELED.
  if (status == UV_ECANCELED || req->handle != reinterpret_cast<uv_stream_t*>(s->upstream_) ||
      s->state_ != State::Connecting)
    return;
  if (status < 0) {
    s->connect_failed();
  } else {
    s->connected();
  }
}

void TcpSession::connect_failed() {
  worker_.timeouts().disarm(&timeout_);
  backend_->connect_failures.fetch_add(1, std::memory_order_relaxed);
  backend_->consecutive_failures.fetch_add(1, std::memory_order_relaxed);
  if (auto& report = worker_.shared().report_backend) report(backend_, false);
  release_backend();
  close_handle(upstream_, false);
  connect_next();
}

// Gives back the backend's active count; backend_ itself stays set (and
// alive) for the access log and the counters until the session is gone.
void TcpSession::release_backend() {
  if (!holds_active_) return;
  holds_active_ = false;
  backend_->active.fetch_sub(1, std::memory_order_relaxed);
}

void TcpSession::connected() {
  state_ = State::Relaying;
  backend_->total.fetch_add(1, std::memory_order_relaxed);
  if (backend_->consecutive_failures.load(std::memory_order_relaxed) != 0) {
    backend_->consecutive_failures.store(0, std::memory_order_relaxed);
    if (auto& report = worker_.shared().report_backend) report(backend_, true);
  }
  uv_tcp_nodelay(upstream_, 1);
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(upstream_), &fd) == 0)
    set_keepalive(fd, backend_keepalive(listener_->cfg.idle_timeout));
  worker_.timeouts().arm(&timeout_, static_cast<uint64_t>(listener_->cfg.idle_timeout.count()));
  // What the backend gets before the client's stream: our PROXY header, then
  // whatever the client sent right behind its own header.
  std::string preface;
  if (listener_->cfg.proxy_protocol != conf::ProxyProtocol::Off) {
    preface = proxy_header();
    if (preface.empty()) {
      finish(Result::Reset, true);
      return;
    }
  }
  if (header_buf_) {
    if (header_len_ > 0) {
      count_bytes(true, header_len_);
      preface.append(reinterpret_cast<const char*>(header_buf_), header_len_);
    }
    delete[] header_buf_;
    header_buf_ = nullptr;
    header_len_ = 0;
  }
  if (!preface.empty()) {
    forward(up_, client_, upstream_, preface.data(), preface.size());
    if (state_ != State::Relaying) return;
  }
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_), on_alloc, on_read_cb) != 0 ||
      (!upstream_reading_ &&
       uv_read_start(reinterpret_cast<uv_stream_t*>(upstream_), on_alloc, on_read_cb) != 0)) {
    finish(Result::Reset, true);
  }
}

// The header to the backend: the client and what it connected to, or the
// addresses of the header the client itself sent. Empty on failure.
std::string TcpSession::proxy_header() {
  if (!have_local_) {
    int len = sizeof local_addr_;
    if (uv_tcp_getsockname(client_, reinterpret_cast<sockaddr*>(&local_addr_), &len) != 0) return {};
    have_local_ = true;
  }
  auto* src = reinterpret_cast<const sockaddr*>(&client_addr_);
  auto* dst = reinterpret_cast<const sockaddr*>(&local_addr_);
  char hdr[proxy::kMaxWrittenHeader];
  size_t n = listener_->cfg.proxy_protocol == conf::ProxyProtocol::V1
                 ? proxy::write_v1(src, dst, hdr, sizeof hdr)
                 : proxy::write_v2(src, dst, false, reinterpret_cast<uint8_t*>(hdr), sizeof hdr);
  return std::string(hdr, n);
}

// Moves a busy connection to splice(2), like HAProxy's splice-auto: the
// switch costs a few syscalls (two dups, two closes, epoll changes), more
// than a short exchange saves, so a connection starts on the copy path and
// switches once it has relayed kSpliceAfterBytes and had a read of
// kSpliceReadMin (a bulk stream, not small messages). Only at a quiet moment:
// nothing queued either way and no half-close under way, so every byte read
// so far has reached the kernel and the relay takes over a clean stream.
void TcpSession::maybe_splice() {
  if (state_ != State::Relaying || !bulk_seen_ || bytes_to_backend_ + bytes_to_client_ < kSpliceAfterBytes)
    return;
  if (up_.queued || down_.queued || up_.eof || down_.eof || up_.paused || down_.paused || starved_) return;
  // No useful pipe to be had for now (PipePool): stay on the copy path; the
  // pool tries again within a second and a later read retries the switch.
  if (!SpliceRelay::supported() || !worker_.pipe_pool().can_acquire()) return;
  if (uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(client_)) != 0 ||
      uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(upstream_)) != 0)
    return;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(client_));
  uv_read_stop(reinterpret_cast<uv_stream_t*>(upstream_));
  if (switch_to_splice({})) return;
  // Stay on the copy path.
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_), on_alloc, on_read_cb) != 0 ||
      uv_read_start(reinterpret_cast<uv_stream_t*>(upstream_), on_alloc, on_read_cb) != 0)
    finish(Result::Reset, true);
}

// Hands both sockets to a SpliceRelay: duplicates of their fds go to the
// relay, the uv_tcp_t handles close (libuv forbids polling an fd a live
// stream owns). False when that cannot happen; the copy path goes on then.
bool TcpSession::switch_to_splice(std::string_view preface) {
  uv_os_fd_t cfd, bfd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(client_), &cfd) != 0 ||
      uv_fileno(reinterpret_cast<uv_handle_t*>(upstream_), &bfd) != 0)
    return false;
  // dup() rather than fcntl(F_DUPFD_CLOEXEC): ThreadSanitizer follows fds
  // through dup, and a descriptor number another worker closed just before
  // would otherwise look like a race. lb never forks, so setting CLOEXEC
  // right after is as good.
  int c = ::dup(cfd);
  if (c < 0) return false;
  int b = ::dup(bfd);
  if (b < 0) {
    ::close(c);
    return false;
  }
  ::fcntl(c, F_SETFD, FD_CLOEXEC);
  ::fcntl(b, F_SETFD, FD_CLOEXEC);
  auto* relay = new SpliceRelay(worker_.loop(), worker_.pipe_pool(), c, b, &kSpliceHandler, this);
  if (relay->start(preface) != 0) {
    // Nothing moved yet: drop the duplicates (the originals stay open in
    // their handles) and stay on the copy path.
    int c2 = -1, b2 = -1;
    if (relay->take_fds(&c2, &b2)) {
      ::close(c2);
      ::close(b2);
    }
    delete relay;
    return false;
  }
  relay_ = relay;
  ++refs_;
  close_handle(client_, false);
  close_handle(upstream_, false);
  return true;
}

const SpliceRelay::Handler TcpSession::kSpliceHandler = {
    &TcpSession::on_splice_activity,
    &TcpSession::on_splice_finished,
    &TcpSession::on_splice_closed,
};

void TcpSession::count_bytes(bool to_backend, size_t n) {
  if (to_backend) {
    bytes_to_backend_ += n;
    backend_->bytes_to_backend.fetch_add(n, std::memory_order_relaxed);
  } else {
    bytes_to_client_ += n;
    backend_->bytes_to_client.fetch_add(n, std::memory_order_relaxed);
  }
}

void TcpSession::on_splice_activity(void* ctx, bool to_backend, size_t bytes) {
  auto* s = static_cast<TcpSession*>(ctx);
  s->worker_.timeouts().touch(&s->timeout_);
  s->count_bytes(to_backend, bytes);
}

void TcpSession::on_splice_finished(void* ctx, SpliceResult result, bool backend_failed) {
  auto* s = static_cast<TcpSession*>(ctx);
  if (s->state_ != State::Relaying) return;
  if (backend_failed) {
    s->backend_->consecutive_failures.fetch_add(1, std::memory_order_relaxed);
    if (auto& report = s->worker_.shared().report_backend) report(s->backend_, false);
  }
  // Unsupported although the start-up probe passed (an exotic socket): this
  // connection goes back to the copy path, and later ones copy from the
  // start. NoPipe: only this connection, for now (the pool retries later).
  // Either way nothing is in flight: the sockets come back in closed().
  if (result == SpliceResult::Unsupported || result == SpliceResult::NoPipe) {
    if (result == SpliceResult::Unsupported) SpliceRelay::disable();
    s->relay_hands_back_ = true;
    return;
  }
  s->state_ = State::Closing;
  s->result_ = result == SpliceResult::Ok ? Result::Ok : Result::Reset;
  s->worker_.timeouts().disarm(&s->timeout_);
}

void TcpSession::on_splice_closed(void* ctx) {
  auto* s = static_cast<TcpSession*>(ctx);
  SpliceRelay* relay = s->relay_;
  s->relay_ = nullptr;
  if (s->relay_hands_back_ && s->state_ == State::Relaying) s->back_to_copy_path(*relay);
  delete relay;  // resets any fd it still owns
  s->unref();
}

void TcpSession::back_to_copy_path(SpliceRelay& relay) {
  relay_hands_back_ = false;
  auto* client = new uv_tcp_t;
  auto* up = new Upstream;
  uv_tcp_init(worker_.loop(), client);
  uv_tcp_init(worker_.loop(), &up->tcp);
  client->data = this;
  up->tcp.data = this;
  up->connect.data = this;
  client_ = client;
  upstream_ = &up->tcp;
  refs_ += 2;
  up_ = relay.flow(true);
  down_ = relay.flow(false);
  up_.queued = down_.queued = 0;  // nothing was in flight: the relay's promise
  up_.paused = down_.paused = false;
  int fds[2] = {-1, -1};
  if (!relay.take_fds(&fds[0], &fds[1])) {
    finish(Result::Reset, true);  // closes the new, empty handles
    return;
  }
  bool ok = true;
  uv_tcp_t* handles[2] = {client_, upstream_};
  for (int i = 0; i < 2; ++i) {
    // The relay's unsent-data limit is for splicing; the copy path queues
    // in lb what the kernel refuses, so leave the kernel its default (0).
    int lowat = 0;
    ::setsockopt(fds[i], IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
    if (uv_tcp_open(handles[i], fds[i]) != 0) {
      linger l{1, 0};  // reset, as any failure of a relayed connection
      ::setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &l, sizeof l);
      ::close(fds[i]);
      ok = false;
    }
  }
  if (!ok) {
    finish(Result::Reset, true);
    return;
  }
  if (up_.wants_read() && !resume_read(client_)) return;
  if (down_.wants_read()) resume_read(upstream_);
}

void TcpSession::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* s = static_cast<TcpSession*>(h->data);
  if (s->state_ == State::Header) {
    // Never read past what a header may be: the rest stays in the kernel
    // until the backend is connected.
    buf->base = reinterpret_cast<char*>(s->header_buf_ + s->header_len_);
    buf->len = proxy::kMaxHeader - s->header_len_;
    return;
  }
  // Every read lands in the worker's buffer and is written on at once, so an
  // idle connection holds no buffer at all.
  buf->base = s->worker_.read_buffer();
  buf->len = Worker::kReadBufferSize;
  if (s->state_ == State::Relaying && s->worker_.shared().buffers.exhausted()) {
    // At the bound (BufferBudget): a direction whose destination is behind
    // would buffer what it reads, so it does not read (UV_ENOBUFS, then it
    // waits); one that keeps up reads in small steps, so that what its
    // destination might refuse stays small.
    if (s->dir_from(reinterpret_cast<uv_tcp_t*>(h)).queued > 0) {
      *buf = uv_buf_init(nullptr, 0);
      return;
    }
    buf->len = BufferBudget::kScarceRead;
  }
}

void TcpSession::on_read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* s = static_cast<TcpSession*>(stream->data);
  auto* src = reinterpret_cast<uv_tcp_t*>(stream);
  if (s->state_ == State::Header) {
    if (nread != 0) s->header_bytes(nread);
    return;
  }
  if (s->state_ != State::Relaying) return;
  if (nread == UV_ENOBUFS) {
    s->starve(src);
    return;
  }
  if (nread > 0) {
    s->worker_.timeouts().touch(&s->timeout_);
    s->count_bytes(src == s->client_, static_cast<size_t>(nread));
    if (static_cast<size_t>(nread) >= kSpliceReadMin) s->bulk_seen_ = true;
    s->forward(s->dir_from(src), src, s->peer_of(src), buf->base, static_cast<size_t>(nread));
    s->maybe_splice();
  } else if (nread < 0) {
    s->on_read(src, nread);
  }
}

void TcpSession::on_read(uv_tcp_t* src, ssize_t nread) {
  if (nread == UV_EOF) {
    on_eof(dir_from(src), peer_of(src));
    return;
  }
  // A reset (or any other error) on one side resets the other. A backend
  // that resets counts as a failure for passive health.
  if (src == upstream_) {
    backend_->consecutive_failures.fetch_add(1, std::memory_order_relaxed);
    if (auto& report = worker_.shared().report_backend) report(backend_, false);
  }
  finish(Result::Reset, true);
}

void TcpSession::forward(Direction& d, uv_tcp_t* src, uv_tcp_t* dst, const char* data, size_t n) {
  auto* dst_stream = reinterpret_cast<uv_stream_t*>(dst);
  uv_buf_t b = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(n));
  // Fast path: the kernel takes it all, nothing is copied or allocated.
  int written = uv_try_write(dst_stream, &b, 1);
  if (written == static_cast<int>(n)) return;
  if (written < 0) {
    if (written != UV_EAGAIN) {
      finish(Result::Reset, true);
      return;
    }
    written = 0;
  }
  size_t rest = n - static_cast<size_t>(written);
  auto* w = static_cast<WriteReq*>(std::malloc(sizeof(WriteReq) + rest));
  if (!w) {
    finish(Result::Reset, true);
    return;
  }
  w->session = this;
  w->dir = &d;
  w->src = src;
  w->len = rest;
  std::memcpy(w->data(), data + written, rest);
  BufferBudget& budget = worker_.shared().buffers;
  budget.charge(sizeof(WriteReq) + rest);
  uv_buf_t wb = uv_buf_init(w->data(), static_cast<unsigned>(rest));
  if (uv_write(&w->req, dst_stream, &wb, 1, on_write_cb) != 0) {
    std::free(w);
    budget.credit(sizeof(WriteReq) + rest);
    finish(Result::Reset, true);
    return;
  }
  if (d.on_queued(rest)) uv_read_stop(reinterpret_cast<uv_stream_t*>(src));
}

void TcpSession::on_write_cb(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  TcpSession* s = w->session;
  Direction* d = w->dir;
  uv_tcp_t* src = w->src;
  size_t len = w->len;
  std::free(w);
  Worker& worker = s->worker_;
  worker.shared().buffers.credit(sizeof(WriteReq) + len);
  worker.wake_budget_waiters();  // nothing to do unless someone waits
  if (status == UV_ECANCELED || s->state_ != State::Relaying) return;
  if (status < 0) {
    s->finish(Result::Reset, true);
    return;
  }
  bool resume = d->on_drained(len);
  // A source stopped for budget reads again once its own queue is empty: its
  // destination keeps up, and it then reads in small steps at the bound, so
  // no session waits on budget that others hold.
  if ((s->starved_ & s->starved_bit(src)) && d->queued == 0 && d->wants_read()) resume = true;
  if (resume) s->resume_read(src);
}

void TcpSession::starve(uv_tcp_t* src) {
  uv_read_stop(reinterpret_cast<uv_stream_t*>(src));
  starved_ |= starved_bit(src);
  worker_.wait_for_budget(this);
}

bool TcpSession::resume_read(uv_tcp_t* src) {
  if (starved_ & starved_bit(src)) {
    starved_ &= static_cast<uint8_t>(~starved_bit(src));
    if (!starved_) worker_.cancel_budget_wait(this);
  }
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(src), on_alloc, on_read_cb) != 0) {
    finish(Result::Reset, true);
    return false;
  }
  return true;
}

void TcpSession::budget_returned() {
  for (uv_tcp_t* src : {client_, upstream_}) {
    if (state_ != State::Relaying) return;
    if (!(starved_ & starved_bit(src))) continue;
    if (dir_from(src).wants_read()) {
      if (!resume_read(src)) return;
    } else {
      starved_ &= static_cast<uint8_t>(~starved_bit(src));  // backpressure or EOF resumes it, if ever
    }
  }
}

void TcpSession::on_eof(Direction& d, uv_tcp_t* dst) {
  if (!d.on_eof()) return;
  auto* dst_stream = reinterpret_cast<uv_stream_t*>(dst);
  if (d.queued == 0 && uv_stream_get_write_queue_size(dst_stream) == 0) {
    // Nothing left to flush. If the other way is done too, the session ends
    // here: closing both sockets sends this FIN just as shutdown would (both
    // receive queues are empty, each side having sent its FIN). Otherwise
    // shut down now, without uv_shutdown's round trip through the write
    // watcher (two epoll_ctl calls and a loop iteration).
    Direction& other = &d == &up_ ? down_ : up_;
    if (other.finished) {
      d.on_shutdown_done();
      finish(Result::Ok, false);
      return;
    }
    uv_os_fd_t fd;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(dst), &fd) == 0) {
      if (::shutdown(fd, SHUT_WR) != 0) {
        finish(Result::Reset, true);
        return;
      }
      d.on_shutdown_done();
      return;
    }
  }
  // libuv performs the shutdown once the queued writes are flushed.
  uv_shutdown_t* req = dst == upstream_ ? &shutdown_up_ : &shutdown_down_;
  req->data = this;
  if (uv_shutdown(req, reinterpret_cast<uv_stream_t*>(dst), on_shutdown_cb) != 0) finish(Result::Reset, true);
}

void TcpSession::on_shutdown_cb(uv_shutdown_t* req, int status) {
  auto* s = static_cast<TcpSession*>(req->data);
  if (status == UV_ECANCELED || s->state_ != State::Relaying) return;
  if (status < 0) {
    s->finish(Result::Reset, true);
    return;
  }
  Direction& d = req == &s->shutdown_up_ ? s->up_ : s->down_;
  d.on_shutdown_done();
  if (relay_finished(s->up_, s->down_)) s->finish(Result::Ok, false);
}

void TcpSession::on_timeout(TimeoutNode* n) {
  auto* s = static_cast<TcpSession*>(n->owner);
  if (s->state_ == State::Header) {
    s->reject_header("timeout");
  } else if (s->state_ == State::Connecting) {
    s->connect_failed();
  } else if (s->state_ == State::Relaying) {
    s->finish(Result::Timeout, false);
  }
}

void TcpSession::abort() { finish(Result::Reset, true); }

void TcpSession::finish(Result r, bool reset) {
  if (state_ == State::Closing) return;
  state_ = State::Closing;
  result_ = r;
  worker_.timeouts().disarm(&timeout_);
  worker_.cancel_budget_wait(this);
  starved_ = 0;
  if (relay_) {
    if (reset)
      relay_->abort();
    else
      relay_->close();
    return;
  }
  close_handle(client_, reset);
  if (upstream_) close_handle(upstream_, reset);
}

void TcpSession::close_handle(uv_tcp_t* h, bool reset) {
  auto* hh = reinterpret_cast<uv_handle_t*>(h);
  if (uv_is_closing(hh)) return;
  // close_reset refuses while a shutdown is pending; a plain close then.
  if (!reset || uv_tcp_close_reset(h, on_close_cb) != 0) uv_close(hh, on_close_cb);
}

void TcpSession::on_close_cb(uv_handle_t* h) {
  auto* s = static_cast<TcpSession*>(h->data);
  if (h == reinterpret_cast<uv_handle_t*>(s->client_)) {
    delete reinterpret_cast<uv_tcp_t*>(h);
  } else {
    delete reinterpret_cast<Upstream*>(h);
  }
  s->unref();
}

void TcpSession::unref() {
  if (--refs_ > 0) return;
  log_access();
  release_backend();
  delete this;
}

void TcpSession::log_access() {
  AccessLog* log = worker_.shared().access_log;
  if (!log) return;
  static const char* const kResults[] = {"ok", "connect_failed", "timeout", "reset", "refused"};
  AccessRecord rec;
  rec.listener = listener_->cfg.name;
  rec.client = reinterpret_cast<const sockaddr*>(&client_addr_);
  rec.backend = backend_ ? std::string_view(backend_->id) : std::string_view();
  rec.duration_ms = uv_now(worker_.loop()) - started_ms_;
  rec.bytes_to_backend = bytes_to_backend_;
  rec.bytes_to_client = bytes_to_client_;
  rec.result = kResults[static_cast<int>(result_)];
  log->write(worker_.index(), rec);
}

}  // namespace lb::core
