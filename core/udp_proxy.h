// UDP load balancing: one UdpListener per UDP bind per worker.
//
// Path of a datagram: the listener socket (SO_REUSEPORT, so the kernel keeps
// a client on one worker; read in batches with recvmmsg) -> the session table,
// keyed by client address and port -> for a new client: pick a backend with
// the pool's selector and open a connected upstream socket, so the kernel
// matches the backend's replies to the session -> forward. Replies arriving
// on the upstream socket go back to the client from the listener socket.
//
// Admission of a new client: allow/deny, then [global], listener and
// per-source max_connections (a session counts as a connection); a refused
// client's datagrams are dropped and counted, existing sessions carry on.
// With proxy_protocol = "v2" every datagram to the backend starts with a
// PROXY v2 header (DGRAM, client -> the listener's bound address), sent as a
// second iovec, so the payload is still never copied.
//
// A session ends when every client datagram has had its `udp_responses`
// replies (DNS: 1), after `session_timeout` without traffic either way, when
// the backend answers with ICMP unreachable, or when its backend stopped
// being a candidate (down, drained, removed): the client's next datagram then
// starts a new session on a live backend.
//
// Syscalls are the cost of UDP on loopback (a profile is ~95% kernel), so
// the data path is written against raw sockets rather than uv_udp_t:
//  * The listener socket is watched by a uv_poll_t; each readable event reads
//    ONE recvmmsg batch (level-triggered epoll brings us back for the rest),
//    instead of libuv's read-until-EAGAIN. The batch's datagrams go to their
//    backends with one sendmmsg per session (order kept within a client).
//  * Every session's connected upstream socket sits in one epoll set of the
//    listener (nested in the loop through one uv_poll_t), so a session costs
//    socket+connect+epoll_ctl and close, with no per-session uv handle; a
//    ready session is read with ONE recvmmsg.
//  * Replies to clients are received straight into staging slots (the
//    worker's UDP buffer) and leave from there, uncopied, in one sendmmsg on
//    the listener socket when every ready session of that loop iteration has
//    been read (or the slots are full).
// A socket that cannot take a datagram (EAGAIN) gets a copy queued, bounded
// per socket (UDP has no backpressure), flushed when it turns writable.
//
// Lifetime: a UdpListener is owned by its Worker while configured. Retired
// (removed by a reload, or draining on stop) it takes no new clients but
// keeps forwarding for existing sessions, and deletes itself once the last
// session ended and its handles closed. A session is freed as it ends.
// Thread: its worker's loop only.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>

#include "core/backend.h"
#include "core/flat_map.h"
#include "core/hash/os_random.h"
#include "core/timeout_wheel.h"
#include "core/worker.h"

namespace lb::core {

// Client address as a hashable key (family, port, address bytes).
struct UdpPeerKey {
  uint16_t family = 0;
  uint16_t port = 0;
  uint8_t addr[16] = {};
  bool operator==(const UdpPeerKey& o) const;
  static UdpPeerKey from(const sockaddr* sa);
};
// Keyed by a seed drawn from the OS for every table (a default-constructed
// hash draws a new one): a public fixed seed would let a sender of spoofed
// datagrams pick source addresses that all probe from one slot, turning each
// lookup of the session table into a linear scan.
struct UdpPeerKeyHash {
  uint64_t seed = hash::os_random_u64();
  size_t operator()(const UdpPeerKey& k) const;
};

class UdpListener {
 public:
  UdpListener(Worker& worker, std::string key, ListenerRuntimePtr runtime);
  UdpListener(const UdpListener&) = delete;
  UdpListener& operator=(const UdpListener&) = delete;

  // Adopts the bound socket (closed with the listener, or at once on
  // failure) and starts receiving. 0 or a libuv error (then the object has
  // already scheduled its own deletion).
  int open(int fd);
  const std::string& key() const { return key_; }
  void set_runtime(ListenerRuntimePtr rt) { runtime_ = std::move(rt); }
  // No new sessions; closes itself when the last session is gone.
  void retire();
  // Graceful stop: no new sessions, sessions that owe no reply end now, the
  // others when answered (or timed out).
  void drain();
  // Ends every session and closes now (end of a graceful stop).
  void abort();
  size_t sessions() const { return sessions_.size(); }

 private:
  struct Session;
  struct Pending;
  struct PendingQueue;
  struct ReplyBatch;
  ~UdpListener();

  static void on_listener_io(uv_poll_t* h, int status, int events);
  static void on_upstream_io(uv_poll_t* h, int status, int events);
  static void on_session_timeout(TimeoutNode* n);
  static void on_handle_closed(uv_handle_t* h);

  void receive_batch();
  // The session a client datagram goes to (found, or new); null: dropped.
  Session* session_for(const sockaddr* client);
  Session* new_session(const sockaddr* client, const UdpPeerKey& key);
  bool still_valid(Session* s);
  // Sends the datagrams in[idx[0..count)] of a receive batch (in `buf`'s
  // slots) to the session's backend, each after the PROXY header if any;
  // queues copies when the socket is full.
  void forward(Session* s, char* buf, const mmsghdr* in, const unsigned* idx, unsigned count);
  void upstream_event(Session* s, uint32_t events);
  void read_upstream(Session* s);
  // False when the reply ended the session (it is freed then).
  bool reply(Session* s, char* data, size_t len);
  // Stages a reply (already in its slot of the worker's UDP buffer) for the
  // next sendmmsg; false when it must be dropped.
  bool stage_reply(const sockaddr_storage& to, char* data, size_t len);
  void flush_replies();
  void flush_client_queue();
  void flush_session_queue(Session* s);
  void watch_session(Session* s, bool writable);
  void watch_listener(bool writable, bool force = false);
  void end_session(Session* s, const char* result);
  void session_gone();
  void close_socket();
  void destroy();

  Worker& worker_;
  const std::string key_;
  ListenerRuntimePtr runtime_;
  int fd_ = -1;                      // the listener socket
  uv_poll_t* poll_ = nullptr;        // fd_ in the loop
  // Epoll set of the sessions' upstream sockets, data.ptr = the Session. A
  // session's socket is closed (and so leaves the set) as the session ends;
  // it is never duplicated, so no event can name a freed session.
  int epfd_ = -1;
  uv_poll_t* sessions_poll_ = nullptr;  // epfd_ in the loop
  int open_handles_ = 0;             // uv handles not yet through their close callback
  bool listener_writable_ = false;   // poll_ also waits for UV_WRITABLE
  bool retired_ = false;
  bool closing_ = false;
  size_t live_sessions_ = 0;
  sockaddr_storage local_addr_{};  // the bound address, for PROXY headers
  std::unique_ptr<PendingQueue> client_queue_;  // replies waiting for fd_
  std::unique_ptr<ReplyBatch> replies_;         // allocated on the first reply
  FlatMap<UdpPeerKey, Session*, UdpPeerKeyHash> sessions_;
};

}  // namespace lb::core
