// TcpSession: one client connection relayed to one backend, as an explicit
// state machine.
//
//                                 Hello
//                                 ^   |
//                                 |   v
//   Accepting --> Header --> Routing --> Connecting --> Relaying --> HalfClosed
//       |           |          |  ^          |  |          |             |
//       |           |          |  +----------+  |          |             |
//       +-----------+----------+----------------+----------+-------------+--> Closing
//                        Header, Hello, Connecting, Relaying, HalfClosed --> Frozen
//
//  Accepting   the worker accepted and counted it (global and listener
//              max_connections: core/admission.h, step 1); the peer address
//              is read.
//  Header      accept_proxy_protocol: the client's PROXY header is read into
//              header_ within kProxyHeaderTimeoutMs; its addresses then stand
//              for the client's. Bytes behind it go to early_.
//  Routing     admitted (allow/deny, max_connections_per_source on the final
//              client address). The pool and backend are chosen here, by
//              choose_backend(): the one point where a later step may wait
//              for more client bytes first (a TLS ClientHello for SNI
//              routing reads into early_, staying in Routing, and calls
//              choose_backend() when it has what it needs).
//  Hello       tls = "passthrough": the ClientHello is read into early_ within
//              tls_handshake_timeout (tcp_session_tls.cc); its server name
//              chooses pool_ (a route's, or the listener's), then
//              choose_backend(). Its bytes stay in early_, unchanged, and
//              the client stays read (early_reading_) while the backend
//              connects: no epoll change between the hello and the relay.
//              Not TLS, too large, closed or late: Closing, counted as
//              reason "tls".
//  Connecting  one connect attempt (connect_timeout); a failure goes back
//              to choose_backend(), avoiding every backend already tried, up
//              to `retries` more times. A pool with [pool.tls] connects
//              with the TLS handshake too (tcp_tls_backend.cc), within the
//              same connect_timeout; a failed handshake is a failed connect.
//  Relaying    both ways flow: our PROXY header and early_ first, then the
//              client's stream. Sub-state path_: Copy (tcp_copy.cc), Splice
//              (a SpliceRelay owns the sockets, tcp_splice.cc) or Unsplicing
//              (the relay is handing the sockets back to the copy path).
//  HalfClosed  one way has passed its EOF on; the other still flows.
//  Closing     both sockets closing; counters and the access-log line once
//              the last handle is closed, then the object is deleted.
//  Frozen      freeze() took the sockets out into a FrozenSession; the handles
//              are closing, and the object goes without an access-log line.
//
// Every libuv callback is a static function that only dispatches on state_
// into one of the transition functions below. Buffers, each with one meaning:
// header_ (the client's PROXY header, Header only), early_ (client bytes read
// before the backend is connected), the copy path's queued writes (per Way),
// and the relay's pipes.
//
// Relaying: a session starts on the copy path (read into the worker's buffer,
// uv_try_write, queue only what the kernel refused, stop reading at the
// high-water mark or when max_buffer_memory is spent). Where splice(2) works
// (Linux; LB_SPLICE=0 turns it off) a session that has relayed
// kSpliceAfterBytes, and shown itself a bulk stream by one read of
// kSpliceReadMin or more, hands both sockets to a SpliceRelay with the same
// backpressure, half-close and reset semantics; a relay that finds splice
// unsupported, or gets no pipe, hands the sockets back (back_to_copy_path).
//
// Freezing (upgrade in place): a session in Relaying or HalfClosed, on either
// path, can be frozen into a FrozenSession (core/frozen_session.h) and
// resumed from it on another worker or in another process; see freeze() and
// resume(). So can one still reading its PROXY header or ClientHello (the
// bytes read so far go with it, and parsing goes on where it stopped), and
// one still connecting to its backend (the connect is aborted while its SYN
// is unanswered, and the resuming side connects anew).
//
// Lifetime: owned by its worker (in the worker's intrusive session list) and
// destroyed in the close callback of the last of its handles, so no libuv
// callback can ever see a freed session. Pending writes and connects complete
// with UV_ECANCELED before the close callbacks run; their callbacks ignore it.
// Thread: its worker's loop only.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "core/admission.h"
#include "core/backend.h"
#include "core/flow_control.h"
#include "core/frozen_session.h"
#include "core/inet_address.h"
#include "core/splice_relay.h"
#include "core/timeout_wheel.h"
#include "core/tls/client_context.h"
#include "core/tls/passthrough.h"
#include "core/tls/tls_relay.h"
#include "core/uv_ptr.h"
#include "core/worker.h"

