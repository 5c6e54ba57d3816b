// TcpSession: from accept to connected, and the end (Closing, deletion).
// The relay itself: tcp_copy.cc, tcp_splice.cc; freezing: tcp_freeze.cc.
#include "core/tcp_session.h"

#include <cstdlib>
#include <cstring>

#include "core/access_log.h"
#include "core/descriptors.h"
#include "core/log.h"
#include "core/proxy_protocol.h"
#include "core/socket.h"
#include "core/tls/proxy_tlv.h"

namespace lb::core {

uint64_t TcpSession::proxy_header_timeout_ms() {
  static const uint64_t ms = [] {
    const char* v = std::getenv("LB_PROXY_HEADER_TIMEOUT_MS");
    const long long n = v ? std::atoll(v) : 0;
    return n > 0 ? static_cast<uint64_t>(n) : kProxyHeaderTimeoutMs;
  }();
  return ms;
}

void TcpSession::start(Worker& worker, ListenerRuntimePtr listener, UvPtr<uv_tcp_t> client,
                       Admission admission) {
  auto* s = new TcpSession(worker, std::move(listener), std::move(client));
  s->admission_ = admission;
  s->on_accepted();
}

TcpSession::TcpSession(Worker& worker, ListenerRuntimePtr listener, UvPtr<uv_tcp_t> client)
    : worker_(worker), listener_(std::move(listener)), client_(std::move(client)) {
  // resume() creates its handles later.
  if (client_) client_->data = this;
  refs_ = client_ ? 1 : 0;
  timeout_.fire = &TcpSession::on_timeout;
  timeout_.owner = this;
  keepalive_.fire = &TcpSession::on_keepalive_due;
  keepalive_.owner = this;
  started_ms_ = uv_now(worker_.loop());
  bump<int64_t>(listener_->stats->slot(worker_.index()).active, 1);
  worker_.session_opened(this);
}

TcpSession::~TcpSession() {
  worker_.timeouts().disarm(&keepalive_);
  worker_.cancel_budget_wait(this);
  delete[] header_.data;
  admission_.release(worker_.shared(), *listener_->stats, client_addr_.get());
  bump<int64_t>(listener_->stats->slot(worker_.index()).active, -1);
  worker_.session_closed(this);
}

// Accepting: the peer is the client until a PROXY header says otherwise.
void TcpSession::on_accepted() {
  int len = sizeof client_addr_;
  if (uv_tcp_getpeername(client_.get(), client_addr_.get(), &len) != 0) {
    // The client is already gone (reset before we got to it).
    finish(Result::Reset, false);
    return;
  }
  // TCP_NODELAY: inherited from the listening socket (Worker sets it there).
  if (listener_->cfg.accept_proxy_protocol) {
    enter_header();
    return;
  }
  admit_client();
}

void TcpSession::enter_header() {
  // A PROXY header names the client, and everything after it (allow/deny,
  // the per-source limit, hashing) believes it: only a trusted peer (the
  // balancer in front) may send one. The peer itself is checked, never the
  // address it claims.
  if (!Admission::proxy_peer_trusted(*listener_, client_addr_.get())) {
    refuse_header("untrusted peer");
    return;
  }
  state_ = State::Header;
  header_.data = new uint8_t[proxy::kMaxHeader];
  wait_deadline_ms_ = uv_now(worker_.loop()) + proxy_header_timeout_ms();
  worker_.timeouts().arm(&timeout_, proxy_header_timeout_ms());
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_.get()), on_alloc, on_read_cb) != 0)
    finish(Result::Reset, false);
}

// Bytes of the client's PROXY header arrived in header_ (or the client
// closed, nread < 0). Nothing of it, nor anything after it, may reach a
// backend unless the whole header is valid.
void TcpSession::on_header_bytes(ssize_t nread) {
  if (nread < 0) {
    refuse_header(nread == UV_EOF ? "closed before the header" : "reset before the header");
    return;
  }
  header_.len += static_cast<size_t>(nread);
  proxy::ParseResult r = proxy::parse(header_.data, header_.len);
  if (r.status == proxy::Status::Invalid) {
    refuse_header(r.error ? r.error : "malformed");
    return;
  }
  if (r.status == proxy::Status::NeedMore) {
    if (header_.len >= proxy::kMaxHeader) refuse_header("oversized");
    return;
  }
  uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
  worker_.timeouts().disarm(&timeout_);
  if (!r.header.local) {
    client_addr_ = InetAddress(r.header.src);
    local_addr_ = InetAddress(r.header.dst);
    have_local_ = true;
  }
  // What the client sent after the header is for the backend.
  early_.assign(reinterpret_cast<const char*>(header_.data) + r.consumed, header_.len - r.consumed);
  delete[] header_.data;
  header_ = HeaderBuffer{};
  admit_client();
}

