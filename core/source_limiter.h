// Open-connection counts per client IP, for a listener's
// `max_connections_per_source` (shared/spec/interface.md).
//
// Every worker of a listener accepts on its own loop, so the count of one
// client's connections must be shared. A single mutex would serialise every
// accept of the listener; instead the key space is split into kShards shards
// by a hash of the source, each with its own small mutex and hash map, so
// workers contend only when two accepts land on the same shard at the same
// instant. Critical sections are a hash-map find/insert/erase.
//
// That hash (shard and bucket) is keyed with a seed drawn from the OS for each
// limiter: with a fixed, public seed a client that controls many source
// addresses (an IPv6 /48, spoofed PROXY headers) could pick ones that share a
// shard and a bucket chain, making every accept of the listener contend on one
// mutex and walk one long chain.
//
// What counts as one source: an IPv4 address, or an IPv6 /64. One IPv6 host
// usually owns a whole /64 (SLAAC, privacy addresses) and can pick any
// interface identifier in it, so counting per /128 would limit nothing. Keys
// are 16 bytes: an IPv4 address a.b.c.d is stored as ::ffff:a.b.c.d, and an
// IPv4-mapped IPv6 address keeps its 32 address bits, so a client counts the
// same whether it reached an IPv4 socket or a dual-stack IPv6 one; any other
// IPv6 address keeps its first 64 bits and zeroes the rest. Ports are ignored.
//
// An entry exists only while its count is positive (release() erases it at 0),
// so memory follows the number of clients connected now, not the number of
// clients ever seen.
//
// Contract:
//  - Every try_acquire() that returns true is matched by exactly one release()
//    of the same address (typically when the session closes). A session should
//    remember whether it acquired, rather than re-derive it from the current
//    limit, because the limit can change on reload while it is open.
//  - limit 0 means unlimited: try_acquire() then always succeeds but STILL
//    counts, so the acquire/release pairing is the same whatever the limit and
//    a reload from 0 to N starts from exact counts. A caller that does not want
//    the bookkeeping at limit 0 may skip the limiter, but must then skip the
//    release for those sessions too.
//  - Addresses that are neither AF_INET nor AF_INET6 have no IP to limit by:
//    try_acquire() returns true without counting and release() ignores them,
//    so the pairing rule above still holds.
//  - A release() with no matching acquire is ignored (counts never wrap).
//
// Thread and ownership rules: fully thread-safe; one instance per listener,
// shared by its workers through shared_ptr and kept across reloads. Never
// throws on the data path except std::bad_alloc from the map insert.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace lb::core {

class SourceLimiter {
 public:
  static constexpr size_t kShards = 64;

  SourceLimiter();
  SourceLimiter(const SourceLimiter&) = delete;
  SourceLimiter& operator=(const SourceLimiter&) = delete;

  // True, and the connection is counted, when `addr`'s IP has fewer than
  // `limit` open connections (or limit == 0); false, with nothing counted,
  // otherwise.
  bool try_acquire(const sockaddr* addr, uint64_t limit);
  // Once per successful try_acquire() of the same IP.
  void release(const sockaddr* addr);

  // Open connections of `addr`'s IP (for tests and metrics).
  uint64_t count(const sockaddr* addr) const;
  // IPs with at least one open connection. Locks each shard in turn, so it is
  // a consistent total only when nothing runs concurrently.
  size_t tracked_sources() const;

  // The source key of an address (see above), 16 bytes; false for a family
  // with no IP. Public for tests.
  static bool source_key(const sockaddr* addr, uint8_t out[16]);
  // The shard an address's source lands in, and this limiter's hash seed
  // (for tests of the seeding).
  size_t shard_index(const sockaddr* addr) const;
  uint64_t seed() const { return seed_; }

 private:
  struct Key {
    uint8_t b[16];
    bool operator==(const Key& o) const { return std::memcmp(b, o.b, 16) == 0; }
  };
  struct KeyHash {
    // A constructor, not a member initializer: the map is declared inside
    // this class, where a nested initializer would not count yet.
    KeyHash() : seed(0) {}
    explicit KeyHash(uint64_t s) : seed(s) {}
    uint64_t seed;
    size_t operator()(const Key& k) const;
  };
  // Own cache line each, so two workers locking neighbouring shards do not
  // bounce one line between cores.
  struct alignas(64) Shard {
    mutable std::mutex mu;
    std::unordered_map<Key, uint64_t, KeyHash> counts;
  };

  // False for an address family with no IP.
  static bool make_key(const sockaddr* addr, Key* key);
  Shard& shard_for(const Key& key);
  const Shard& shard_for(const Key& key) const;

  const uint64_t seed_;
  std::array<Shard, kShards> shards_;
};

}  // namespace lb::core
