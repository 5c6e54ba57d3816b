#include "core/tls/tls_stream.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>

#include "core/tls/pem.h"
#include "core/tls/record_layer.h"

namespace lb::tls {

namespace {

bool is_ip_literal(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// At most one TLS record's worth of plaintext per SSL_write, so the output
// limit is overshot by at most one record.
constexpr size_t kRecord = 16 * 1024;

// RFC 8446's numbers: content types, alerts, the KeyUpdate message.
constexpr uint8_t kAlert = 21, kHandshake = 22, kApplicationData = 23;
constexpr uint8_t kCloseNotify = 0, kUnexpectedMessage = 10, kBadRecordMac = 20, kRecordOverflow = 22,
                  kIllegalParameter = 47, kDecodeError = 50, kInternalError = 80, kUserCanceled = 90;
constexpr char kKeyUpdate = 24;

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

struct TlsStream::Handoff {
  std::string client, server;  // CLIENT_/SERVER_TRAFFIC_SECRET_0
  ~Handoff() {
    OPENSSL_cleanse(client.data(), client.size());
    OPENSSL_cleanse(server.data(), server.size());
  }
};

TlsStream::TlsStream(SSL* ssl) : ssl_(ssl) {}

TlsStream::~TlsStream() { SSL_free(ssl_); }  // frees the BIO (null once records are lb's)

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

  // OpenSSL's key log line of a stream on this transport goes to the stream.
  static void key_log(const SSL* ssl, const char* line) {
    BIO* b = SSL_get_rbio(ssl);
    if (b && BIO_method_type(b) == type() && SSL_is_server(ssl)) stream(b)->on_key_log(line);
  }

  static int type() {
    static const int t = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK;
    return t;
  }

  static const BIO_METHOD* method() {
    // Built once per process (thread-safe static initialisation), never freed.
    static BIO_METHOD* const m = [] {
      BIO_METHOD* meth = BIO_meth_new(type(), "lb transport");
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

void take_records_after_handshake(SSL_CTX* ctx) { SSL_CTX_set_keylog_callback(ctx, &TransportBio::key_log); }

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
  const size_t out_mark = out_.size();
  int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshake_done_ = true;
    if (handoff_) take_over_records(out_mark);
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
  if (records_) return read_records(buf, cap, n);
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
  if (failed_) return Status::error;  // lb's records: the connection has failed
  // Room for the records at once (a record adds at most 256 bytes to its
  // 16 KiB of plaintext): no regrowth of out_ while they are made.
  const size_t planned = std::min<size_t>(len, 256 * 1024);
  out_.reserve(out_.size() + planned + (planned / kRecord + 1) * 256);
  while (*written < len && output_pending() < output_limit_) {
    size_t chunk = std::min(len - *written, kRecord);
    if (records_) {
      if (!records_->seal(kApplicationData, data + *written, chunk, out_)) {
        if (error_.empty()) error_ = "cannot encrypt";
        failed_ = true;
        return Status::error;
      }
      *written += chunk;
      continue;
    }
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
  if (records_) {
    const char alert[2] = {1, static_cast<char>(kCloseNotify)};  // warning, close_notify
    if (!failed_) records_->seal(kAlert, alert, 2, out_);
    return;
  }
  ERR_clear_error();
  // Returns 0 ("sent, the peer's not seen yet") or 1; either way ours is in
  // the output BIO. The peer's close_notify arrives through read().
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

bool TlsStream::close_notify_received() const {
  if (!ssl_) return close_notify_received_;
  return (SSL_get_shutdown(ssl_) & SSL_RECEIVED_SHUTDOWN) != 0;
}

std::string_view TlsStream::alpn() const {
  if (facts_) return facts_->alpn;
  const unsigned char* p = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl_, &p, &len);
  return p ? std::string_view(reinterpret_cast<const char*>(p), len) : std::string_view();
}

const char* TlsStream::version() const { return facts_ ? facts_->version : SSL_get_version(ssl_); }

const char* TlsStream::cipher() const { return facts_ ? facts_->cipher : SSL_get_cipher_name(ssl_); }

std::string_view TlsStream::server_name() const {
  if (facts_) return facts_->server_name;
  const char* n = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name);
  return n ? std::string_view(n) : std::string_view();
}

bool TlsStream::peer_certificate_presented() const {
  return facts_ ? facts_->cert_presented : SSL_get0_peer_certificate(ssl_) != nullptr;
}

bool TlsStream::peer_certificate_verified() const {
  if (facts_) return facts_->cert_verified;
  return SSL_get0_peer_certificate(ssl_) != nullptr && SSL_get_verify_result(ssl_) == X509_V_OK;
}

bool TlsStream::session_reused() const { return facts_ ? facts_->reused : SSL_session_reused(ssl_) == 1; }

// ---- lb's own records after a TLS 1.3 handshake ----

void TlsStream::on_key_log(const char* line) {
  std::string_view l(line);
  const bool client = l.starts_with("CLIENT_TRAFFIC_SECRET_0 ");
  if (!client && !l.starts_with("SERVER_TRAFFIC_SECRET_0 ")) return;
  std::string_view hex = l.substr(l.rfind(' ') + 1);
  if (hex.size() % 2 != 0 || hex.size() > 2 * RecordLayer::kMaxSecret) return;
  std::string secret(hex.size() / 2, '\0');
  for (size_t i = 0; i < secret.size(); ++i) {
    int hi = OPENSSL_hexchar2int(static_cast<unsigned char>(hex[2 * i]));
    int lo = OPENSSL_hexchar2int(static_cast<unsigned char>(hex[2 * i + 1]));
    if (hi < 0 || lo < 0) return;
    secret[i] = static_cast<char>(hi << 4 | lo);
  }
  if (!handoff_) handoff_ = std::make_unique<Handoff>();
  (client ? handoff_->client : handoff_->server).swap(secret);
  OPENSSL_cleanse(secret.data(), secret.size());
}

void TlsStream::take_over_records(size_t out_mark) {
  const std::unique_ptr<Handoff> h = std::move(handoff_);
  // Only where nothing of the connection's data is inside OpenSSL: no
  // record read ahead, no alert exchanged.
  if (SSL_version(ssl_) != TLS1_3_VERSION || SSL_has_pending(ssl_) || SSL_get_shutdown(ssl_) != 0) return;
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl_);
  const std::optional<RecordLayer::Suite> suite =
      c ? RecordLayer::suite_for(SSL_CIPHER_get_protocol_id(c)) : std::nullopt;
  if (!suite) return;
  // What this last step wrote (after the client's Finished) is the session
  // tickets, one record each: counted, and the last one checked to open
  // under the server's traffic secret as that record number. Anything else
  // (OpenSSL writing differently) leaves the records to OpenSSL.
  uint64_t sent = 0;
  std::string_view last;
  for (size_t at = out_mark; at < out_.size();) {
    if (out_.size() - at < RecordLayer::kHeader) return;
    const auto* hdr = reinterpret_cast<const unsigned char*>(out_.data() + at);
    const size_t len = RecordLayer::kHeader + (size_t{hdr[3]} << 8 | hdr[4]);
    if (hdr[0] != kApplicationData || len > out_.size() - at) return;
    last = std::string_view(out_).substr(at, len);
    ++sent;
    at += len;
  }
  if (sent > 0 && !RecordLayer::sealed_by(*suite, h->server, sent - 1, last)) return;
  std::unique_ptr<RecordLayer> records = RecordLayer::create(*suite, h->client, h->server, 0, sent);
  if (!records) return;
  auto facts = std::make_unique<Facts>();
  facts->alpn = alpn();
  facts->server_name = server_name();
  facts->version = version();
  facts->cipher = cipher();
  facts->cert_presented = peer_certificate_presented();
  facts->cert_verified = peer_certificate_verified();
  facts->reused = session_reused();
  facts_ = std::move(facts);
  SSL_free(ssl_);
  ssl_ = nullptr;
  records_ = std::move(records);
}

void TlsStream::consume(size_t n) {
  in_off_ += n;
  if (in_off_ == in_.size()) {
    std::string().swap(in_);  // drained: hold no memory
    in_off_ = 0;
  }
}

TlsStream::Status TlsStream::fatal(uint8_t alert, std::string why) {
  if (!failed_ && !shutdown_sent_) {
    const char msg[2] = {2, static_cast<char>(alert)};  // fatal
    records_->seal(kAlert, msg, 2, out_);
  }
  failed_ = true;
  error_ = std::move(why);
  return Status::error;
}

TlsStream::Status TlsStream::end_of_input() {
  if (!eof_) return Status::want_input;
  error_ = "the peer closed without close_notify";
  return Status::truncated;
}

TlsStream::Status TlsStream::read_records(char* buf, size_t cap, size_t* n) {
  for (;;) {
    if (plain_len_ > 0) {
      const size_t k = std::min(cap, plain_len_);
      std::memcpy(buf, in_.data() + in_off_, k);
      plain_len_ -= k;
      consume(k + (plain_len_ == 0 ? plain_skip_ : 0));
      *n = k;
      return Status::ok;
    }
    if (failed_) return Status::error;
    if (close_notify_received_) return Status::closed;  // nothing after it counts
    const size_t avail = in_.size() - in_off_;
    if (avail < RecordLayer::kHeader) return end_of_input();
    const auto* hdr = reinterpret_cast<const unsigned char*>(in_.data() + in_off_);
    const size_t len = size_t{hdr[3]} << 8 | hdr[4];
    // After the handshake every record is protected (a change_cipher_spec
    // is no longer allowed either).
    if (hdr[0] != kApplicationData) return fatal(kUnexpectedMessage, "unexpected record type");
    if (len > RecordLayer::kMaxCiphertext) return fatal(kRecordOverflow, "record too long");
    if (avail < RecordLayer::kHeader + len) return end_of_input();
    uint8_t type = 0;
    size_t clen = 0;
    switch (records_->open(in_.data() + in_off_, RecordLayer::kHeader + len, &type, &clen)) {
      case RecordLayer::Opened::ok:
        break;
      case RecordLayer::Opened::bad_record_mac:
        return fatal(kBadRecordMac, "bad record mac");
      case RecordLayer::Opened::unexpected_message:
        return fatal(kUnexpectedMessage, "record without a content type");
      case RecordLayer::Opened::record_overflow:
        return fatal(kRecordOverflow, "record too long");
    }
    const char* content = in_.data() + in_off_ + RecordLayer::kHeader;
    switch (type) {
      case kApplicationData:
        consume(RecordLayer::kHeader);
        plain_len_ = clen;
        plain_skip_ = len - clen;
        if (clen == 0) consume(plain_skip_);
        continue;
      case kAlert: {
        if (clen != 2) return fatal(kDecodeError, "malformed alert");
        const auto desc = static_cast<uint8_t>(content[1]);
        consume(RecordLayer::kHeader + len);
        if (desc == kCloseNotify) {
          close_notify_received_ = true;
          return Status::closed;
        }
        if (desc == kUserCanceled) continue;  // a close_notify follows
        failed_ = true;
        error_ = "the peer sent alert " + std::to_string(desc);
        return Status::error;
      }
      case kHandshake: {
        post_handshake_.append(content, clen);
        consume(RecordLayer::kHeader + len);
        if (Status s = post_handshake_messages(); s != Status::ok) return s;
        continue;
      }
      default:
        return fatal(kUnexpectedMessage, "unexpected content type");
    }
  }
}

// A server receives one handshake message after its handshake: KeyUpdate
// (RFC 8446 4.6.3). Lb requests no post-handshake authentication and takes
// no early data, so anything else is unexpected.
TlsStream::Status TlsStream::post_handshake_messages() {
  std::string& m = post_handshake_;
  if (m.size() < 4) return Status::ok;  // the rest of the header in a later record
  const auto b = [&](size_t i) { return static_cast<uint8_t>(m[i]); };
  if (b(0) != kKeyUpdate) return fatal(kUnexpectedMessage, "unexpected handshake message");
  if (b(1) != 0 || b(2) != 0 || b(3) != 1) return fatal(kDecodeError, "malformed key update");
  if (m.size() < 5) return Status::ok;
  if (b(4) > 1) return fatal(kIllegalParameter, "malformed key update");
  // A key change ends its record: nothing may follow it under the old keys.
  if (m.size() > 5) return fatal(kUnexpectedMessage, "key update not at the end of a record");
  const bool requested = b(4) == 1;
  std::string().swap(m);
  if (!records_->update_read_key()) return fatal(kInternalError, "key update failed");
  if (requested && !shutdown_sent_) {
    static const char kKeyUpdateNotRequested[5] = {kKeyUpdate, 0, 0, 1, 0};
    if (!records_->seal(kHandshake, kKeyUpdateNotRequested, 5, out_) || !records_->update_write_key())
      return fatal(kInternalError, "key update failed");
  }
  return Status::ok;
}

}  // namespace lb::tls
