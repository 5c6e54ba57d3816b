// The UDP session table: client address -> session, and the key type the
// upstream demux shares.
//
// Keys are what arrives on the wire, so a client picks them: the hash is
// seeded per table from the OS (getrandom), so no one can precompute
// addresses that collide in every lb process and turn lookups into long
// probe runs. The table is a FlatMap (one hash and usually one cache line a
// lookup; it halves as sessions leave).
// Thread: one owner (a worker's UDP listener or upstream set).
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

#include "core/flat_map.h"
#include "core/hash/os_random.h"

namespace lb::core::udp {

// An address as a hashable key (family, port, address bytes): 20 bytes.
struct PeerKey {
  uint16_t family = 0;
  uint16_t port = 0;  // network order
  uint8_t addr[16] = {};
  bool operator==(const PeerKey& o) const;
  static PeerKey from(const sockaddr* sa);
  static PeerKey from(const sockaddr_storage& ss) { return from(reinterpret_cast<const sockaddr*>(&ss)); }
  // Back to a socket address (the size is addr_len of the result).
  void to_sockaddr(sockaddr_storage* out) const;
};

struct SeededHash {
  uint64_t seed = 0;
  size_t operator()(const PeerKey& k) const;
};

template <typename Value>
class SessionTable : public FlatMap<PeerKey, Value, SeededHash> {
 public:
  explicit SessionTable(size_t initial = 16, uint64_t seed = hash::os_random_u64())
      : FlatMap<PeerKey, Value, SeededHash>(initial, SeededHash{seed}), seed_(seed) {}
  uint64_t seed() const { return seed_; }

 private:
  uint64_t seed_;
};

}  // namespace lb::core::udp
