// Listening sockets for worker loops.
//
// libuv 1.44 cannot set SO_REUSEPORT itself, so lb creates each worker's
// socket by hand (socket, SO_REUSEADDR + SO_REUSEPORT, bind) and hands the fd
// to the worker, which adopts it with uv_tcp_open()/uv_udp_open(). The kernel
// then spreads new connections over the workers' sockets.
#pragma once

#include <sys/socket.h>

#include <string>

#include "conf/config.h"

namespace lb::core {

// Creates a bound, non-blocking, close-on-exec socket of `type` (SOCK_STREAM
// or SOCK_DGRAM) with SO_REUSEPORT. Returns the fd, or -errno.
int make_reuseport_socket(const sockaddr* addr, socklen_t len, int type);

// TCP keepalive on every backend socket, on by default (there is no key: the
// interface has none, and HAProxy's `option srvtcpka` / nginx's
// `so_keepalive` are opt-in only because their system defaults, 2 h, are
// useless). A backend that vanishes without a reset (power loss, a dropped
// route, a firewall that forgets the flow) would otherwise hold an idle
// connection, and its client, until idle_timeout. The probes start after a
// tenth of idle_timeout (1 s to 60 s), every third of that (1 s to 20 s),
// three of them: with the default idle_timeout of 10 min a dead backend is
// found after about 2 min, with 30 s after about 6 s. A backend that answers
// the probes is never affected; data in flight to a dead backend is bounded by
// idle_timeout (keepalive probes only idle sockets). TcpSession sets it at
// half of idle_s (TcpSession::arm_keepalive), not at connect.
struct KeepaliveParams {
  int idle_s;      // TCP_KEEPIDLE
  int interval_s;  // TCP_KEEPINTVL
  int count;       // TCP_KEEPCNT
};
KeepaliveParams backend_keepalive(conf::Duration idle_timeout);
// SO_KEEPALIVE with those parameters; false (errno set) if the kernel refused.
bool set_keepalive(int fd, const KeepaliveParams& p);

// getsockname() of fd.
bool local_address(int fd, sockaddr_storage* out, socklen_t* len);

// "1.2.3.4:80" / "[::1]:80"; IPv4-mapped IPv6 addresses print as IPv4.
std::string format_address(const sockaddr* sa);
// Just the IP ("1.2.3.4" / "::1").
std::string format_ip(const sockaddr* sa);

}  // namespace lb::core
