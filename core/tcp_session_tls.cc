// TcpSession's Hello state, on a `tls = "passthrough"` listener: read the
// client's ClientHello, route by its server name, then choose a backend as
// any session does (tcp_session.h has the whole state machine).
//
// Nothing reaches a backend before the hello is whole and valid: its bytes
// stay in hello_->buf, then move to early_, which on_connected() sends first,
// unchanged. Not TLS, too large, closed or not complete within
// tls_handshake_timeout: the session is refused and counted as
// lb_listener_rejected_total{reason="tls"}.
#include "core/log.h"
#include "core/tcp_session.h"

namespace lb::core {

void TcpSession::enter_hello() {
  state_ = State::Hello;
  hello_ = std::make_unique<tls::Passthrough>();
  hello_->buf.reset(new uint8_t[tls::kMaxClientHello]);
  const auto limit = static_cast<uint64_t>(listener_->cfg.tls_handshake_timeout.count());
  wait_deadline_ms_ = uv_now(worker_.loop()) + limit;
  worker_.timeouts().arm(&timeout_, limit);
  // accept_proxy_protocol: the client's bytes after its PROXY header are
  // the start of the hello (fewer than proxy::kMaxHeader of them).
  if (!early_.empty()) {
    early_.copy(reinterpret_cast<char*>(hello_->buf.get()), early_.size());
    hello_->len = early_.size();
    std::string().swap(early_);
    on_hello_bytes(0);
    if (state_ != State::Hello) return;
  }
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_.get()), on_alloc, on_read_cb) != 0)
    refuse_tls("read");
}

// `nread` more bytes of the hello arrived in hello_->buf (or the client
// closed, nread < 0).
void TcpSession::on_hello_bytes(ssize_t nread) {
  if (nread < 0) {
    refuse_tls(nread == UV_EOF ? "closed before the ClientHello" : "reset before the ClientHello");
    return;
  }
  hello_->len += static_cast<size_t>(nread);
  tls::ClientHello hello;
  const tls::ParseResult r = tls::parse(hello_->buf.get(), hello_->len, &hello);
  if (r.status == tls::Status::Invalid) {
    refuse_tls(r.error);
    return;
  }
  if (r.status == tls::Status::NeedMore) {
    // The parser answers before 16 KiB; this only guards the buffer.
    if (hello_->len >= tls::kMaxClientHello) refuse_tls("too large");
    return;
  }
  uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
  worker_.timeouts().disarm(&timeout_);
  hello_->learn(hello);
  early_.assign(reinterpret_cast<const char*>(hello_->buf.get()), hello_->len);
  hello_->buf.reset();
  state_ = State::Routing;
  pool_ = tls::route_pool(listener_->cfg, hello_->sni_key);
  flow_hash_ =
      worker_.flow_hash_for(*pool_, reinterpret_cast<const sockaddr*>(&client_addr_), hello_->sni_key);
  choose_backend();
}

void TcpSession::refuse_tls(const char* why) {
  log::debug("tls client hello refused listener={} reason=\"{}\"", listener_->cfg.name, why);
  bump(listener_->stats->slot(worker_.index()).rejected_tls);
  finish(Result::Refused, false);
}

}  // namespace lb::core
