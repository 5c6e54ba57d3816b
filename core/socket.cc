#include "core/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace lb::core {

KeepaliveParams backend_keepalive(conf::Duration idle_timeout) {
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(idle_timeout).count();
  const int idle = static_cast<int>(std::clamp<long long>(secs / 10, 1, 60));
  return {idle, std::clamp(idle / 3, 1, 20), 3};
}

bool set_keepalive(int fd, const KeepaliveParams& p) {
  int one = 1;
  return ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) == 0 &&
         ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &p.idle_s, sizeof p.idle_s) == 0 &&
         ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &p.interval_s, sizeof p.interval_s) == 0 &&
         ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &p.count, sizeof p.count) == 0;
}

int make_reuseport_socket(const sockaddr* addr, socklen_t len, int type) {
  int fd = ::socket(addr->sa_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  if (addr->sa_family == AF_INET6) {
    // "[::]:80" listens on IPv6 only, so "0.0.0.0:80" can be bound beside it
    // (the nginx/HAProxy convention: one bind per family).
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  }
  if (::bind(fd, addr, len) != 0) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  return fd;
}

bool local_address(int fd, sockaddr_storage* out, socklen_t* len) {
  *len = sizeof *out;
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(out), len) == 0;
}

std::string format_ip(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
  } else if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], buf, sizeof buf);
    } else {
      inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
    }
  } else {
    return "unknown";
  }
  return buf;
}

std::string format_address(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    return format_ip(sa) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    std::string ip = format_ip(sa);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return ip + ":" + std::to_string(ntohs(in6->sin6_port));
    return "[" + ip + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "unknown";
}

}  // namespace lb::core
