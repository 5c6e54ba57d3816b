// A non-blocking TLS engine over an in-memory transport: the caller moves
// bytes between it and a socket, so OpenSSL never touches a file descriptor
// and nothing here ever blocks.
//
// The transport is one BIO of lb's own (both directions) whose bytes live in
// this object: ciphertext fed but not yet decrypted, and records not yet
// taken. Each buffer is freed as soon as it is empty, so an idle connection
// holds no transport buffer at all (OpenSSL's memory BIOs keep the capacity
// of their largest flight, about 1 KiB per connection after a handshake,
// and a BIO object more).
//
//   socket bytes  --feed()-->        [ SSL ] --read()-->   plaintext for the other leg
//   socket writes <--take_output()-- [ SSL ] <--write()--  plaintext from the other leg
//
// After every call that may produce TLS records (handshake, read, write,
// shutdown) the caller drains take_output() into the socket.
//
// Buffers are bounded by the caller through what it asks for: read() decrypts
// only into the caller's buffer, so a caller that stops reading (its other
// leg is full) leaves ciphertext in the input BIO; it stops reading the
// socket while input_pending() is above its high-water mark. write() refuses
// plaintext while more than output_limit bytes of records wait to be sent.
//
// TLS 1.3 server streams on a context passed to take_records_after_handshake()
// leave OpenSSL once their handshake is over: the `SSL` is freed (about 14 KB
// per connection) and lb's own RecordLayer (record_layer.h) seals and opens
// the records from the traffic secrets, with the protocol that remains after
// a handshake (application data, alerts, KeyUpdate, close_notify) here. TLS
// 1.2, other suites and client streams stay in OpenSSL throughout; either way
// the interface below behaves the same.
//
// close_notify: shutdown() sends ours (further writes are refused); a
// close_notify from the peer makes read() report `closed` (a clean end of its
// direction, writes may go on: TLS 1.3 half-close); a transport EOF without
// one makes read() report `truncated`.
//
// Thread rules: one thread (the worker's loop) at a time; not copyable.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace lb::tls {

// The client side's server name on `ssl`: sent as SNI when it is a host name
// (RFC 6066 allows no IP literal there) and, with `verify`, the name (or IP)
// the peer's certificate must be valid for. False with `*error` when OpenSSL
// refuses it.
bool set_server_name(SSL* ssl, const std::string& name, bool verify, std::string* error);

class RecordLayer;

// Server streams on `ctx` carry their records themselves after a TLS 1.3
// handshake with a suite RecordLayer supports (OpenSSL's key log callback
// hands them the traffic secrets; nothing is written anywhere).
void take_records_after_handshake(SSL_CTX* ctx);

class TlsStream {
 public:
  enum class Status {
    ok,          // progress made (handshake: finished)
    want_input,  // needs more ciphertext from the peer
    closed,      // the peer sent close_notify
    truncated,   // the transport ended without close_notify
    error,       // protocol or verification failure: see error()
  };

  static constexpr size_t kDefaultOutputLimit = 64 * 1024;

  // A server stream on a context from ServerContext.
  static std::unique_ptr<TlsStream> server(SSL_CTX* ctx, std::string* error);
  // A client stream on a context from ClientContext. `server_name` (a host
  // name or an IP literal) is sent as SNI when it is a host name, and, with
  // `verify_name`, the peer's certificate must be valid for it.
  static std::unique_ptr<TlsStream> client(SSL_CTX* ctx, const std::string& server_name, bool verify_name,
                                           std::string* error);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // Ciphertext from the peer (always taken whole: the caller bounds it).
  void feed(const char* data, size_t len);
  // The peer's transport sent EOF: no more ciphertext will come.
  void feed_eof();
  size_t input_pending() const;

  // Runs the handshake as far as the input allows.
  Status handshake();
  bool handshake_done() const { return handshake_done_; }

  // Decrypts into buf: ok with *n > 0, or want_input/closed/truncated/error
  // with *n == 0. Runs the handshake first if it has not finished.
  Status read(char* buf, size_t cap, size_t* n);
  // Encrypts up to len bytes; *written may be less (0 when the output is at
  // its limit: drain take_output() first). Only after the handshake.
  Status write(const char* data, size_t len, size_t* written);
  // Sends close_notify once; later writes fail.
  void shutdown();
  bool shutdown_sent() const { return shutdown_sent_; }
  bool close_notify_received() const;

  size_t output_pending() const;
  // Moves up to cap bytes of TLS records for the peer into buf.
  size_t take_output(char* buf, size_t cap);
  std::string take_output();
  // The pending records in place (valid until the next call), and dropping
  // them once the caller has copied or written them: no copy for the bytes
  // the socket takes at once.
  std::string_view peek_output() const;
  void discard_output();
  void set_output_limit(size_t bytes) { output_limit_ = bytes; }
  // Bytes the transport holds allocated for both directions (std::string's
  // inline room included): an idle stream holds nothing beyond that.
  size_t transport_capacity() const { return in_.capacity() + out_.capacity(); }

  // Facts about the session (after the handshake).
  std::string_view alpn() const;
  const char* version() const;           // "TLSv1.3", ...
  const char* cipher() const;            // OpenSSL's name of the suite
  std::string_view server_name() const;  // SNI the client sent (server side)
  bool peer_certificate_presented() const;
  bool peer_certificate_verified() const;
  bool session_reused() const;
  const std::string& error() const { return error_; }
  // OpenSSL's session: null once lb's record layer has taken over.
  SSL* ssl() const { return ssl_; }
  bool own_records() const { return records_ != nullptr; }

 private:
  struct Handoff;  // the traffic secrets, as the handshake logs them
  // What remains known of the session once the SSL is freed.
  struct Facts {
    std::string alpn, server_name;
    const char* version = "";
    const char* cipher = "";
    bool cert_presented = false, cert_verified = false, reused = false;
  };

  explicit TlsStream(SSL* ssl);
  Status fail(int ssl_err);
  void on_key_log(const char* line);
  // After the handshake: OpenSSL's records since `out_mark` are its session
  // tickets, the first under the server's traffic keys.
  void take_over_records(size_t out_mark);
  Status read_records(char* buf, size_t cap, size_t* n);
  Status post_handshake_messages();
  Status end_of_input();
  Status fatal(uint8_t alert, std::string why);
  void consume(size_t n);  // drops n input bytes, freeing the buffer when drained

  // The BIO's callbacks (tls_stream.cc).
  friend struct TransportBio;

  SSL* ssl_;
  // Ciphertext from the peer not yet read by OpenSSL: in_[in_off_..].
  std::string in_;
  size_t in_off_ = 0;
  std::string out_;  // records for the peer, not yet taken
  size_t output_limit_ = kDefaultOutputLimit;
  bool handshake_done_ = false;
  bool shutdown_sent_ = false;
  bool eof_ = false;
  std::string error_;
  // lb's own records (ssl_ is null then).
  std::unique_ptr<Handoff> handoff_;
  std::unique_ptr<RecordLayer> records_;
  std::unique_ptr<Facts> facts_;
  std::string post_handshake_;  // a handshake message split across records
  size_t plain_len_ = 0;        // decrypted bytes at in_[in_off_..] not yet read
  size_t plain_skip_ = 0;       // then the record's type, padding and tag
  bool failed_ = false;
  bool close_notify_received_ = false;
};

}  // namespace lb::tls
