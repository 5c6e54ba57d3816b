// Small, fast pseudo-random generators for per-worker selection decisions.
//
// SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014) expands one 64-bit seed into well-mixed state;
// xoshiro256** (Blackman, Vigna, "Scrambled linear pseudorandom number
// generators", 2018) is the generator itself: 32 bytes of state, a handful of
// ALU operations per draw, no allocation, no locks. Neither is
// cryptographic; they only spread load. <random> engines are not used because
// their distributions are implementation-defined and mt19937 carries 2.5 KB of
// state per worker.
//
// Thread rules: a generator is owned by one worker and never shared.
#pragma once

#include <bit>
#include <cstdint>

#include "core/hash/hash.h"

namespace lb::hash {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) noexcept : state_(seed) {}
  uint64_t next() noexcept {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

class Xoshiro256 {
 public:
  // State from SplitMix64(seed): never all zero (the one forbidden state),
  // and nearby seeds (worker 0, 1, 2 ...) give unrelated streams.
  explicit Xoshiro256(uint64_t seed) noexcept {
    SplitMix64 sm(seed);
    for (auto& w : s_) w = sm.next();
  }
  // Exact state, for known-answer tests.
  Xoshiro256(uint64_t s0, uint64_t s1, uint64_t s2, uint64_t s3) noexcept : s_{s0, s1, s2, s3} {}

  uint64_t next() noexcept {
    const uint64_t result = std::rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = std::rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, bound) for bound > 0, by multiply-shift (Lemire, "Fast
  // random integer generation in an interval", 2019) without the rejection
  // step: the bias is below bound / 2^64, irrelevant for spreading load and
  // cheaper than a division.
  uint64_t below(uint64_t bound) noexcept { return reduce(next(), bound); }

 private:
  uint64_t s_[4];
};

}  // namespace lb::hash