namespace lb::core {

class TcpSession {
 public:
  // Takes ownership of `client`, an accepted uv_tcp_t whose connection the
  // worker has already counted (`admission`, step 1 done).
  static void start(Worker& worker, ListenerRuntimePtr listener, UvPtr<uv_tcp_t> client, Admission admission);

  // Takes a session out of this worker: fills `out` (which then owns its
  // sockets, see FrozenSession) and closes the session's handles; the
  // session ends without an access-log line, the record carries it on.
  // False, with nothing changed, unless the session is Relaying or
  // HalfClosed and not between the copy and splice paths, or in Header or
  // Hello, or (when `connecting`) in Connecting with its SYN unanswered. A
  // TLS-terminated or re-encrypted session is never frozen.
  bool freeze(FrozenSession* out, bool connecting = false);
  // Continues a frozen session on `worker` (call on its thread). `listener`
  // and `backend` are what the record names (the caller looks them up). The
  // connection counts again against the global, listener and per-source
  // limits, without being refused by them: it was admitted already. Takes
  // the record's fds whatever happens; on failure both are reset.
  // `backend` is null for a record that is not Relaying (it has none yet).
  static void resume(Worker& worker, ListenerRuntimePtr listener, BackendPtr backend, FrozenSession&& f);
  // Not frozen now, but may be once it settles: before Relaying (Accepting,
  // Header, Routing, Hello, Connecting) or between the copy and splice
  // paths. Never for a TLS-terminated session, which cannot move at all.
  bool settling() const;

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
  // kProxyHeaderTimeoutMs, unless LB_PROXY_HEADER_TIMEOUT_MS says otherwise
  // (read once): for tests whose half-sent header must outlast something
  // slow, such as an upgrade on a loaded machine.
  static uint64_t proxy_header_timeout_ms();
  static constexpr unsigned kMaxAttempts = 11;  // retries <= 10 (conf validation)
  // Bytes relayed on the copy path before a session moves to splice(2).
  static constexpr uint64_t kSpliceAfterBytes = 64 * 1024;
  // A read at least this large marks a bulk stream (half the worker's read
  // buffer). Request/response traffic of small messages never reads that
  // much at once and stays on the copy path, where a message costs the same
  // two syscalls without the switch (dups, closes, epoll changes) or pipes.
  static constexpr size_t kSpliceReadMin = 32 * 1024;
  // Most client bytes a passthrough session holds in early_ while its
  // backend connects (a TLS client sends little before the server's answer);
  // past it the client waits in the kernel until the backend is connected.
  static constexpr size_t kEarlyLimit = 64 * 1024;

  enum class State : uint8_t {
    Accepting,
    Header,
    Routing,
    Hello,
    Connecting,
    Relaying,
    HalfClosed,
    Closing,
    Frozen
  };
  enum class Path : uint8_t { Copy, Splice, Unsplicing };
  enum class Result : uint8_t { Ok, ConnectFailed, Timeout, Reset, Refused };

  struct WriteReq;
  // One direction of the copy path: its flow state and the writes queued on
  // its destination (oldest first; freeze() needs their bytes).
  struct Way {
    Direction flow;
    WriteReq* queue_head = nullptr;
    WriteReq* queue_tail = nullptr;
    // On the destination, after the source's EOF, when writes are still
    // queued there (rare: made then, not carried by every session). Freed
    // with the session, after libuv has called back (UV_ECANCELED at close).
    std::unique_ptr<uv_shutdown_t> shutdown;
  };
  // The client's PROXY header as it arrives (Header state only).
  struct HeaderBuffer {
    uint8_t* data = nullptr;  // proxy::kMaxHeader bytes
    size_t len = 0;
  };