void TcpSession::refuse_header(const char* why) {
  log::debug("proxy header refused listener={} reason=\"{}\"", listener_->cfg.name, why);
  count_refusal(listener_->stats->slot(worker_.index()), Refusal::ProxyProtocol);
  finish(Result::Refused, false);
}

// Access control and the per-source limit, on the client address as final
// (after a PROXY header).
void TcpSession::admit_client() {
  auto& slot = listener_->stats->slot(worker_.index());
  Refusal r = admission_.admit_client(worker_.shared(), *listener_, client_addr_.get());
  if (r != Refusal::None) {
    count_refusal(slot, r);
    finish(Result::Refused, false);
    return;
  }
  bump(slot.connections);
  enter_routing();
}

// The pool is the listener's. A step that routes on what the client sends
// (SNI) belongs here: it reads into early_ while in Routing, sets pool_, and
// calls choose_backend() once it knows.
void TcpSession::enter_routing() {
  state_ = State::Routing;
  pool_ = &listener_->cfg.pool;
  if (listener_->cfg.tls == conf::TlsMode::Passthrough && !hello_) {
    enter_hello();
    return;
  }
  flow_hash_ = worker_.flow_hash_for(*pool_, client_addr_.get());
  if (listener_->tls_server) {
    enter_tls();
    return;
  }
  choose_backend();
}

// The next backend of pool_, avoiding every one tried already.
void TcpSession::choose_backend() {
  auto& cfg = listener_->cfg;
  Backend* b = nullptr;
  const PoolTable* pool = nullptr;
  if (attempts_ <= cfg.retries && attempts_ < kMaxAttempts) {
    PickContext ctx;
    ctx.hash = flow_hash_;
    ctx.attempt = attempts_;
    ctx.avoid = std::span<const Backend* const>(tried_, attempts_);
    b = worker_.pick(*pool_, ctx, &pool);
  }
  if (b) {
    connect_to(b);
    return;
  }
  if (attempts_ > 0) {
    finish(Result::ConnectFailed, false);
    return;
  }
  auto& slot = listener_->stats->slot(worker_.index());
  // Every usable backend at its max_connections is a limit, not an outage.
  // Said in the log too (a few lines a second at most, by kind), as UDP
  // says a session it cannot open.
  static log::Throttle full_warn, none_warn;
  if (pool && all_full(*pool)) {
    bump(slot.rejected_limit);
    log::warn_throttled(full_warn, "connection refused: every backend at max_connections listener={} pool={}",
                        cfg.name, *pool_);
  } else {
    bump(slot.rejected_no_backend);
    log::warn_throttled(none_warn, "connection refused: no backend available listener={} pool={}", cfg.name,
                        *pool_);
  }
  finish(Result::Refused, false);
}

