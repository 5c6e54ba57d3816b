// TcpSession: one client connection relayed to one backend.
//
// Path: accepted (the worker has counted it against the global and the
// listener max_connections) -> with accept_proxy_protocol, read the client's
// PROXY header within kProxyHeaderTimeout (its addresses then stand for the
// client's) -> admission: allow/deny, max_connections_per_source -> on a
// `tls = "passthrough"` listener, read the ClientHello within
// tls_handshake_timeout and choose the pool by its server name
// (tcp_session_tls.cc) -> pick a backend -> connect (connect_timeout; on failure up to `retries` more picks
// avoiding every backend already tried) -> our own PROXY header to the
// backend, if configured, before any client byte -> relay both ways with
// backpressure and half-close -> both sides closed -> counters and the
// access-log line.
//
// Relaying: a session starts on the copy path; where splice(2) works (Linux;
// LB_SPLICE=0 turns it off) a session that has relayed kSpliceAfterBytes,
// and shown itself a bulk stream by one read of kSpliceReadMin or more,
// hands both sockets to a SpliceRelay: bytes then move socket -> pipe ->
// socket inside the kernel, with the same
// backpressure, half-close and reset semantics as the copy path here, which
// remains the fallback (uv_try_write, and a copy only of what the kernel
// refused): a relay that finds splice unsupported, or gets no pipe, hands
// the sockets back and the session goes on copying (back_to_copy_path).
//
// Lifetime: owned by its worker (in the worker's intrusive session list) and
// destroyed in the close callback of the last of its handles, so no libuv
// callback can ever see a freed session. Pending writes and connects complete
// with UV_ECANCELED before the close callbacks run; their callbacks ignore it.
// Thread: its worker's loop only.
#pragma once

#include <uv.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "core/backend.h"
#include "core/flow_control.h"
#include "core/splice_relay.h"
#include "core/timeout_wheel.h"
#include "core/tls/passthrough.h"
#include "core/worker.h"

namespace lb::core {

class TcpSession {
 public:
  // Takes ownership of `client`, an initialised and accepted uv_tcp_t whose
  // connection the worker has already counted (shared and listener `open`).
  static void start(Worker& worker, ListenerRuntimePtr listener, uv_tcp_t* client);

  // Resets both sides now (worker abort at the end of a graceful stop).
  void abort();

  // Worker's intrusive list.
  TcpSession* prev = nullptr;
  TcpSession* next = nullptr;
  // Worker's list of sessions waiting for buffer budget (see BufferBudget).
  TcpSession* budget_prev = nullptr;
  TcpSession* budget_next = nullptr;
  bool budget_waiting = false;
  // The worker took this session off its wait list: budget is back, read
  // again whatever stopped for it.
  void budget_returned();

 private:
  // How long a client of an accept_proxy_protocol listener has to send its
  // whole PROXY header (HAProxy's default "timeout client" is much longer,
  // but the header comes from another balancer right after the handshake).
  static constexpr uint64_t kProxyHeaderTimeoutMs = 3000;

  enum class State { Header, Hello, Connecting, Relaying, Closing };
  enum class Result { Ok, ConnectFailed, Timeout, Reset, Refused };
  static constexpr unsigned kMaxAttempts = 11;  // retries <= 10 (conf validation)

  struct WriteReq;
  // One connect attempt: a fresh socket each time (a failed socket cannot be
  // reused). Freed in the handle's close callback.
  struct Upstream {
    uv_tcp_t tcp;  // first member: the handle pointer is the Upstream pointer
    uv_connect_t connect;
  };

  TcpSession(Worker& worker, ListenerRuntimePtr listener, uv_tcp_t* client);
  ~TcpSession();

