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

// getsockname() of fd.
bool local_address(int fd, sockaddr_storage* out, socklen_t* len);

// "1.2.3.4:80" / "[::1]:80"; IPv4-mapped IPv6 addresses print as IPv4.
std::string format_address(const sockaddr* sa);
// Just the IP ("1.2.3.4" / "::1").
std::string format_ip(const sockaddr* sa);

}  // namespace lb::core
