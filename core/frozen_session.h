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

  int client_fd = -1;   // connected, non-blocking TCP socket to the client
  int backend_fd = -1;  // connected, non-blocking TCP socket to the backend
  Path path = Path::Copy;
  Way to_backend;  // client -> backend
  Way to_client;   // backend -> client

  std::string listener;  // conf::Listener::name the client connected to
  std::string pool;      // the backend's pool (Backend::pool)
  std::string backend;   // the backend's id in that pool (Backend::id)

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

  // Field by field (the addresses byte for byte): for tests of the records.
  bool operator==(const FrozenSession& o) const;
};

// Closes the record's sockets with a reset (the connection is given up).
void discard(FrozenSession& f);

}  // namespace lb::core
