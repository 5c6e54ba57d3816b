// XXH64, from the xxHash specification (doc/xxhash_spec.md). Known-answer
// tests against the reference vectors: test/unit/core/select/hash_test.cc.
#include "core/hash/hash.h"

#include <bit>
#include <cstring>

namespace lb::hash {
namespace {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kPrime4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kPrime5 = 0x27D4EB2F165667C5ULL;

// The specification reads lanes little-endian; memcpy keeps unaligned reads
// defined and compiles to a single load.
inline uint64_t read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}

inline uint32_t read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}

inline uint64_t lane_round(uint64_t acc, uint64_t lane) {
  acc += lane * kPrime2;
  acc = std::rotl(acc, 31);
  return acc * kPrime1;
}

inline uint64_t merge(uint64_t acc, uint64_t lane_acc) {
  acc ^= lane_round(0, lane_acc);
  return acc * kPrime1 + kPrime4;
}

inline void init_lanes(uint64_t acc[4], uint64_t seed) {
  acc[0] = seed + kPrime1 + kPrime2;
  acc[1] = seed + kPrime2;
  acc[2] = seed;
  acc[3] = seed - kPrime1;
}

inline void stripe(uint64_t acc[4], const unsigned char* p) {
  acc[0] = lane_round(acc[0], read64(p));
  acc[1] = lane_round(acc[1], read64(p + 8));
  acc[2] = lane_round(acc[2], read64(p + 16));
  acc[3] = lane_round(acc[3], read64(p + 24));
}

inline uint64_t converge(const uint64_t acc[4]) {
  uint64_t h = std::rotl(acc[0], 1) + std::rotl(acc[1], 7) + std::rotl(acc[2], 12) +
               std::rotl(acc[3], 18);
  for (int i = 0; i < 4; ++i) h = merge(h, acc[i]);
  return h;
}

// Consumes the last 0..31 bytes, then avalanches.
inline uint64_t finish(uint64_t h, const unsigned char* p, size_t len) {
  while (len >= 8) {
    h ^= lane_round(0, read64(p));
    h = std::rotl(h, 27) * kPrime1 + kPrime4;
    p += 8;
    len -= 8;
  }
  if (len >= 4) {
    h ^= static_cast<uint64_t>(read32(p)) * kPrime1;
    h = std::rotl(h, 23) * kPrime2 + kPrime3;
    p += 4;
    len -= 4;
  }
  while (len > 0) {
    h ^= static_cast<uint64_t>(*p) * kPrime5;
    h = std::rotl(h, 11) * kPrime1;
    ++p;
    --len;
  }
  h ^= h >> 33;
  h *= kPrime2;
  h ^= h >> 29;
  h *= kPrime3;
  h ^= h >> 32;
  return h;
}

}  // namespace

uint64_t xxh64(const void* data, size_t len, uint64_t seed) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  const size_t total = len;
  uint64_t h;
  if (len >= 32) {
    uint64_t acc[4];
    init_lanes(acc, seed);
    do {
      stripe(acc, p);
      p += 32;
      len -= 32;
    } while (len >= 32);
    h = converge(acc);
  } else {
    h = seed + kPrime5;
  }
  h += static_cast<uint64_t>(total);
  return finish(h, p, len);
}

void Xxh64::reset(uint64_t seed) noexcept {
  init_lanes(acc_, seed);
  seed_ = seed;
  total_len_ = 0;
  buf_len_ = 0;
}

void Xxh64::update(const void* data, size_t len) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  total_len_ += len;
  if (buf_len_ > 0) {
    size_t take = sizeof buf_ - buf_len_;
    if (take > len) take = len;
    std::memcpy(buf_ + buf_len_, p, take);
    buf_len_ += take;
    p += take;
    len -= take;
    if (buf_len_ < sizeof buf_) return;
    stripe(acc_, buf_);
    buf_len_ = 0;
  }
  while (len >= 32) {
    stripe(acc_, p);
    p += 32;
    len -= 32;
  }
  if (len > 0) {
    std::memcpy(buf_, p, len);
    buf_len_ = len;
  }
}

void Xxh64::update_u64(uint64_t v) noexcept {
  unsigned char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
  // Fast path for digests fed one value at a time (lookup tables): the
  // value fits the stripe buffer whole.
  if (buf_len_ + sizeof b <= sizeof buf_) {
    std::memcpy(buf_ + buf_len_, b, sizeof b);
    buf_len_ += sizeof b;
    total_len_ += sizeof b;
    if (buf_len_ == sizeof buf_) {
      stripe(acc_, buf_);
      buf_len_ = 0;
    }
    return;
  }
  update(b, sizeof b);
}

uint64_t Xxh64::digest() const noexcept {
  uint64_t h = total_len_ >= 32 ? converge(acc_) : seed_ + kPrime5;
  h += total_len_;
  return finish(h, buf_, buf_len_);
}

}  // namespace lb::hash