void TcpSession::connect_to(Backend* b) {
  state_ = State::Connecting;
  tried_[attempts_++] = b;
  backend_ = b->shared_from_this();
  backend_tls_ = worker_.pool_tls(b->pool);
  backend_->active.fetch_add(1, std::memory_order_relaxed);
  holds_active_ = true;

  upstream_ = make_uv<uv_tcp_t>(worker_.loop(), this, nullptr, uv_tcp_init);
  upstream_reading_ = false;
  ++refs_;
  // Once started, the request is freed in its callback, which libuv always
  // calls (with UV_ECANCELED when the handle closes first); a connect that
  // fails at once frees it here, on every path below.
  auto connect = std::make_unique<uv_connect_t>();
  connect->data = this;
  int rc = uv_tcp_connect(connect.get(), upstream_.get(), reinterpret_cast<const sockaddr*>(&b->address.addr),
                          on_connect_cb);
  if (rc == 0) static_cast<void>(connect.release());  // on_connect_cb frees it now
  // A backend socket in the accept floor (core/descriptors.h) is given back
  // at once: the connect was only just sent.
  uv_os_fd_t fd = -1;
  if (rc == 0 && uv_fileno(reinterpret_cast<uv_handle_t*>(upstream_.get()), &fd) == 0 &&
      descriptors::in_accept_floor(fd))
    rc = UV_EMFILE;
  if (rc == UV_EMFILE || rc == UV_ENFILE) {
    // lb is out of descriptors (a gap below the accept reserve was taken
    // meanwhile): its own limit, not the backend's failure, so no backend
    // is blamed (passive health) and no other one is tried. Closing the
    // handle cancels a connect in flight (its callback sees UV_ECANCELED).
    release_backend();
    close_handle(upstream_, false);
    count_refusal(listener_->stats->slot(worker_.index()), Refusal::Limit);
    Worker::warn_descriptors_exhausted(listener_->cfg.name);
    finish(Result::Refused, false);
    return;
  }
  if (rc != 0) {
    // Immediate failure (no route, no ephemeral port): same as a refused connect.
    on_connect_failed();
    return;
  }
  // Reading is asked for now, while libuv registers the socket for the
  // connect: it is then added once for both, instead of an add that fails
  // (EEXIST) and a modify after the connect. libuv reports the connect
  // before any read, so nothing is read while Connecting.
  upstream_reading_ =
      uv_read_start(reinterpret_cast<uv_stream_t*>(upstream_.get()), on_alloc, on_read_cb) == 0;
  worker_.timeouts().arm(&timeout_, static_cast<uint64_t>(listener_->cfg.connect_timeout.count()));
}

void TcpSession::on_connect_cb(uv_connect_t* req, int status) {
  std::unique_ptr<uv_connect_t> owned(req);
  auto* s = static_cast<TcpSession*>(req->data);
  // A superseded attempt (closed after its timeout) reports UV_ECANCELED.
  if (status == UV_ECANCELED || req->handle != reinterpret_cast<uv_stream_t*>(s->upstream_.get()) ||
      s->state_ != State::Connecting)
    return;
  if (status < 0)
    s->on_connect_failed();
  else
    s->on_tcp_connected();
}

void TcpSession::on_connect_failed() {
  worker_.timeouts().disarm(&timeout_);
  if (up_tls_) {
    // Kept in backend_tls_legs_ until the session is freed.
    up_tls_->stop();
    up_tls_ = nullptr;
  }
  backend_->connect_failures.fetch_add(1, std::memory_order_relaxed);
  report_backend_failure();
  release_backend();
  close_handle(upstream_, false);
  choose_backend();
}

void TcpSession::report_backend_failure() {
  backend_->consecutive_failures.fetch_add(1, std::memory_order_relaxed);
  if (auto& report = worker_.shared().report_backend) report(backend_, false);
}

// Gives back the backend's active count; backend_ itself stays set (and
// alive) for the access log and the counters until the session is gone.
void TcpSession::release_backend() {
  if (!holds_active_) return;
  holds_active_ = false;
  backend_->active.fetch_sub(1, std::memory_order_relaxed);
}

