#include "core/hash/flow_hash.h"

#include <netinet/in.h>

#include <cstring>

#include "core/hash/hash.h"

namespace lb::hash {

size_t flow_key(const sockaddr* client, bool with_port, unsigned char out[kMaxFlowKeyBytes]) noexcept {
  if (client == nullptr) return 0;
  const unsigned char* addr;
  size_t addr_len;
  in_port_t port;  // network order, exactly as on the wire
  if (client->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(client);
    addr = reinterpret_cast<const unsigned char*>(&sin->sin_addr);
    addr_len = 4;
    port = sin->sin_port;
  } else if (client->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(client);
    addr = reinterpret_cast<const unsigned char*>(&sin6->sin6_addr);
    addr_len = 16;
    port = sin6->sin6_port;
    // ::ffff:a.b.c.d: 10 zero bytes, 0xff 0xff, then the IPv4 address.
    static constexpr unsigned char kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(addr, kV4MappedPrefix, sizeof kV4MappedPrefix) == 0) {
      addr += 12;
      addr_len = 4;
    }
  } else {
    return 0;
  }
  std::memcpy(out, addr, addr_len);
  if (!with_port) return addr_len;
  std::memcpy(out + addr_len, &port, 2);
  return addr_len + 2;
}

uint64_t flow_hash(const sockaddr* client, bool with_port) noexcept {
  unsigned char key[kMaxFlowKeyBytes];
  return xxh64(key, flow_key(client, with_port, key), 0);
}

}  // namespace lb::hash
