// UdpListener: one UDP bind of one worker. Wiring only: the listener socket
// (recvmmsg in, sendmmsg out), the session table, the shared upstream
// sockets (UpstreamSet) and the staging (batch.h) are separate types.
//
// Path of a datagram: the listener socket (SO_REUSEPORT, so the kernel keeps
// a client on one worker; read in batches with recvmmsg) -> the session
// table, keyed by client address and port -> for a new client: admission,
// pick a backend with the pool's selector, take a route (a shared upstream
// socket and source address, see upstream_set.h) -> forward. Replies are
// matched to their session by what comes back (socket, local address,
// backend address) and leave from the listener socket, staged for one
// sendmmsg per loop iteration.
//
// Admission of a new client (core/admission.h, the same rules and order as
// TCP): [global] and listener max_connections, allow/deny, then
// max_connections_per_source (a session counts as a connection); a refused
// client's datagrams are dropped and counted, with at most one warning line
// a second; existing sessions carry on. With proxy_protocol = "v2" every
// datagram to the backend starts with a PROXY v2 header (DGRAM, client ->
// the listener's bound address), sent as a separate iovec.
//
// A session ends when every client datagram has had its `udp_responses`
// replies (DNS: 1), after `session_timeout` without traffic either way, when
// the backend answers with ICMP unreachable, or when its backend stopped
// being a candidate (down, drained, removed): the client's next datagram then
// starts a new session on a live backend. Its route and table slot are free
// at once; the Session object itself is freed at the end of the callback
// that ended it (never from inside a read path).
//
// Lifetime: a UdpListener is owned by its Worker while configured. Retired
// (removed by a reload, or draining on stop) it takes no new clients but
// keeps forwarding for existing sessions, and deletes itself (from a close
// callback) once the last session ended and its handles closed.
// Thread: its worker's loop only.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/handover/state.h"
#include "core/log.h"
#include "core/timeout_wheel.h"
#include "core/udp/batch.h"
#include "core/udp/session_table.h"
#include "core/udp/upstream_set.h"
#include "core/uv_ptr.h"
#include "core/worker.h"

namespace lb::core {

class UdpListener final : private udp::UpstreamSet::Handler {
 public:
  // Upstream sockets per address family, per listener and worker: bounds the
  // fds and ports the UDP path holds (see upstream_set.h for the capacity).
  static constexpr size_t kMaxUpstreamSockets = 2048;
  // Addresses `udp_source` may expand to.
  static constexpr size_t kMaxSources = 1024;

  UdpListener(Worker& worker, std::string key, ListenerRuntimePtr runtime);
  UdpListener(const UdpListener&) = delete;
  UdpListener& operator=(const UdpListener&) = delete;

  // Adopts the bound socket (closed with the listener, or at once on
  // failure) and starts receiving. 0 or a libuv error (then the object has
  // already scheduled its own deletion).
  int open(int fd);
  const std::string& key() const { return key_; }
  void set_runtime(ListenerRuntimePtr rt) { runtime_ = std::move(rt); }
  // No new sessions and the listening socket no longer read (it may be
  // another's to read: a new program's after an upgrade); closes itself when
  // the last session is gone.
  void retire();
  // Graceful stop: as retire(), and sessions that owe no reply end now, the
  // others when answered (or timed out).
  void drain();
  // Ends every session and closes now (end of a graceful stop).
  void abort();
  size_t sessions() const { return sessions_.size(); }
  // Appends a record of every live session (upgrade in place; no upstream
  // descriptor: the new program re-creates the mapping, see udp/pins.h).
  void export_sessions(std::vector<handover::UdpSession>* out);

 private:
  struct Session;
  static constexpr size_t kSlot = Worker::kUdpBufferSize / Worker::kUdpBatch;
  ~UdpListener();

  static void on_listener_io(uv_poll_t* h, int status, int events);
  static void on_upstream_io(uv_poll_t* h, int status, int events);
  static void on_session_timeout(TimeoutNode* n);
  static void on_handle_closed(void* owner);  // close_then(): one handle fewer
  static void on_trim(uv_timer_t* t);
  // Unused upstream sockets are closed after one to two of these.
  static constexpr uint64_t kTrimMs = 5000;

  void receive_batch();
  // The session a client datagram goes to (found, or new); null: dropped.
  Session* session_for(const sockaddr* client);
  Session* new_session(const sockaddr* client, const udp::PeerKey& key);
  bool still_valid(Session* s);
  // Sends the datagrams in[idx[0..count)] of a receive batch (in `buf`'s
  // slots) to the session's backend.
  void forward(Session* s, char* buf, const mmsghdr* in, const unsigned* idx, unsigned count);
  // UpstreamSet::Handler
  char* reply_slots(unsigned* room) override;
  void reply_slots_taken(unsigned n) override;
  void upstream_reply(void* owner, char* data, size_t len) override;
  void upstream_error(void* owner, int err) override;
  void flush_replies();
  void flush_client_queue();
  void watch_listener(bool writable, bool force = false);
  // Retired: no new session, and the listening socket is no longer read.
  void stop_reading();
  // Unlinks the session (table, route, counters, access log); it is freed by
  // the next reap().
  void end_session(Session* s, const char* result);
  void reap();
  void session_gone();
  void close_socket();
  void destroy();
  // The traffic-driven warnings, each rate limited.
  void warn_refused(const char* reason);
  void warn_no_route(const Backend& b, int err);

  Worker& worker_;
  const std::string key_;
  ListenerRuntimePtr runtime_;
  int fd_ = -1;                     // the listener socket
  UvPtr<uv_poll_t> poll_;           // fd_ in the loop
  UvPtr<uv_poll_t> upstream_poll_;  // upstream_'s epoll fd in the loop
  UvPtr<uv_timer_t> trim_timer_;    // closes upstream sockets left unused
  int open_handles_ = 0;            // uv handles not yet through their close callback
  bool listener_writable_ = false;  // poll_ also waits for UV_WRITABLE
  bool retired_ = false;
  bool closing_ = false;
  size_t live_sessions_ = 0;
  sockaddr_storage local_addr_{};  // the bound address, for PROXY headers
  std::unique_ptr<udp::UpstreamSet> upstream_;
  udp::PendingQueue client_queue_;                               // replies waiting for fd_
  std::unique_ptr<udp::ReplyBatch<Worker::kUdpBatch>> replies_;  // allocated on the first reply
  udp::SessionTable<Session*> sessions_;
  std::vector<Session*> dead_;  // ended, freed by reap()
  log::Throttle refused_warn_;  // traffic provokes these: at most a line a second
  log::Throttle route_warn_;
};

}  // namespace lb::core
