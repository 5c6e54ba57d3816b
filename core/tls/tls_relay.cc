#include "core/tls/tls_relay.h"

#include <cstdlib>
#include <cstring>

namespace lb::tls {

struct TlsRelay::WriteReq {
  uv_write_t req;
  TlsRelay* relay;
  size_t len;
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

TlsRelay::TlsRelay(uv_tcp_t* socket, std::unique_ptr<TlsStream> stream, Events& events, char* scratch,
                   size_t scratch_len, core::BufferBudget* budget)
    : socket_(socket),
      stream_(std::move(stream)),
      events_(events),
      scratch_(scratch),
      scratch_len_(scratch_len),
      budget_(budget) {
  // write() takes a whole read of the other leg at once; queued() and
  // kHighWater bound what waits, not the engine's own limit.
  stream_->set_output_limit(SIZE_MAX);
}

TlsRelay::~TlsRelay() = default;

void TlsRelay::start(std::string_view preface) {
  if (!preface.empty()) {
    if (std::string error = send(preface); !error.empty()) return fail(error);
  }
  drive();
}

bool TlsRelay::on_ciphertext(const char* data, size_t n) {
  stream_->feed(data, n);
  drive();
  return stream_->input_pending() < kInputLimit;
}

void TlsRelay::on_transport_eof() {
  stream_->feed_eof();
  drive();
}

bool TlsRelay::deliver(bool on) {
  delivering_ = on;
  if (on) drive();
  return stream_->input_pending() < kInputLimit;
}

void TlsRelay::drive() {
  if (failed_ || stopped_) return;
  if (!stream_->handshake_done()) {
    TlsStream::Status st = stream_->handshake();
    if (!flush()) return;
    if (st == TlsStream::Status::want_input) return;
    if (st != TlsStream::Status::ok) return fail(stream_->error());
    events_.tls_established();
    if (failed_ || stopped_) return;
  }
  while (delivering_ && !peer_done_) {
    size_t n = 0;
    TlsStream::Status st = stream_->read(scratch_, scratch_len_, &n);
    // Reading may answer the peer (a key update, TLS 1.3 tickets).
    if (!flush()) return;
    switch (st) {
      case TlsStream::Status::ok:
        events_.tls_plaintext(scratch_, n);
        if (failed_ || stopped_) return;
        continue;
      case TlsStream::Status::want_input:
        return;
      case TlsStream::Status::closed:
      case TlsStream::Status::truncated:
        peer_done_ = true;
        events_.tls_peer_done(st == TlsStream::Status::closed);
        return;
      case TlsStream::Status::error:
        return fail(stream_->error());
    }
  }
}

bool TlsRelay::write(const char* data, size_t n) {
  if (failed_ || stopped_) return false;
  size_t written = 0;
  if (stream_->write(data, n, &written) != TlsStream::Status::ok || written != n) {
    fail(stream_->error().empty() ? "cannot encrypt" : stream_->error());
    return false;
  }
  if (!flush()) return false;
  if (!paused_ && queued() >= kHighWater) {
    paused_ = true;
    return true;
  }
  return false;
}

bool TlsRelay::flush() {
  std::string_view out = stream_->peek_output();
  if (out.empty()) return true;
  std::string error = send(out);
  stream_->discard_output();
  if (error.empty()) return true;
  fail(error);
  return false;
}

std::string TlsRelay::send(std::string_view out) {
  auto* stream = reinterpret_cast<uv_stream_t*>(socket_);
  // Fast path: the kernel takes it all, nothing is copied (libuv refuses a
  // try-write while earlier writes wait, so the order holds).
  uv_buf_t b = uv_buf_init(const_cast<char*>(out.data()), static_cast<unsigned>(out.size()));
  int written = uv_try_write(stream, &b, 1);
  if (written < 0 && written != UV_EAGAIN) return std::string("write: ") + uv_strerror(written);
  size_t done = written > 0 ? static_cast<size_t>(written) : 0;
  size_t rest = out.size() - done;
  if (rest == 0) return {};
  auto* w = static_cast<WriteReq*>(std::malloc(sizeof(WriteReq) + rest));
  if (!w) return "out of memory";
  w->relay = this;
  w->len = rest;
  std::memcpy(w->data(), out.data() + done, rest);
  uv_buf_t wb = uv_buf_init(w->data(), static_cast<unsigned>(rest));
  int rc = uv_write(&w->req, stream, &wb, 1, on_write_cb);
  if (rc != 0) {
    std::free(w);
    return std::string("write: ") + uv_strerror(rc);
  }
  queued_ += rest;
  if (budget_) budget_->charge(sizeof(WriteReq) + rest);
  return {};
}

void TlsRelay::on_write_cb(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  TlsRelay* self = w->relay;
  size_t len = w->len;
  std::free(w);
  self->queued_ -= len;
  if (self->budget_) self->budget_->credit(sizeof(WriteReq) + len);
  if (status == UV_ECANCELED || self->stopped_ || self->failed_) return;
  if (status < 0) return self->fail(std::string("write: ") + uv_strerror(status));
  if (self->paused_ && self->queued() <= kLowWater) {
    self->paused_ = false;
    self->events_.tls_drained();
  }
}

void TlsRelay::shutdown() {
  if (shutdown_pending_ || failed_ || stopped_) return;
  shutdown_pending_ = true;
  stream_->shutdown();
  if (!flush()) return;
  // libuv shuts the socket down once the records before it are written.
  shutdown_req_.data = this;
  int rc = uv_shutdown(&shutdown_req_, reinterpret_cast<uv_stream_t*>(socket_), on_shutdown_cb);
  if (rc != 0) fail(std::string("shutdown: ") + uv_strerror(rc));
}

void TlsRelay::on_shutdown_cb(uv_shutdown_t* req, int status) {
  auto* self = static_cast<TlsRelay*>(req->data);
  if (status == UV_ECANCELED || self->stopped_ || self->failed_) return;
  if (status < 0) return self->fail(std::string("shutdown: ") + uv_strerror(status));
  self->events_.tls_shutdown_done();
}

void TlsRelay::fail(const std::string& why) {
  if (failed_ || stopped_) return;
  failed_ = true;
  // The alert OpenSSL queued, if any, on its way (best effort).
  std::string_view out = stream_->peek_output();
  if (!out.empty()) {
    uv_buf_t b = uv_buf_init(const_cast<char*>(out.data()), static_cast<unsigned>(out.size()));
    (void)uv_try_write(reinterpret_cast<uv_stream_t*>(socket_), &b, 1);
    stream_->discard_output();
  }
  events_.tls_failed(!stream_->handshake_done(), why);
}

}  // namespace lb::tls
