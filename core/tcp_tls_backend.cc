// TcpSession, re-encryption (pools with [pool.tls]): the backend leg through
// a TlsRelay in client mode (core/tls/tls_relay.h), on plain listeners
// (plaintext from the client) and on terminate listeners (TLS both sides).
//
// Connecting ends only when the handshake with the backend has finished;
// connect_timeout bounds the TCP connect and the handshake together. A
// handshake that fails (refused certificate, wrong name, no client
// certificate, closed) is a failed connect: counted in
// lb_backend_connect_failures_total, reported to passive health, logged
// (throttled) and followed by the next backend as a refused connect is.
//
// Relaying: client plaintext goes through TlsRelay::write (stop reading the
// client at its high-water mark until it reports drained); the backend's
// decrypted bytes take the plain way to the client (or the client's relay).
// Half-close: the client's end becomes our close_notify and FIN; the
// backend's close_notify (or FIN) ends its direction.
#include "core/log.h"
#include "core/tcp_session.h"
#include "core/tls/settings.h"

namespace lb::core {

void TcpSession::on_tcp_connected() {
  if (backend_tls_) {
    start_backend_tls(*backend_tls_);
    return;
  }
  on_connected();
}

void TcpSession::start_backend_tls(const tls::ClientContext& ctx) {
  const std::string name =
      tls::backend_server_name(ctx, backend_->address, hello_ ? std::string_view(hello_->sni) : "");
  std::string error;
  auto stream = tls::TlsStream::client(ctx.ctx(), name, ctx.verify(), &error);
  if (!stream) {
    on_backend_tls_failed(true, error);
    return;
  }
  // The handshake's flights go out at once (ours are single writes).
  uv_tcp_nodelay(upstream_.get(), 1);
  // The PROXY header precedes the TLS session, in the clear (as HAProxy's
  // `accept-proxy` on an `ssl` bind expects it).
  std::string header;
  if (listener_->cfg.proxy_protocol != conf::ProxyProtocol::Off) {
    header = proxy_header();
    if (header.empty()) {
      finish(Result::Reset, true);
      return;
    }
  }
  // Decrypted bytes land in the worker's read buffer, as the client leg's
  // do: each is consumed before the next read.
  backend_tls_legs_.push_back(std::make_unique<tls::TlsRelay>(
      upstream_.get(), std::move(stream), up_tls_events_, worker_.read_buffer(), Worker::kReadBufferSize,
      &worker_.shared().buffers));
  tls::TlsRelay* relay = up_tls_ = backend_tls_legs_.back().get();
  relay->start(header);
  // Delivery stays on: the backend's first bytes are for the client as
  // soon as the handshake is done (server-speaks-first protocols). Unless
  // sending already failed and the session moved on.
  if (up_tls_ == relay) relay->deliver(true);
}

void TcpSession::on_backend_tls_read(ssize_t nread, const char* data) {
  if (nread > 0) {
    if (relaying()) worker_.timeouts().touch(&timeout_);
    // A failed handshake moves the session on to another attempt (another
    // upstream_) from inside the relay: only this one's socket may pause.
    tls::TlsRelay* relay = up_tls_;
    uv_tcp_t* socket = upstream_.get();
    if (!relay->on_ciphertext(data, static_cast<size_t>(nread)) && up_tls_ == relay &&
        state_ != State::Closing)
      uv_read_stop(reinterpret_cast<uv_stream_t*>(socket));
    return;
  }
  if (nread == UV_ENOBUFS) {
    starve(upstream_.get());
    return;
  }
  if (nread == UV_EOF) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(upstream_.get()));
    up_tls_->on_transport_eof();
    return;
  }
  if (!up_tls_->established()) {
    on_backend_tls_failed(true, uv_strerror(static_cast<int>(nread)));
    return;
  }
  report_backend_failure();
  finish(Result::Reset, true);
}

void TcpSession::on_backend_plaintext(const char* data, size_t n) {
  if (!relaying()) return;
  if (tls_) {
    tls_from_backend(data, n);
    return;
  }
  count_bytes(false, n);
  forward(down_, upstream_.get(), client_.get(), data, n);
}

// close_notify (clean) or a FIN without it: the backend's direction ends
// either way, as a half-close.
void TcpSession::on_backend_tls_done(bool clean) {
  if (!clean) log::debug("tls backend closed without close_notify backend={}", backend_->id);
  if (relaying()) on_eof(down_, client_.get());
}

void TcpSession::on_backend_tls_failed(bool during_handshake, const std::string& why) {
  if (during_handshake && state_ == State::Connecting) {
    static log::Throttle throttle;
    log::warn_throttled(throttle, "tls handshake with backend failed pool={} backend={} error=\"{}\"",
                        backend_->pool, backend_->id, why);
    on_connect_failed();
    return;
  }
  log::debug("tls error backend={} error=\"{}\"", backend_->id, why);
  if (state_ == State::Closing) return;
  report_backend_failure();
  finish(Result::Reset, true);
}

void TcpSession::on_backend_tls_drained() {
  if (relaying() && !up_.flow.eof) resume_read(client_.get());
}

void TcpSession::to_backend(const char* data, size_t n) {
  if (!up_tls_) {
    forward(up_, client_.get(), upstream_.get(), data, n);
    return;
  }
  // Past the high-water mark the client is not read until drained.
  if (up_tls_->write(data, n) && relaying()) uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
}

}  // namespace lb::core
