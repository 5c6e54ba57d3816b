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
// Lifetime: a UdpListener is owned by its Worker while configured. Retired
// (removed by a reload, or draining on stop) it takes no new clients but
// keeps forwarding for existing sessions, and deletes itself once the last
// session ended and its socket closed.
// Thread: its worker's loop only.
#pragma once

#include <uv.h>

#include <cstdint>
#include <string>

#include "core/backend.h"
#include "core/flat_map.h"
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
struct UdpPeerKeyHash {
  size_t operator()(const UdpPeerKey& k) const;
};

class UdpListener {
 public:
  UdpListener(Worker& worker, std::string key, ListenerRuntimePtr runtime);
  UdpListener(const UdpListener&) = delete;
  UdpListener& operator=(const UdpListener&) = delete;

  // Adopts the bound socket and starts receiving. 0 or a libuv error (then
  // the object has already scheduled its own deletion).
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
  struct SendReq;
  ~UdpListener();

  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_upstream_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_recv(uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const sockaddr* addr, unsigned flags);
  static void on_upstream_recv(uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const sockaddr* addr,
                               unsigned flags);
  static void on_send_done(uv_udp_send_t* req, int status);
  static void on_session_timeout(TimeoutNode* n);
  static void on_upstream_closed(uv_handle_t* h);

  void datagram(const char* data, size_t len, const sockaddr* client);
  Session* new_session(const sockaddr* client, const UdpPeerKey& key);
  bool still_valid(Session* s);
  // Sends on `h` (to `addr`, or connected when null) without copying when
  // the socket takes it now; queues a copy otherwise. False when dropped.
  // `prefix` (may be empty) goes first in the same datagram.
  bool send(uv_udp_t* h, const char* data, size_t len, const sockaddr* addr,
            const uint8_t* prefix = nullptr, size_t prefix_len = 0);
  void reply(Session* s, const char* data, size_t len);
  void end_session(Session* s, const char* result);
  void session_gone();
  void close_socket();

  Worker& worker_;
  const std::string key_;
  ListenerRuntimePtr runtime_;
  uv_udp_t* handle_ = nullptr;
  bool retired_ = false;
  bool closing_ = false;
  size_t live_sessions_ = 0;   // including those whose upstream is closing
  sockaddr_storage local_addr_{};  // the bound address, for PROXY headers
  FlatMap<UdpPeerKey, Session*, UdpPeerKeyHash> sessions_;
};

}  // namespace lb::core
