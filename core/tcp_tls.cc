// TcpSession, TLS termination (tls = "terminate"): the client leg through a
// TlsRelay (core/tls/tls_relay.h). The handshake runs in Routing, bounded by
// tls_handshake_timeout; the pool is chosen by the server name it accepted
// ([[listener.route]]), and the backend once it has finished; then the copy
// path relays plaintext with its usual backpressure and half-close
// (close_notify and FIN towards the client when the backend ends). A copy of
// the ClientHello's bytes gives the access log its JA4 (when the log is on).
#include "core/log.h"
#include "core/tcp_session.h"
#include "core/tls/server_context.h"

namespace lb::core {

void TcpSession::enter_tls() {
  std::string error;
  auto stream = tls::TlsStream::server(listener_->tls_server->ctx(), &error);
  if (!stream) {
    // Per connection, on the worker: throttled like every per-event warning.
    static log::Throttle throttle;
    log::warn_throttled(throttle, "tls session listener={} error=\"{}\"", listener_->cfg.name, error);
    finish(Result::Reset, true);
    return;
  }
  // Plaintext is decrypted into the worker's read buffer: the ciphertext it
  // held was copied into the relay before, and the plaintext is written on
  // (or queued) before the next read.
  tls_ = std::make_unique<tls::TlsRelay>(client_.get(), std::move(stream), tls_events_, worker_.read_buffer(),
                                         Worker::kReadBufferSize, &worker_.shared().buffers);
  hello_ = std::make_unique<tls::Passthrough>();
  // The copy of the hello is for JA4, which only the access log uses.
  if (!access_logged()) hello_->skip_observe();
  worker_.timeouts().arm(&timeout_, static_cast<uint64_t>(listener_->cfg.tls_handshake_timeout.count()));
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_.get()), on_alloc, on_read_cb) != 0)
    finish(Result::Reset, true);
}

void TcpSession::on_tls_read(ssize_t nread, const char* data) {
  if (nread > 0) {
    if (relaying()) worker_.timeouts().touch(&timeout_);
    // Before the relay consumes them (a no-op once the hello is decided).
    hello_->observe(data, static_cast<size_t>(nread));
    // Until the backend is connected the relay keeps the ciphertext; past
    // its bound the client waits in the kernel.
    if (!tls_->on_ciphertext(data, static_cast<size_t>(nread)) && state_ != State::Closing)
      uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
    return;
  }
  if (nread == UV_ENOBUFS) {
    starve(client_.get());
    return;
  }
  if (nread == UV_EOF) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
    tls_->on_transport_eof();
    return;
  }
  if (!tls_->established()) {
    auto& slot = listener_->stats->slot(worker_.index());
    bump(slot.tls_failed);
    bump(slot.rejected_tls);
    finish(Result::Refused, false);
    return;
  }
  finish(Result::Reset, true);
}

void TcpSession::on_tls_established() {
  worker_.timeouts().disarm(&timeout_);
  bump(listener_->stats->slot(worker_.index()).tls_ok);
  // Routing, hash_key = "sni", the PROXY header's authority and "$client"
  // all go by the name the handshake accepted.
  if (std::string_view name = tls_->stream().server_name(); !name.empty()) hello_->set_sni(name);
  pool_ = tls::route_pool(listener_->cfg, hello_->sni_key);
  flow_hash_ = worker_.flow_hash_for(*pool_, client_addr_.get(), hello_->sni_key);
  choose_backend();
}

void TcpSession::on_tls_plaintext(const char* data, size_t n) {
  if (!relaying()) return;
  count_bytes(true, n);
  to_backend(data, n);
}

// close_notify (clean) or a FIN without it: the client's direction ends
// either way, as a half-close.
void TcpSession::on_tls_peer_done(bool clean) {
  if (!clean) log::debug("tls client closed without close_notify listener={}", listener_->cfg.name);
  if (relaying()) on_eof(up_, upstream_.get());
}

void TcpSession::on_tls_failed(bool during_handshake, const std::string& why) {
  if (during_handshake) {
    log::debug("tls handshake failed listener={} error=\"{}\"", listener_->cfg.name, why);
    auto& slot = listener_->stats->slot(worker_.index());
    bump(slot.tls_failed);
    bump(slot.rejected_tls);
    finish(Result::Refused, false);
    return;
  }
  log::debug("tls error listener={} error=\"{}\"", listener_->cfg.name, why);
  finish(Result::Reset, true);
}

void TcpSession::on_tls_timeout() {
  auto& slot = listener_->stats->slot(worker_.index());
  bump(slot.tls_timeout);
  bump(slot.rejected_tls);
  finish(Result::Timeout, false);
}

// The backend's bytes, encrypted for the client; past the high-water mark
// the backend is not read until the relay reports drained.
void TcpSession::tls_from_backend(const char* data, size_t n) {
  count_bytes(false, n);
  if (tls_->write(data, n) && relaying()) uv_read_stop(reinterpret_cast<uv_stream_t*>(upstream_.get()));
}

void TcpSession::on_tls_drained() {
  if (relaying() && !down_.flow.eof) resume_read(upstream_.get());
}

}  // namespace lb::core
