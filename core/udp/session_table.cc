#include "core/udp/session_table.h"

#include <netinet/in.h>

#include <cstring>

#include "core/hash/hash.h"

namespace lb::core::udp {

bool PeerKey::operator==(const PeerKey& o) const {
  return family == o.family && port == o.port && std::memcmp(addr, o.addr, sizeof addr) == 0;
}

PeerKey PeerKey::from(const sockaddr* sa) {
  PeerKey k;
  k.family = sa->sa_family;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    k.port = in->sin_port;
    std::memcpy(k.addr, &in->sin_addr, 4);
  } else if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    k.port = in6->sin6_port;
    std::memcpy(k.addr, &in6->sin6_addr, 16);
  }
  return k;
}

void PeerKey::to_sockaddr(sockaddr_storage* out) const {
  std::memset(out, 0, sizeof(sockaddr_in6));
  if (family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(out);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = port;
    std::memcpy(&in6->sin6_addr, addr, 16);
  } else {
    auto* in = reinterpret_cast<sockaddr_in*>(out);
    in->sin_family = AF_INET;
    in->sin_port = port;
    std::memcpy(&in->sin_addr, addr, 4);
  }
}

size_t SeededHash::operator()(const PeerKey& k) const {
  return static_cast<size_t>(hash::xxh64(&k, sizeof k, seed));
}

}  // namespace lb::core::udp
