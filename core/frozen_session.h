// FrozenSession: a relaying TCP session taken out of its worker, as a plain
// record, to be resumed on another worker or by another lb process (upgrade
// in place). TcpSession::freeze() makes one; TcpSession::resume() turns one
// back into a live session on the calling worker.
//
// Everything a session needs to carry on is here and nothing else: the two
// connected sockets, the bytes lb had read but not yet written (copy-path
// queues and splice pipes alike are drained into `pending`), how far each
// direction's half-close got, and what the access log and the counters need.
// No pointer, no libuv handle: every field can be serialized as it is
// (the fds by SCM_RIGHTS).
//
// A session that is not relaying yet moves too, in the stage it was in
// (`stage`): still reading its client's PROXY header or ClientHello, or
// still connecting to its backend. Such a record has no backend socket
// (backend_fd -1): `to_backend.pending` holds the client's bytes lb has
// read so far and not passed on (the header or hello so far, or what the
// backend is to get first once connected), and the program resuming it
// carries on from there. A connect in progress is not carried: nothing has
// been sent on it, and it is aborted before the backend could accept it
// (see TcpSession::freeze), so the resuming program connects anew.
//
// Ownership: the record owns client_fd and backend_fd from freeze() until
// they are given to resume() (which takes them whatever happens) or closed
// with discard(). Thread: a plain value; any thread may hold it.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>

namespace lb::core {

struct FrozenSession {
  // One direction of the relay.
  struct Way {
    // Bytes read from the source that the destination has not taken yet, in
    // stream order: resume() writes them first, before anything read later.
    std::string pending;
    // The source sent its FIN: it is never read again. When shutdown_done is
    // false the FIN is still to be passed on, after `pending`.
    bool eof = false;
    // shutdown(SHUT_WR) was done on the destination: nothing more flows
    // this way. Implies eof and an empty `pending`.
    bool shutdown_done = false;
    bool operator==(const Way&) const = default;
  };

  // Which sub-state the session was frozen in (informational: a resumed
  // session always starts on the copy path, and may move to splice again).
  enum class Path : uint8_t { Copy = 0, Splice = 1 };

  // How far the session had got. Relaying covers HalfClosed too (the Ways
  // say how far each direction got).
  enum class Stage : uint8_t {
    Relaying = 0,    // both sockets connected, bytes flowing
    Header = 1,      // reading the client's PROXY header (accept_proxy_protocol)
    Hello = 2,       // reading the client's ClientHello (tls = "passthrough")
    Connecting = 3,  // client admitted and routed; no backend connection yet
  };

  Stage stage = Stage::Relaying;
  int client_fd = -1;   // connected, non-blocking TCP socket to the client
  int backend_fd = -1;  // connected, non-blocking TCP socket to the backend (Relaying only)
  Path path = Path::Copy;
  Way to_backend;  // client -> backend
  Way to_client;   // backend -> client

  std::string listener;  // conf::Listener::name the client connected to
  // Relaying: the backend's pool (Backend::pool) and its id in that pool
  // (Backend::id). Connecting: the pool being routed to, and no backend
  // (the resuming program picks one). Header, Hello: both empty.
  std::string pool;
  std::string backend;

  // The client as every rule saw it: the peer, or a PROXY header's source.
  sockaddr_storage client{};
  // What the client connected to (or the PROXY header's destination), for
  // the PROXY header lb sends; ss_family AF_UNSPEC when not known yet.
  sockaddr_storage local{};
  uint64_t flow_hash = 0;  // the hash the backend was picked with (0: not a hash selector)

  // When the connection was accepted, in uv_now() milliseconds: libuv's
  // CLOCK_MONOTONIC clock, the same for every process of one boot.
  uint64_t started_ms = 0;
  uint64_t bytes_to_backend = 0;  // relayed so far (the access log's counts)
  uint64_t bytes_to_client = 0;
  // Header and Hello: when the wait for the client's header or hello ends,
  // in uv_now() milliseconds (the same clock as started_ms); 0 otherwise.
  uint64_t deadline_ms = 0;

  // Field by field (the addresses byte for byte): for tests of the records.
  bool operator==(const FrozenSession& o) const;
};

// Closes the record's sockets with a reset (the connection is given up).
void discard(FrozenSession& f);

}  // namespace lb::core
