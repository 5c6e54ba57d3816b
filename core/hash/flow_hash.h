// The flow hash: which bytes of a client address a hash selector sees.
//
// The key is a fixed byte string, hashed with XXH64 and seed 0 (hash.h), so
// every lb process computes the same value for the same client:
//
//   source_ip       IPv4: the 4 address bytes, network order      ( 4 bytes)
//                   IPv6: the 16 address bytes, network order     (16 bytes)
//   source_ip_port  the same address bytes, then the port as
//                   2 bytes big-endian (network order)            ( 6 / 18 bytes)
//
// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a dual-stack socket
// reports for an IPv4 client) is keyed as the IPv4 address a.b.c.d, so a
// client hashes the same whether it reached a v4 or a dual-stack listener.
// Other address families (and a null pointer) give the empty key.
// The IPv6 flow label and scope id are never part of the key.
//
// Thread rules: pure functions.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

namespace lb::hash {

inline constexpr size_t kMaxFlowKeyBytes = 18;

// Writes the key bytes described above into `out`; returns how many.
size_t flow_key(const sockaddr* client, bool with_port, unsigned char out[kMaxFlowKeyBytes]) noexcept;

// xxh64(flow_key(client, with_port), seed 0).
uint64_t flow_hash(const sockaddr* client, bool with_port) noexcept;

}  // namespace lb::hash
