// TcpSession's Hello state, on a `tls = "passthrough"` listener: read the
// client's ClientHello, route by its server name, then choose a backend as
// any session does (tcp_session.h has the whole state machine).
//
// Nothing reaches a backend before the hello is whole and valid: its bytes
// are read into early_ (grown to what arrived, never past kMaxClientHello),
// which on_connected() sends first, unchanged. Not TLS, too large, closed or
// not complete within tls_handshake_timeout: the session is refused and
// counted as lb_listener_rejected_total{reason="tls"}.
//
// The client stays read after the hello: what it sends while the backend
// connects joins early_ (bounded by kEarlyLimit), so the passthrough path
// costs no epoll change more than the plain relay, only the parse.
#include "core/access_log.h"
#include "core/log.h"
#include "core/tcp_session.h"

namespace lb::core {

bool TcpSession::access_logged() const {
  const AccessLog* log = worker_.shared().access_log;
  return log && log->enabled();
}

void TcpSession::enter_hello() {
  state_ = State::Hello;
  hello_ = std::make_unique<tls::Passthrough>();
  const auto limit = static_cast<uint64_t>(listener_->cfg.tls_handshake_timeout.count());
  wait_deadline_ms_ = uv_now(worker_.loop()) + limit;
  worker_.timeouts().arm(&timeout_, limit);
  // accept_proxy_protocol: the client's bytes after its PROXY header (fewer
  // than proxy::kMaxHeader of them, already in early_) are the start of the
  // hello.
  if (!early_.empty()) {
    on_hello_bytes(0, nullptr);
    if (state_ != State::Hello) return;
  }
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_.get()), on_alloc, on_read_cb) != 0) {
    refuse_tls("read");
    return;
  }
  early_reading_ = true;
}

// `nread` more bytes of the hello arrived at `data` (or the client closed,
// nread < 0). on_alloc() never offers room past kMaxClientHello in all.
void TcpSession::on_hello_bytes(ssize_t nread, const char* data) {
  if (nread < 0) {
    refuse_tls(nread == UV_EOF ? "closed before the ClientHello" : "reset before the ClientHello");
    return;
  }
  if (nread > 0) early_.append(data, static_cast<size_t>(nread));
  tls::ClientHello hello;
  const tls::ParseResult r =
      tls::parse(reinterpret_cast<const uint8_t*>(early_.data()), early_.size(), &hello);
  if (r.status == tls::Status::Invalid) {
    refuse_tls(r.error);
    return;
  }
  if (r.status == tls::Status::NeedMore) {
    // The parser answers before 16 KiB; this only guards the buffer.
    if (early_.size() >= tls::kMaxClientHello) refuse_tls("too large");
    return;
  }
  worker_.timeouts().disarm(&timeout_);
  hello_->learn(hello, access_logged());
  state_ = State::Routing;
  pool_ = tls::route_pool(listener_->cfg, hello_->sni_key);
  flow_hash_ = worker_.flow_hash_for(*pool_, client_addr_.get(), hello_->sni_key);
  choose_backend();
}

void TcpSession::on_early_bytes(ssize_t nread, const char* data) {
  if (nread > 0) {
    early_.append(data, static_cast<size_t>(nread));
    if (early_.size() >= kEarlyLimit) {
      uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
      early_reading_ = false;
    }
    return;
  }
  uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
  early_reading_ = false;
  if (nread == UV_EOF) {
    // A half-close: the backend gets the bytes, then the EOF.
    early_eof_ = true;
    return;
  }
  finish(Result::Reset, true);
}

void TcpSession::refuse_tls(const char* why) {
  log::debug("tls client hello refused listener={} reason=\"{}\"", listener_->cfg.name, why);
  bump(listener_->stats->slot(worker_.index()).rejected_tls);
  finish(Result::Refused, false);
}

}  // namespace lb::core