void TcpSession::on_connected() {
  state_ = State::Relaying;
  pool_ = &backend_->pool;
  backend_->total.fetch_add(1, std::memory_order_relaxed);
  if (backend_->consecutive_failures.load(std::memory_order_relaxed) != 0) {
    backend_->consecutive_failures.store(0, std::memory_order_relaxed);
    if (auto& report = worker_.shared().report_backend) report(backend_, true);
  }
  uv_tcp_nodelay(upstream_.get(), 1);
  arm_keepalive();
  worker_.timeouts().arm(&timeout_, static_cast<uint64_t>(listener_->cfg.idle_timeout.count()));
  // What the backend gets before the client's stream: our PROXY header (in
  // the clear before the TLS session, sent already with [pool.tls]), then
  // whatever the client sent before the backend was connected.
  std::string preface;
  if (listener_->cfg.proxy_protocol != conf::ProxyProtocol::Off && !up_tls_) {
    preface = proxy_header();
    if (preface.empty()) {
      finish(Result::Reset, true);
      return;
    }
  }
  if (!early_.empty()) {
    count_bytes(true, early_.size());
    preface += early_;
    std::string().swap(early_);
  }
  if (!preface.empty()) {
    to_backend(preface.data(), preface.size());
    if (state_ != State::Relaying) return;
  }
  if (tls_) {
    // The client is read already (ciphertext waits in the relay): decrypt
    // what waits, then read on unless the backend is already behind.
    uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
    tls_->deliver(true);
    if (!relaying()) return;
    if ((!up_.flow.paused && !up_.flow.eof && !resume_read(client_.get())) ||
        (!upstream_reading_ &&
         uv_read_start(reinterpret_cast<uv_stream_t*>(upstream_.get()), on_alloc, on_read_cb) != 0))
      finish(Result::Reset, true);
    return;
  }
  // A passthrough client is being read already (early_reading_), unless
  // early_ filled up or it ended meanwhile.
  const bool client_reading = early_reading_;
  early_reading_ = false;
  if ((!client_reading && !early_eof_ &&
       uv_read_start(reinterpret_cast<uv_stream_t*>(client_.get()), on_alloc, on_read_cb) != 0) ||
      (!upstream_reading_ &&
       uv_read_start(reinterpret_cast<uv_stream_t*>(upstream_.get()), on_alloc, on_read_cb) != 0)) {
    finish(Result::Reset, true);
    return;
  }
  if (early_eof_) on_eof(up_, upstream_.get());
}

// Keepalive probes start after idle_s without data from the backend,
// counted by the kernel from the last segment received, whenever the options
// are set: setting them at half of idle_s instead of at connect finds a
// vanished backend just as early, and most short connections are gone by
// then (4 setsockopt calls of a connection's ~20).
void TcpSession::arm_keepalive() {
  const KeepaliveParams p = backend_keepalive(listener_->cfg.idle_timeout);
  worker_.timeouts().arm(&keepalive_, static_cast<uint64_t>(p.idle_s) * 1000 / 2);
}

void TcpSession::on_keepalive_due(TimeoutNode* n) {
  auto* s = static_cast<TcpSession*>(n->owner);
  uv_os_fd_t fd;
  if (s->relaying() && s->upstream_ &&
      uv_fileno(reinterpret_cast<uv_handle_t*>(s->upstream_.get()), &fd) == 0)
    s->set_backend_keepalive(fd);
}

void TcpSession::set_backend_keepalive(int fd) {
  worker_.timeouts().disarm(&keepalive_);
  set_keepalive(fd, backend_keepalive(listener_->cfg.idle_timeout));
}

// The header to the backend: the client and what it connected to, or the
// addresses of the header the client itself sent. Empty on failure.
std::string TcpSession::proxy_header() {
  if (!have_local_) {
    int len = sizeof local_addr_;
    if (uv_tcp_getsockname(client_.get(), local_addr_.get(), &len) != 0) return {};
    have_local_ = true;
  }
  auto* src = client_addr_.get();
  auto* dst = local_addr_.get();
  // Room for the v2 PP2_TYPE_AUTHORITY TLV: a server name is at most 255 bytes.
  char hdr[proxy::kMaxWrittenHeader + 3 + 255];
  size_t n = listener_->cfg.proxy_protocol == conf::ProxyProtocol::V1
                 ? proxy::write_v1(src, dst, hdr, sizeof hdr)
                 : proxy::write_v2(src, dst, false, reinterpret_cast<uint8_t*>(hdr), sizeof hdr);
  if (n > 0 && hello_ && !hello_->sni.empty() && listener_->cfg.proxy_protocol == conf::ProxyProtocol::V2) {
    n = proxy::append_v2_tlv(reinterpret_cast<uint8_t*>(hdr), n, sizeof hdr, proxy::kTlvAuthority,
                             hello_->sni.data(), hello_->sni.size());
  }
  std::string out(hdr, n);
  if (tls_ && n >= proxy::kV2FixedSize && listener_->cfg.proxy_protocol == conf::ProxyProtocol::V2)
    append_tls_tlvs(&out);
  return out;
}