  TcpSession(Worker& worker, ListenerRuntimePtr listener, UvPtr<uv_tcp_t> client);
  ~TcpSession();

  // --- transitions (tcp_session.cc) ---
  void on_accepted();                   // Accepting -> Header | Routing
  void enter_header();                  // Accepting -> Header
  void on_header_bytes(ssize_t nread);  // Header -> Routing (header complete)
  void refuse_header(const char* why);  // Header -> Closing
  void admit_client();                  // -> Routing | Closing (admission steps 3 and 4)
  void enter_routing();                 // -> Routing; the pool is chosen here
  void choose_backend();                // Routing -> Connecting | Closing

  // --- passthrough (tcp_session_tls.cc) ---
  void enter_hello();                                    // Routing -> Hello
  void on_hello_bytes(ssize_t nread, const char* data);  // Hello -> Routing, pool chosen (hello complete)
  void refuse_tls(const char* why);                      // Hello -> Closing
  // Client bytes after the hello, before the backend is connected (Routing,
  // Connecting with early_reading_): into early_, up to kEarlyLimit.
  void on_early_bytes(ssize_t nread, const char* data);
  // Whether this session's access-log line will be written (JA4 is
  // computed only then).
  bool access_logged() const;

  void connect_to(Backend* b);        // -> Connecting
  void on_tcp_connected();            // Connecting -> on_connected() | backend handshake
  void on_connected();                // Connecting -> Relaying
  void on_connect_failed();           // Connecting -> choose_backend()
  void finish(Result r, bool reset);  // any -> Closing
  void enter_frozen();                // Relaying | HalfClosed -> Frozen
  bool relaying() const { return state_ == State::Relaying || state_ == State::HalfClosed; }
  std::string proxy_header();
  void append_tls_tlvs(std::string* header);
  void release_backend();
  void arm_keepalive();
  void set_backend_keepalive(int fd);
  void close_handle(UvPtr<uv_tcp_t>& h, bool reset);
  void unref();  // one handle (or the relay) fewer; deletes the session at 0
  void log_access();
  void count_bytes(bool to_backend, size_t n);
  void report_backend_failure();

  // --- copy path (tcp_copy.cc) ---
  void on_relay_read(uv_tcp_t* src, ssize_t nread, const char* data);
  void forward(Way& w, uv_tcp_t* src, uv_tcp_t* dst, const char* data, size_t n);
  void on_write_done(WriteReq* w, int status);
  void on_eof(Way& w, uv_tcp_t* dst);  // Relaying -> HalfClosed | Closing
  void on_shutdown_done(Way& w, int status);
  Way& way_from(uv_tcp_t* src) { return src == client_.get() ? up_ : down_; }
  uv_tcp_t* peer_of(uv_tcp_t* h) { return h == client_.get() ? upstream_.get() : client_.get(); }
  uint8_t starved_bit(uv_tcp_t* src) const { return src == client_.get() ? 1 : 2; }
  // The shared buffer budget is spent and `src`'s direction has bytes
  // queued: stop reading it until budget returns (or the queue empties).
  void starve(uv_tcp_t* src);
  // Reads `src` again (after backpressure or a budget wait).
  bool resume_read(uv_tcp_t* src);
  // The bytes queued on `w`'s destination that it has not taken yet.
  std::string unwritten(const Way& w, uv_tcp_t* dst) const;

  // --- splice path (tcp_splice.cc) ---
  void maybe_splice();
  bool switch_to_splice();  // Path Copy -> Splice; false: stays on Copy
  // The relay handed the sockets back (Unsupported, NoPipe): new handles on
  // them, directions as the relay left them, reading again.
  void back_to_copy_path(SpliceRelay& relay);  // Path Unsplicing -> Copy
  // New uv_tcp_t handles for client_ and upstream_ on two connected fds,
  // for the copy path (takes the fds; false: reset and finished).
  bool adopt_fds(int client_fd, int backend_fd);

