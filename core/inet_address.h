#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

namespace lb::core {

// An IPv4 or IPv6 socket address in 28 bytes, where sockaddr_storage takes
// 128: what every TCP session keeps twice (its client and the address the
// client connected to), so it counts in lb's memory per connection. Any
// other family is kept as AF_UNSPEC.
union InetAddress {
  sockaddr sa;
  sockaddr_in v4;
  sockaddr_in6 v6;

  InetAddress() : v6{} {}
  explicit InetAddress(const sockaddr_storage& ss) : v6{} {
    if (ss.ss_family == AF_INET)
      std::memcpy(&v4, &ss, sizeof v4);
    else if (ss.ss_family == AF_INET6)
      std::memcpy(&v6, &ss, sizeof v6);
  }

  sa_family_t family() const { return sa.sa_family; }
  const sockaddr* get() const { return &sa; }
  sockaddr* get() { return &sa; }
  sockaddr_storage storage() const {
    sockaddr_storage ss{};
    std::memcpy(&ss, this, sizeof *this);
    return ss;
  }
};

static_assert(sizeof(InetAddress) == sizeof(sockaddr_in6));

}  // namespace lb::core
