// TlsRelay: one TLS leg of a TCP session on a worker loop — the client leg of
// a `tls = "terminate"` listener (server mode), or the backend leg of a pool
// with [pool.tls] (client mode).
//
// The session keeps owning the socket and reading it (its handle->data, read
// and close callbacks stay its own): it hands the ciphertext it reads to
// on_ciphertext() and a transport EOF to on_transport_eof(). The relay writes
// TLS records to the socket itself (its own write and shutdown requests) and
// reports through Events:
//
//   established      handshake finished: for a client leg, choose the backend now
//   plaintext        bytes from the peer, only while delivering (see below)
//   peer_done(clean) the peer sends nothing more: close_notify (clean) or a
//                    transport EOF without it; relay it as a half-close
//   failed           handshake or protocol failure (an alert has been written)
//   drained          queued() fell to kLowWater: the other leg may read again
//   shutdown_done    our close_notify and FIN are written (the direction
//                    towards this peer is finished)
//
// Backpressure and buffering, both bounded:
// - towards the peer, write() encrypts everything at once (a session writes
//   one read buffer at a time) and returns true when queued() reached
//   kHighWater: stop reading the other leg until drained.
// - from the peer, plaintext is decrypted only while delivering (off until
//   deliver(true): a client leg finishes its handshake before the backend is
//   connected) and only into the caller's buffer; ciphertext meanwhile stays
//   in the TLS input, and on_ciphertext() returns false once that holds
//   kInputLimit: stop reading the socket until deliver(true) or resume.
//
// Lifetime: a member of its session, destroyed after the socket's close
// callback (pending write/shutdown requests complete with UV_ECANCELED
// before it; after stop() their callbacks report nothing).
// Thread: its worker's loop only.
#pragma once

#include <uv.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "core/flow_control.h"
#include "core/tls/tls_stream.h"

namespace lb::tls {

class TlsRelay {
 public:
  static constexpr size_t kHighWater = core::Direction::kHighWater;
  static constexpr size_t kLowWater = core::Direction::kLowWater;
  static constexpr size_t kInputLimit = 64 * 1024;

  class Events {
   public:
    virtual void tls_established() = 0;
    virtual void tls_plaintext(const char* data, size_t n) = 0;
    virtual void tls_peer_done(bool clean) = 0;
    virtual void tls_failed(bool during_handshake, const std::string& why) = 0;
    virtual void tls_drained() = 0;
    virtual void tls_shutdown_done() = 0;

   protected:
    ~Events() = default;
  };

  // `socket` is the session's connected handle; `scratch` a buffer of
  // `scratch_len` bytes for decrypted data (the worker's read buffer: the
  // plaintext is consumed by tls_plaintext before it returns). `budget`
  // (nullable) is charged for the records queued on the socket.
  TlsRelay(uv_tcp_t* socket, std::unique_ptr<TlsStream> stream, Events& events, char* scratch,
           size_t scratch_len, core::BufferBudget* budget);
  ~TlsRelay();
  TlsRelay(const TlsRelay&) = delete;
  TlsRelay& operator=(const TlsRelay&) = delete;

  // Client mode: sends the ClientHello. Server mode: nothing to do until
  // bytes come. `preface` goes to the socket first, as it is (a PROXY
  // header precedes the TLS session on the connection).
  void start(std::string_view preface = {});
  // Bytes the session read from the socket. False: stop reading it.
  bool on_ciphertext(const char* data, size_t n);
  void on_transport_eof();
  // Delivery of plaintext on or off; turning it on decrypts what waits. False
  // (after turning it on): the input is still full, keep the socket paused.
  bool deliver(bool on);
  // Plaintext for the peer. True: queued() reached kHighWater.
  bool write(const char* data, size_t n);
  size_t queued() const { return queued_ + stream_->output_pending(); }
  // Sends close_notify, then shuts the socket down for writing.
  void shutdown();
  // The session is closing the socket: later callbacks report nothing.
  void stop() { stopped_ = true; }

  bool established() const { return stream_->handshake_done(); }
  const TlsStream& stream() const { return *stream_; }

 private:
  struct WriteReq;
  void drive();                              // handshake and plaintext delivery as far as possible
  bool flush();                              // records to the socket; false after reporting a failure
  std::string send(std::string_view bytes);  // to the socket, in order; the error, or ""
  void fail(const std::string& why);
  static void on_write_cb(uv_write_t* req, int status);
  static void on_shutdown_cb(uv_shutdown_t* req, int status);

  uv_tcp_t* socket_;
  std::unique_ptr<TlsStream> stream_;
  Events& events_;
  char* scratch_;
  size_t scratch_len_;
  core::BufferBudget* budget_;
  uv_shutdown_t shutdown_req_;
  size_t queued_ = 0;  // bytes handed to uv_write, not yet written
  bool delivering_ = false;
  bool paused_ = false;            // write() returned true; drained not yet reported
  bool peer_done_ = false;         // tls_peer_done reported
  bool failed_ = false;            // tls_failed reported
  bool shutdown_pending_ = false;  // close_notify written, uv_shutdown requested
  bool stopped_ = false;
};

}  // namespace lb::tls