  // --- TLS termination (tcp_tls.cc): tls = "terminate" listeners ---
  // The client leg is a TlsRelay: Routing waits for the handshake (bounded by
  // tls_handshake_timeout) before choose_backend(); the relay then turns
  // client ciphertext into plaintext for the copy path's up_ way, and the
  // backend's bytes into records for the client. Never spliced, never frozen.
  struct TlsEvents final : tls::TlsRelay::Events {
    TcpSession* s;
    explicit TlsEvents(TcpSession* session) : s(session) {}
    void tls_established() override { s->on_tls_established(); }
    void tls_plaintext(const char* data, size_t n) override { s->on_tls_plaintext(data, n); }
    void tls_peer_done(bool clean) override { s->on_tls_peer_done(clean); }
    void tls_failed(bool during_handshake, const std::string& why) override {
      s->on_tls_failed(during_handshake, why);
    }
    void tls_drained() override { s->on_tls_drained(); }
    void tls_shutdown_done() override { s->on_shutdown_done(s->down_, 0); }
  };
  void enter_tls();  // Routing: handshake first
  void on_tls_read(ssize_t nread, const char* data);
  void on_tls_established();  // Routing -> choose_backend()
  void on_tls_plaintext(const char* data, size_t n);
  void on_tls_peer_done(bool clean);
  void on_tls_failed(bool during_handshake, const std::string& why);
  void on_tls_drained();
  void on_tls_timeout();
  void tls_from_backend(const char* data, size_t n);

  // --- re-encryption (tcp_tls_backend.cc): pools with [pool.tls] ---
  // The backend leg is a TlsRelay in client mode on upstream_ (owned by its
  // Upstream): Connecting lasts until its handshake has finished; our PROXY
  // header goes before it, in the clear. Then plaintext from the client (or
  // the client's TlsRelay) is encrypted for the backend, and the backend's
  // decrypted bytes go to the client as from a plain backend. Never
  // spliced, never frozen.
  struct BackendTlsEvents final : tls::TlsRelay::Events {
    TcpSession* s;
    explicit BackendTlsEvents(TcpSession* session) : s(session) {}
    void tls_established() override { s->on_connected(); }
    void tls_plaintext(const char* data, size_t n) override { s->on_backend_plaintext(data, n); }
    void tls_peer_done(bool clean) override { s->on_backend_tls_done(clean); }
    void tls_failed(bool during_handshake, const std::string& why) override {
      s->on_backend_tls_failed(during_handshake, why);
    }
    void tls_drained() override { s->on_backend_tls_drained(); }
    void tls_shutdown_done() override { s->on_shutdown_done(s->up_, 0); }
  };
  // The pool's [pool.tls] context for backend_, or null (plaintext).
  void start_backend_tls(const tls::ClientContext& ctx);  // Connecting: TCP is up
  void on_backend_tls_read(ssize_t nread, const char* data);
  void on_backend_plaintext(const char* data, size_t n);
  void on_backend_tls_done(bool clean);
  void on_backend_tls_failed(bool during_handshake, const std::string& why);
  void on_backend_tls_drained();
  // Client bytes (plaintext) for the backend: encrypted or as they are.
  void to_backend(const char* data, size_t n);

  // --- freeze and resume (tcp_freeze.cc) ---
  void restore(BackendPtr backend, FrozenSession& f);
  // Header, Hello, Connecting (client_ only; the Frozen record's stage).
  bool freeze_waiting(FrozenSession* out);
  void restore_waiting(FrozenSession& f);
  // Connecting: the kernel has not completed the connect (TCP_SYN_SENT).
  bool connect_unanswered() const;