// A terminated connection's PP2_TYPE_ALPN and PP2_TYPE_SSL after the
// addresses; the header's length field grows by their size.
void TcpSession::append_tls_tlvs(std::string* header) {
  const tls::TlsStream& st = tls_->stream();
  tls::TlsFacts facts;
  facts.version = st.version();
  facts.alpn = st.alpn();
  facts.cert_presented = st.peer_certificate_presented();
  facts.cert_verified = st.peer_certificate_verified();
  facts.resumed = st.session_reused();
  std::string tlvs = tls::proxy_v2_tls_tlvs(facts);
  size_t len = (static_cast<uint8_t>((*header)[14]) << 8 | static_cast<uint8_t>((*header)[15])) + tlvs.size();
  if (len > 0xffff) return;
  (*header)[14] = static_cast<char>(len >> 8);
  (*header)[15] = static_cast<char>(len & 0xff);
  *header += tlvs;
}

void TcpSession::count_bytes(bool to_backend, size_t n) {
  if (to_backend) {
    bytes_to_backend_ += n;
    backend_->bytes_to_backend.fetch_add(n, std::memory_order_relaxed);
  } else {
    bytes_to_client_ += n;
    backend_->bytes_to_client.fetch_add(n, std::memory_order_relaxed);
  }
}

void TcpSession::on_timeout(TimeoutNode* n) {
  auto* s = static_cast<TcpSession*>(n->owner);
  switch (s->state_) {
    case State::Header:
      s->refuse_header("timeout");
      break;
    case State::Hello:
      s->refuse_tls("timeout");
      break;
    case State::Routing:
      if (s->tls_) s->on_tls_timeout();
      break;
    case State::Connecting:
      s->on_connect_failed();
      break;
    case State::Relaying:
    case State::HalfClosed:
      s->finish(Result::Timeout, false);
      break;
    default:
      break;
  }
}

void TcpSession::abort() { finish(Result::Reset, true); }

void TcpSession::finish(Result r, bool reset) {
  if (state_ == State::Closing || state_ == State::Frozen) return;
  state_ = State::Closing;
  result_ = r;
  worker_.timeouts().disarm(&timeout_);
  worker_.timeouts().disarm(&keepalive_);
  worker_.cancel_budget_wait(this);
  starved_ = 0;
  if (tls_) tls_->stop();
  if (up_tls_) up_tls_->stop();
  if (relay_) {
    if (reset)
      relay_->abort();
    else
      relay_->close();
    return;
  }
  close_handle(client_, reset);
  close_handle(upstream_, reset);
}

// Closes `h` when it is open (it is null from then on); the session counts
// the close callback, which frees the handle, in refs_.
void TcpSession::close_handle(UvPtr<uv_tcp_t>& h, bool reset) {
  close_then(h, reset, &TcpSession::on_handle_closed, this);
}

void TcpSession::on_handle_closed(void* session) { static_cast<TcpSession*>(session)->unref(); }

void TcpSession::unref() {
  if (--refs_ > 0) return;
  // A frozen session goes on elsewhere: its line is written where it ends.
  if (state_ != State::Frozen) log_access();
  release_backend();
  delete this;
}

void TcpSession::log_access() {
  AccessLog* log = worker_.shared().access_log;
  if (!log) return;
  static const char* const kResults[] = {"ok", "connect_failed", "timeout", "reset", "refused"};
  AccessRecord rec;
  rec.listener = listener_->cfg.name;
  rec.client = client_addr_.get();
  rec.backend = backend_ ? std::string_view(backend_->id) : std::string_view();
  rec.duration_ms = uv_now(worker_.loop()) - started_ms_;
  rec.bytes_to_backend = bytes_to_backend_;
  rec.bytes_to_client = bytes_to_client_;
  rec.result = kResults[static_cast<int>(result_)];
  if (listener_->cfg.tls != conf::TlsMode::Off) {
    rec.tls = true;
    if (hello_) {
      rec.sni = hello_->sni;
      rec.ja4 = hello_->ja4;
    }
    if (tls_) {  // terminate: what was negotiated (nothing before the handshake finished)
      if (tls_->established()) {
        rec.tls_version = tls_->stream().version();
        rec.alpn = tls_->stream().alpn();
      }
    } else if (hello_) {  // passthrough: what the ClientHello offered
      rec.tls_version = hello_->tls_version;
      rec.alpn = hello_->alpn;
    }
  }
  log->write(worker_.index(), rec);
}

}  // namespace lb::core
