#include "core/tls/tls_stream.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>

#include "core/tls/pem.h"

namespace lb::tls {

namespace {

bool is_ip_literal(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// At most one TLS record's worth of plaintext per SSL_write, so the output
// limit is overshot by at most one record.
constexpr size_t kRecord = 16 * 1024;

}  // namespace

bool set_server_name(SSL* ssl, const std::string& name, bool verify, std::string* error) {
  if (name.empty()) return true;
  bool ip = is_ip_literal(name);
  if (!ip && SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) {
    *error = "invalid server name \"" + name + "\": " + openssl_errors();
    return false;
  }
  if (verify) {
    int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str())
                : SSL_set1_host(ssl, name.c_str());
    if (ok != 1) {
      *error = "cannot verify against \"" + name + "\": " + openssl_errors();
      return false;
    }
  }
  return true;
}

TlsStream::TlsStream(SSL* ssl) : ssl_(ssl), in_(nullptr), out_(nullptr) {}

TlsStream::~TlsStream() { SSL_free(ssl_); }  // frees both BIOs

namespace {

SSL* new_ssl(SSL_CTX* ctx, BIO** in, BIO** out, std::string* error) {
  ERR_clear_error();
  SSL* ssl = SSL_new(ctx);
  *in = BIO_new(BIO_s_mem());
  *out = BIO_new(BIO_s_mem());
  if (!ssl || !*in || !*out) {
    SSL_free(ssl);
    BIO_free(*in);
    BIO_free(*out);
    *error = "cannot create a TLS session: " + openssl_errors();
    return nullptr;
  }
  // An empty input BIO means "more may come" until feed_eof() says otherwise.
  BIO_set_mem_eof_return(*in, -1);
  SSL_set_bio(ssl, *in, *out);
  return ssl;
}

}  // namespace

std::unique_ptr<TlsStream> TlsStream::server(SSL_CTX* ctx, std::string* error) {
  BIO *in, *out;
  SSL* ssl = new_ssl(ctx, &in, &out, error);
  if (!ssl) return nullptr;
  SSL_set_accept_state(ssl);
  std::unique_ptr<TlsStream> s(new TlsStream(ssl));
  s->in_ = in;
  s->out_ = out;
  return s;
}

std::unique_ptr<TlsStream> TlsStream::client(SSL_CTX* ctx, const std::string& server_name, bool verify_name,
                                             std::string* error) {
  BIO *in, *out;
  SSL* ssl = new_ssl(ctx, &in, &out, error);
  if (!ssl) return nullptr;
  std::unique_ptr<TlsStream> s(new TlsStream(ssl));
  s->in_ = in;
  s->out_ = out;
  SSL_set_connect_state(ssl);
  if (!set_server_name(ssl, server_name, verify_name, error)) return nullptr;
  return s;
}

void TlsStream::feed(const char* data, size_t len) {
  while (len > 0) {
    int chunk = static_cast<int>(std::min<size_t>(len, 1 << 30));
    int n = BIO_write(in_, data, chunk);
    if (n <= 0) return;  // out of memory: the next read fails on the missing bytes
    data += n;
    len -= static_cast<size_t>(n);
  }
}

void TlsStream::feed_eof() {
  eof_ = true;
  BIO_set_mem_eof_return(in_, 0);  // an empty BIO now reads as EOF
}

size_t TlsStream::input_pending() const { return BIO_ctrl_pending(in_); }
size_t TlsStream::output_pending() const { return BIO_ctrl_pending(out_); }

size_t TlsStream::take_output(char* buf, size_t cap) {
  int n = BIO_read(out_, buf, static_cast<int>(std::min<size_t>(cap, 1 << 30)));
  return n > 0 ? static_cast<size_t>(n) : 0;
}

std::string TlsStream::take_output() {
  std::string s(output_pending(), '\0');
  s.resize(take_output(s.data(), s.size()));
  return s;
}

std::string_view TlsStream::peek_output() const {
  char* p = nullptr;
  long n = BIO_get_mem_data(out_, &p);
  return n > 0 ? std::string_view(p, static_cast<size_t>(n)) : std::string_view();
}

void TlsStream::discard_output() { (void)BIO_reset(out_); }

TlsStream::Status TlsStream::fail(int ssl_err) {
  switch (ssl_err) {
    case SSL_ERROR_WANT_READ:
      return Status::want_input;
    case SSL_ERROR_ZERO_RETURN:
      ERR_clear_error();
      return Status::closed;
    default:
      break;
  }
  unsigned long e = ERR_peek_error();
  bool unexpected_eof =
      (ssl_err == SSL_ERROR_SYSCALL && e == 0) ||
      (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
  if (unexpected_eof && eof_) {
    ERR_clear_error();
    error_ = "the peer closed without close_notify";
    return Status::truncated;
  }
  error_ = openssl_errors();
  long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK)
    error_ += std::string(error_.empty() ? "" : ": ") + X509_verify_cert_error_string(verify);
  if (error_.empty()) error_ = "TLS error " + std::to_string(ssl_err);
  return Status::error;
}

TlsStream::Status TlsStream::handshake() {
  if (handshake_done_) return Status::ok;
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshake_done_ = true;
    return Status::ok;
  }
  Status s = fail(SSL_get_error(ssl_, rc));
  // A closed transport in the middle of a handshake is a failed handshake.
  if (s == Status::truncated || s == Status::closed) {
    if (error_.empty()) error_ = "the peer closed during the handshake";
    return Status::error;
  }
  return s;
}

TlsStream::Status TlsStream::read(char* buf, size_t cap, size_t* n) {
  *n = 0;
  if (!handshake_done_) {
    Status s = handshake();
    if (s != Status::ok) return s;
  }
  ERR_clear_error();
  if (SSL_read_ex(ssl_, buf, cap, n) == 1) return Status::ok;
  *n = 0;
  return fail(SSL_get_error(ssl_, 0));
}

TlsStream::Status TlsStream::write(const char* data, size_t len, size_t* written) {
  *written = 0;
  if (!handshake_done_ || shutdown_sent_) {
    error_ = shutdown_sent_ ? "write after close_notify" : "write before the handshake finished";
    return Status::error;
  }
  while (*written < len && output_pending() < output_limit_) {
    size_t chunk = std::min(len - *written, kRecord);
    size_t done = 0;
    ERR_clear_error();
    if (SSL_write_ex(ssl_, data + *written, chunk, &done) != 1) return fail(SSL_get_error(ssl_, 0));
    *written += done;
  }
  return Status::ok;
}

void TlsStream::shutdown() {
  if (shutdown_sent_) return;
  shutdown_sent_ = true;
  ERR_clear_error();
  // Returns 0 ("sent, the peer's not seen yet") or 1; either way ours is in
  // the output BIO. The peer's close_notify arrives through read().
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

bool TlsStream::close_notify_received() const {
  return (SSL_get_shutdown(ssl_) & SSL_RECEIVED_SHUTDOWN) != 0;
}

std::string_view TlsStream::alpn() const {
  const unsigned char* p = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl_, &p, &len);
  return p ? std::string_view(reinterpret_cast<const char*>(p), len) : std::string_view();
}

const char* TlsStream::version() const { return SSL_get_version(ssl_); }

std::string_view TlsStream::server_name() const {
  const char* n = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name);
  return n ? std::string_view(n) : std::string_view();
}

bool TlsStream::peer_certificate_verified() const {
  return SSL_get0_peer_certificate(ssl_) != nullptr && SSL_get_verify_result(ssl_) == X509_V_OK;
}

bool TlsStream::session_reused() const { return SSL_session_reused(ssl_) == 1; }

}  // namespace lb::tls