  // --- libuv callbacks: dispatch only ---
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read_cb(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_write_cb(uv_write_t* req, int status);
  static void on_shutdown_cb(uv_shutdown_t* req, int status);
  static void on_connect_cb(uv_connect_t* req, int status);
  static void on_handle_closed(void* session);
  static void on_timeout(TimeoutNode* n);
  static void on_keepalive_due(TimeoutNode* n);
  static void on_splice_activity(void* ctx, bool to_backend, size_t bytes);
  static void on_splice_eof_passed(void* ctx, bool to_backend);
  static void on_splice_finished(void* ctx, SpliceResult result, bool backend_failed);
  static void on_splice_closed(void* ctx);
  static const SpliceRelay::Handler kSpliceHandler;

  Worker& worker_;
  ListenerRuntimePtr listener_;
  State state_ = State::Accepting;
  Path path_ = Path::Copy;
  Result result_ = Result::Ok;
  // The two legs. Closing one (close_handle) nulls it; its close callback
  // counts in refs_. upstream_ is a fresh socket for each connect attempt (a
  // failed socket cannot be reused).
  UvPtr<uv_tcp_t> client_;
  UvPtr<uv_tcp_t> upstream_;
  // Path Splice/Unsplicing: the relay owns the sockets; client_ and upstream_
  // are closed (null).
  SpliceRelay* relay_ = nullptr;
  TimeoutNode timeout_;
  // TCP keepalive of the backend socket, armed when the backend is connected
  // (arm_keepalive) for half of the keepalive idle time: the probes start
  // after idle_s without data from the backend whenever the options are set,
  // so a vanished backend is found as early, and a connection that ends
  // before skips the four setsockopt calls (set_backend_keepalive).
  TimeoutNode keepalive_;
  // The pool being routed to: points into listener_'s configuration, or at
  // backend_->pool; both outlive the session's use of it.
  const std::string* pool_ = nullptr;
  BackendPtr backend_;         // the latest backend chosen
  bool holds_active_ = false;  // counted in backend_->active
  const Backend* tried_[kMaxAttempts];
  unsigned attempts_ = 0;
  int refs_ = 0;  // open handles (and the relay)
  Way up_;        // client -> backend
  Way down_;      // backend -> client
  uint64_t flow_hash_ = 0;
  uint64_t started_ms_ = 0;
  // Header, Hello: when the wait for the client's header or hello ends
  // (uv_now() ms); a frozen record carries it, so an upgrade does not
  // extend the wait.
  uint64_t wait_deadline_ms_ = 0;
  uint64_t bytes_to_backend_ = 0;
  uint64_t bytes_to_client_ = 0;
  InetAddress client_addr_;  // the client: the peer, or the PROXY header's source
  InetAddress local_addr_;   // what the client connected to (or the header's destination)
  bool have_local_ = false;
  bool upstream_reading_ = false;  // uv_read_start on upstream_ already done
  // Passthrough: client_ is read from the hello on into early_, through
  // Routing and Connecting; on_connected() then needs no uv_read_start.
  bool early_reading_ = false;
  // The client's EOF seen while early_reading_: passed on once connected.
  bool early_eof_ = false;
  bool bulk_seen_ = false;  // a read of kSpliceReadMin or more happened
  uint8_t starved_ = 0;     // starved_bit()s of sources stopped for budget
  Admission admission_;     // what the connection counts against the limits
  HeaderBuffer header_;     // State::Header only
  // Client bytes read before the backend was connected (behind a PROXY
  // header; a passthrough session's ClientHello and what follows it); sent
  // on right after our own PROXY header.
  std::string early_;
  // TLS listeners: what the ClientHello said, for routing, the access log
  // and the PROXY header.
  std::unique_ptr<tls::Passthrough> hello_;
  std::unique_ptr<tls::TlsRelay> tls_;  // tls = "terminate": the client leg
  TlsEvents tls_events_{this};
  // [pool.tls]: upstream_'s TLS leg. Each connect attempt's leg stays in
  // backend_tls_legs_ until the session is freed, which is after every
  // handle's close callback, so no write request of a failed attempt's leg
  // outlives it (attempts are bounded by retries).
  tls::TlsRelay* up_tls_ = nullptr;
  std::vector<std::unique_ptr<tls::TlsRelay>> backend_tls_legs_;
  // The [pool.tls] of the table the backend was picked from (null:
  // plaintext), taken at each connect: the pool's, not the listener's
  // generation (a reload may publish the pools first).
  std::shared_ptr<const tls::ClientContext> backend_tls_;
  BackendTlsEvents up_tls_events_{this};
};

}  // namespace lb::core
