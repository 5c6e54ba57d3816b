// Fixed 64-bit hashing for placement decisions.
//
// Consistent-hash placement must agree between processes, builds and
// machines (shared/spec/interface.md: "two lb processes with the same pool
// send the same client to the same backend"), so every hash that decides a
// placement is this one: XXH64 from libxxhash (Debian libxxhash-dev), whose
// output is fixed by its specification (doc/xxhash_spec.md) and identical on
// little- and big-endian hosts. Known answers in
// test/unit/core/select/hash_test.cc pin it: a fleet mixing builds must agree.
// std::hash is deliberately never used: its values are unspecified and differ
// between standard libraries.
//
// Thread rules: pure functions; Xxh64 objects are plain values owned by their
// user.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t as a plain value member
#include <xxhash.h>

namespace lb::hash {

// XXH64 of `len` bytes at `data` with `seed`. `data` may be null when len == 0.
inline uint64_t xxh64(const void* data, size_t len, uint64_t seed = 0) noexcept {
  return XXH64(data, len, seed);
}

inline uint64_t xxh64(std::string_view bytes, uint64_t seed = 0) noexcept {
  return xxh64(bytes.data(), bytes.size(), seed);
}

// Maps a 64-bit hash uniformly onto [0, n): the high 64 bits of hash * n
// (Lemire's "fastrange"). Uses the hash's high bits, costs a multiply
// instead of a division, and is as fixed as `hash % n`.
inline uint64_t reduce(uint64_t hash, uint64_t n) noexcept {
  __extension__ using u128 = unsigned __int128;
  return static_cast<uint64_t>((static_cast<u128>(hash) * n) >> 64);
}

// Streaming XXH64: update() any number of times, then digest(). The result
// equals xxh64() of the concatenated input, however it is split. Used to
// digest large lookup tables without materialising them as one buffer.
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0) noexcept { reset(seed); }
  void reset(uint64_t seed = 0) noexcept { XXH64_reset(&state_, seed); }
  void update(const void* data, size_t len) noexcept { XXH64_update(&state_, data, len); }
  void update(std::string_view bytes) noexcept { update(bytes.data(), bytes.size()); }
  // Feeds `v` as 8 little-endian bytes, so digests do not depend on host order.
  void update_u64(uint64_t v) noexcept;
  // Does not modify the state: more input may follow.
  uint64_t digest() const noexcept { return XXH64_digest(&state_); }

 private:
  XXH64_state_t state_;
};

}  // namespace lb::hash