  void begin();
  void header_bytes(ssize_t nread);
  void reject_header(const char* why);
  void admit();
  // Passthrough (tcp_session_tls.cc): wait for the ClientHello, then route.
  void start_hello();
  void hello_bytes(ssize_t nread);
  void reject_tls(const char* why);
  void choose_pool();
  std::string proxy_header();
  bool switch_to_splice(std::string_view preface);
  void maybe_splice();
  // The relay handed the sockets back (Unsupported, NoPipe): new handles on
  // them, directions as the relay left them, reading again.
  void back_to_copy_path(SpliceRelay& relay);
  // Bytes relayed on the copy path before a session moves to splice(2).
  static constexpr uint64_t kSpliceAfterBytes = 64 * 1024;
  // A read at least this large marks a bulk stream (half the worker's read
  // buffer). Request/response traffic of small messages never reads that
  // much at once and stays on the copy path, where a message costs the same
  // two syscalls without the switch (dups, closes, epoll changes) or pipes.
  static constexpr size_t kSpliceReadMin = 32 * 1024;
  void connect_next();
  void connected();
  void connect_failed();
  void forward(Direction& d, uv_tcp_t* src, uv_tcp_t* dst, const char* data, size_t n);
  void on_read(uv_tcp_t* src, ssize_t nread);
  void on_eof(Direction& d, uv_tcp_t* dst);
  void finish(Result r, bool reset);
  void close_handle(uv_tcp_t* h, bool reset);
  void release_backend();
  void unref();  // one handle (or the relay) fewer; deletes the session at 0
  void log_access();

  Direction& dir_from(uv_tcp_t* src) { return src == client_ ? up_ : down_; }
  uint8_t starved_bit(uv_tcp_t* src) const { return src == client_ ? 1 : 2; }
  // The shared buffer budget is spent and `src`'s direction has bytes
  // queued: stop reading it until budget returns (or the queue empties).
  void starve(uv_tcp_t* src);
  // Reads `src` again (after backpressure or a budget wait).
  bool resume_read(uv_tcp_t* src);
  uv_tcp_t* peer_of(uv_tcp_t* h) { return h == client_ ? upstream_ : client_; }

  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read_cb(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_write_cb(uv_write_t* req, int status);
  static void on_shutdown_cb(uv_shutdown_t* req, int status);
  static void on_connect_cb(uv_connect_t* req, int status);
  static void on_close_cb(uv_handle_t* h);
  static void on_timeout(TimeoutNode* n);
  static void on_splice_activity(void* ctx, bool to_backend, size_t bytes);
  static void on_splice_finished(void* ctx, SpliceResult result, bool backend_failed);
  static void on_splice_closed(void* ctx);
  static const SpliceRelay::Handler kSpliceHandler;
  void count_bytes(bool to_backend, size_t n);

  Worker& worker_;
  ListenerRuntimePtr listener_;
  uv_tcp_t* client_;
  uv_tcp_t* upstream_ = nullptr;
  // Set once the sockets moved to splice: client_ and upstream_ are closing
  // (or gone) from then on and must not be touched.
  SpliceRelay* relay_ = nullptr;
  uv_shutdown_t shutdown_up_;    // on upstream_, after the client's EOF
  uv_shutdown_t shutdown_down_;  // on client_, after the backend's EOF
  TimeoutNode timeout_;
  BackendPtr backend_;         // the latest backend chosen
  bool holds_active_ = false;  // counted in backend_->active
  const Backend* tried_[kMaxAttempts];
  unsigned attempts_ = 0;
  int refs_ = 0;  // open handles
  State state_ = State::Connecting;
  Result result_ = Result::Ok;
  Direction up_;    // client -> backend
  Direction down_;  // backend -> client
  uint64_t flow_hash_ = 0;
  uint64_t started_ms_ = 0;
  uint64_t bytes_to_backend_ = 0;
  uint64_t bytes_to_client_ = 0;
  sockaddr_storage client_addr_{};  // the client: the peer, or the PROXY header's source
  sockaddr_storage local_addr_{};   // what the client connected to (or the header's destination)
  bool have_local_ = false;
  bool upstream_reading_ = false;  // uv_read_start on upstream_ already done
  bool bulk_seen_ = false;         // a read of kSpliceReadMin or more happened
  bool holds_source_ = false;      // counted in the listener's per-source table
  bool relay_hands_back_ = false;  // the relay ended with the fds kept for the copy path
  uint8_t starved_ = 0;            // starved_bit()s of sources stopped for budget
  // accept_proxy_protocol: the header as it arrives (proxy::kMaxHeader bytes,
  // only until it is parsed); then the client bytes that came after it, sent
  // on once the backend is connected.
  uint8_t* header_buf_ = nullptr;
  size_t header_len_ = 0;
  // The pool backends are picked from: the listener's, or a TLS route's.
  const std::string* pool_;
  // Passthrough listeners only: the ClientHello's bytes and what it said.
  std::unique_ptr<tls::Passthrough> tls_;
};

}  // namespace lb::core
