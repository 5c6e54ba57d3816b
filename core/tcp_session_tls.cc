// TcpSession on a `tls = "passthrough"` listener: wait for the client's
// ClientHello, route by its server name, then connect as any session does.
// Kept apart from tcp_session.cc so it can move into the session state
// machine as its "waiting for ClientHello" state.
//
// Nothing reaches a backend before the hello is whole and valid: the bytes
// stay in tls_->buf (connected() sends them first, unchanged). Not TLS, too
// large, closed or not complete within tls_handshake_timeout: the session is
// refused and counted as lb_listener_rejected_total{reason="tls"}.
#include <cstring>

#include "core/log.h"
#include "core/tcp_session.h"

namespace lb::core {

void TcpSession::start_hello() {
  tls_ = std::make_unique<tls::Passthrough>();
  state_ = State::Hello;
  worker_.timeouts().arm(&timeout_, static_cast<uint64_t>(listener_->cfg.tls_handshake_timeout.count()));
  if (header_buf_) {
    // accept_proxy_protocol: the client's bytes after its PROXY header are
    // the start of the hello (at most proxy::kMaxHeader of them).
    std::memcpy(tls_->buf.get(), header_buf_, header_len_);
    tls_->len = header_len_;
    delete[] header_buf_;
    header_buf_ = nullptr;
    header_len_ = 0;
    if (tls_->len > 0) {
      hello_bytes(0);
      if (state_ != State::Hello) return;
    }
  }
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_), on_alloc, on_read_cb) != 0) reject_tls("read");
}

// `nread` more bytes of the hello arrived in tls_->buf (or the client
// closed, nread < 0).
void TcpSession::hello_bytes(ssize_t nread) {
  if (nread < 0) {
    reject_tls(nread == UV_EOF ? "closed before the ClientHello" : "reset before the ClientHello");
    return;
  }
  tls_->len += static_cast<size_t>(nread);
  tls::ClientHello hello;
  const tls::ParseResult r = tls::parse(tls_->buf.get(), tls_->len, &hello);
  if (r.status == tls::Status::Invalid) {
    reject_tls(r.error);
    return;
  }
  if (r.status == tls::Status::NeedMore) {
    // The parser answers before 16 KiB; this only guards the buffer.
    if (tls_->len >= tls::kMaxClientHello) reject_tls("too large");
    return;
  }
  uv_read_stop(reinterpret_cast<uv_stream_t*>(client_));
  worker_.timeouts().disarm(&timeout_);
  tls_->learn(hello);
  choose_pool();
}

void TcpSession::choose_pool() {
  pool_ = tls::route_pool(listener_->cfg, tls_->sni_key);
  flow_hash_ = worker_.flow_hash_for(*pool_, reinterpret_cast<const sockaddr*>(&client_addr_), tls_->sni_key);
  state_ = State::Connecting;
  connect_next();
}

void TcpSession::reject_tls(const char* why) {
  log::debug("tls client hello refused listener={} reason=\"{}\"", listener_->cfg.name, why);
  bump(listener_->stats->slot(worker_.index()).rejected_tls);
  finish(Result::Refused, false);
}

}  // namespace lb::core
