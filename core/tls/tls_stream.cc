#include "core/tls/tls_stream.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>

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

TlsStream::TlsStream(SSL* ssl) : ssl_(ssl) {}

TlsStream::~TlsStream() { SSL_free(ssl_); }  // frees the BIO

// The transport BIO: reads take from TlsStream::in_, writes append to out_.
// Its data pointer is the stream, which owns the SSL that owns the BIO.
struct TransportBio {
  static TlsStream* stream(BIO* b) { return static_cast<TlsStream*>(BIO_get_data(b)); }

  static int write(BIO* b, const char* data, size_t len, size_t* written) {
    BIO_clear_retry_flags(b);
    stream(b)->out_.append(data, len);
    *written = len;
    return 1;
  }

  static int read(BIO* b, char* buf, size_t cap, size_t* readbytes) {
    BIO_clear_retry_flags(b);
    TlsStream* s = stream(b);
    const size_t avail = s->in_.size() - s->in_off_;
    if (avail == 0) {
      *readbytes = 0;
      // Empty: "more may come" until feed_eof(), then EOF.
      if (!s->eof_) BIO_set_retry_read(b);
      return 0;
    }
    const size_t n = std::min(avail, cap);
    std::memcpy(buf, s->in_.data() + s->in_off_, n);
    s->in_off_ += n;
    if (s->in_off_ == s->in_.size()) {
      std::string().swap(s->in_);  // drained: hold no memory
      s->in_off_ = 0;
    }
    *readbytes = n;
    return 1;
  }

  static long ctrl(BIO* b, int cmd, long, void*) {
    TlsStream* s = stream(b);
    switch (cmd) {
      case BIO_CTRL_FLUSH:
        return 1;
      case BIO_CTRL_PENDING:
        return static_cast<long>(s->in_.size() - s->in_off_);
      case BIO_CTRL_WPENDING:
        return static_cast<long>(s->out_.size());
      case BIO_CTRL_EOF:
        return s->eof_ && s->in_.size() == s->in_off_;
      default:
        return 0;
    }
  }

  static int create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
  }

  static const BIO_METHOD* method() {
    // Built once per process (thread-safe static initialisation), never freed.
    static BIO_METHOD* const m = [] {
      BIO_METHOD* meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "lb transport");
      if (!meth) return meth;
      BIO_meth_set_write_ex(meth, &TransportBio::write);
      BIO_meth_set_read_ex(meth, &TransportBio::read);
      BIO_meth_set_ctrl(meth, &TransportBio::ctrl);
      BIO_meth_set_create(meth, &TransportBio::create);
      return meth;
    }();
    return m;
  }
};

namespace {

std::unique_ptr<TlsStream> new_stream(SSL_CTX* ctx, std::string* error,
                                      std::unique_ptr<TlsStream> (*make)(SSL*)) {
  ERR_clear_error();
  const BIO_METHOD* meth = TransportBio::method();
  SSL* ssl = SSL_new(ctx);
  BIO* bio = meth ? BIO_new(meth) : nullptr;
  if (!ssl || !bio) {
    SSL_free(ssl);
    BIO_free(bio);
    *error = "cannot create a TLS session: " + openssl_errors();
    return nullptr;
  }
  std::unique_ptr<TlsStream> s = make(ssl);
  BIO_set_data(bio, s.get());
  // One BIO both ways: the SSL takes this one reference.
  SSL_set_bio(ssl, bio, bio);
  return s;
}

}  // namespace

std::unique_ptr<TlsStream> TlsStream::server(SSL_CTX* ctx, std::string* error) {
  auto s = new_stream(ctx, error, [](SSL* ssl) { return std::unique_ptr<TlsStream>(new TlsStream(ssl)); });
  if (s) SSL_set_accept_state(s->ssl_);
  return s;
}

std::unique_ptr<TlsStream> TlsStream::client(SSL_CTX* ctx, const std::string& server_name, bool verify_name,
                                             std::string* error) {
  auto s = new_stream(ctx, error, [](SSL* ssl) { return std::unique_ptr<TlsStream>(new TlsStream(ssl)); });
  if (!s) return nullptr;
  SSL_set_connect_state(s->ssl_);
  if (!set_server_name(s->ssl_, server_name, verify_name, error)) return nullptr;
  return s;
}

void TlsStream::feed(const char* data, size_t len) {
  if (len == 0) return;
  if (in_off_ > 0) {  // keep only what is still unread
    in_.erase(0, in_off_);
    in_off_ = 0;
  }
  in_.append(data, len);
}

void TlsStream::feed_eof() { eof_ = true; }  // an empty input now reads as EOF

size_t TlsStream::input_pending() const { return in_.size() - in_off_; }
size_t TlsStream::output_pending() const { return out_.size(); }

size_t TlsStream::take_output(char* buf, size_t cap) {
  const size_t n = std::min(cap, out_.size());
  std::memcpy(buf, out_.data(), n);
  if (n == out_.size())
    discard_output();
  else
    out_.erase(0, n);
  return n;
}

std::string TlsStream::take_output() {
  std::string s;
  s.swap(out_);
  return s;
}

std::string_view TlsStream::peek_output() const { return out_; }

void TlsStream::discard_output() { std::string().swap(out_); }  // hold no memory

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
  // Room for the records at once (a record adds at most 256 bytes to its
  // 16 KiB of plaintext): no regrowth of out_ while they are made.
  const size_t planned = std::min<size_t>(len, 256 * 1024);
  out_.reserve(out_.size() + planned + (planned / kRecord + 1) * 256);
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
