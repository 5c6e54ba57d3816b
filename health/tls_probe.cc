#include "health/tls_probe.h"

#include <openssl/err.h>

#include <utility>

#include "core/tls/tls_stream.h"

namespace lb::health {

namespace {

// The most specific OpenSSL error queued on this thread, then clears the queue.
std::string ssl_error_text(int ssl_err) {
  unsigned long e = ERR_peek_last_error();
  std::string text;
  if (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    text = buf;
  } else if (ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_ZERO_RETURN) {
    text = "unexpected end of stream";
  } else {
    text = "SSL error " + std::to_string(ssl_err);
  }
  ERR_clear_error();
  return text;
}

}  // namespace

SslCtxPtr make_probe_tls_context() {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return ctx;
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  // Probes never resume sessions; do not keep a cache that grows.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  return ctx;
}

TlsProbe::TlsProbe(uv_loop_t* loop, SSL_CTX* ctx, ProbeAddress address, const conf::HealthCheck& check,
                   Callback cb, std::string name, bool verify_name)
    : StreamProbe(loop, std::move(address), check.timeout, std::move(cb)),
      ctx_(ctx),
      sni_(check.tls_sni.empty() ? std::move(name) : check.tls_sni),
      verify_name_(verify_name) {}

TlsProbe::~TlsProbe() { TlsProbe::close_io(); }

void TlsProbe::close_io() {
  if (ssl_) {
    SSL_free(ssl_);  // frees both BIOs
    ssl_ = nullptr;
    in_ = out_ = nullptr;
  }
  StreamProbe::close_io();
}

void TlsProbe::begin() {
  if (!ctx_) return fail_later("tls: no client context");
  ERR_clear_error();
  ssl_ = SSL_new(ctx_);
  in_ = BIO_new(BIO_s_mem());
  out_ = BIO_new(BIO_s_mem());
  if (!ssl_ || !in_ || !out_) {
    if (ssl_) SSL_free(ssl_);
    BIO_free(in_);
    BIO_free(out_);
    ssl_ = nullptr;
    in_ = out_ = nullptr;
    return fail_later("tls: out of memory");
  }
  SSL_set_bio(ssl_, in_, out_);
  SSL_set_connect_state(ssl_);
  std::string why;
  if (!tls::set_server_name(ssl_, sni_, verify_name_, &why)) return fail_later("tls: " + why);
  StreamProbe::begin();
}

void TlsProbe::on_connected() {
  start_reading();
  drive();  // sends the ClientHello
}

void TlsProbe::on_data(const char* data, size_t len) {
  if (!ssl_) return;
  if (BIO_write(in_, data, static_cast<int>(len)) != static_cast<int>(len))
    return finish(false, "tls: out of memory");
  drive();
}

void TlsProbe::on_read_end(int err) {
  finish(false, err == UV_EOF ? std::string("tls: connection closed during the handshake")
                              : "tls: read: " + uv_reason(err));
}

void TlsProbe::drive() {
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl_);
  int ssl_err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, rc);
  // Whatever the outcome, OpenSSL may have produced bytes (a Finished, or an
  // alert that tells the backend why we give up).
  flush();
  if (!ssl_) return;  // a write failed: the probe is already failing
  if (rc == 1) {
    return finish(true, std::string("tls handshake ok (") + SSL_get_version(ssl_) + ")");
  }
  if (ssl_err == SSL_ERROR_WANT_READ) return;  // wait for more bytes
  finish(false, "tls handshake: " + ssl_error_text(ssl_err));
}

void TlsProbe::flush() {
  char buf[4096];
  int n;
  while (ssl_ && (n = BIO_read(out_, buf, sizeof buf)) > 0) write(std::string(buf, static_cast<size_t>(n)));
}

}  // namespace lb::health
