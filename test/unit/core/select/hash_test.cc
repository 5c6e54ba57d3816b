// Known-answer tests for the placement hash (XXH64) and the per-worker PRNGs.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "core/hash/hash.h"
#include "core/hash/prng.h"

using lb::hash::xxh64;

namespace {

// The xxHash reference test buffer (xsum_sanity_check.c): byte i is the top
// byte of PRIME32_1 * PRIME64_1^i (mod 2^64).
std::vector<unsigned char> sanity_buffer(size_t len) {
  std::vector<unsigned char> buf(len);
  uint64_t gen = 2654435761U;
  for (size_t i = 0; i < len; ++i) {
    buf[i] = static_cast<unsigned char>(gen >> 56);
    gen *= 11400714785074694797ULL;
  }
  return buf;
}

struct Vector64 {
  size_t len;
  uint64_t seed;
  uint64_t want;
};

constexpr uint64_t kPrime32 = 2654435761U;

// The published XXH64 vectors over the sanity buffer (xxHash's
// xsum_sanity_check.c). Lengths cover every code path: the short tail
// (1-byte, 4-byte and 8-byte steps), exactly one stripe (32) and many
// stripes plus every tail step (222 = 6 * 32 + 8 + 8 + 8 + 4 + 1 + 1).
constexpr Vector64 kVectors[] = {
    {0, 0, 0xEF46DB3751D8E999ULL},    {0, kPrime32, 0xAC75FDA2929B17EFULL},
    {1, 0, 0xE934A84ADB052768ULL},    {1, kPrime32, 0x5014607643A9B4C3ULL},
    {3, 0, 0xFF7E1959CB50794AULL},    {3, kPrime32, 0xAA8584E83660F7D1ULL},
    {4, 0, 0x9136A0DCA57457EEULL},    {4, kPrime32, 0xCAAB286BD8E9FDB5ULL},
    {8, 0, 0xCDBCF538E71D1348ULL},    {8, kPrime32, 0xFE0C047A5353CDACULL},
    {14, 0, 0x8282DCC4994E35C8ULL},   {14, kPrime32, 0xC3BD6BF63DEB6DF0ULL},
    {16, 0, 0x98C90B57FDFCB55CULL},   {16, kPrime32, 0xC900AD2D536B607EULL},
    {17, 0, 0x0D39A2D051A30C2CULL},   {17, kPrime32, 0x495CD68A647C7A22ULL},
    {24, 0, 0xF75A6DEA42DC5BF4ULL},   {24, kPrime32, 0x8B7C67EB59778E22ULL},
    {32, 0, 0x18B216492BB44B70ULL},   {32, kPrime32, 0xB3F33BDF93ADE409ULL},
    {222, 0, 0xB641AE8CB691C174ULL},  {222, kPrime32, 0x20CB8AB7AE10C14AULL},
    {2367, 0, 0xA82418DDEC0EA581ULL}, {2367, kPrime32, 0xA36A93C18052673AULL},
};

}  // namespace

TEST_CASE("xxh64 matches the reference known answers", "[hash]") {
  const auto buf = sanity_buffer(2367);
  for (const auto& v : kVectors) {
    INFO("len " << v.len << " seed " << v.seed);
    CHECK(xxh64(buf.data(), v.len, v.seed) == v.want);
  }
  CHECK(xxh64(nullptr, 0, 0) == 0xEF46DB3751D8E999ULL);
  CHECK(xxh64(std::string_view("abc")) == 0x44BC2CF5AD770999ULL);
}

TEST_CASE("xxh64 reads unaligned input", "[hash]") {
  const auto buf = sanity_buffer(2367);
  std::vector<unsigned char> shifted(buf.size() + 8);
  for (size_t off = 1; off < 8; ++off) {
    std::copy(buf.begin(), buf.end(), shifted.begin() + static_cast<ptrdiff_t>(off));
    CHECK(xxh64(shifted.data() + off, 222, 0) == 0xB641AE8CB691C174ULL);
  }
}

TEST_CASE("streaming xxh64 equals one-shot for any split", "[hash]") {
  const auto buf = sanity_buffer(2367);
  for (const auto& v : kVectors) {
    for (size_t chunk :
         {size_t{1}, size_t{3}, size_t{7}, size_t{31}, size_t{32}, size_t{33}, size_t{100}, size_t{4096}}) {
      lb::hash::Xxh64 h(v.seed);
      for (size_t at = 0; at < v.len; at += chunk) h.update(buf.data() + at, std::min(chunk, v.len - at));
      INFO("len " << v.len << " seed " << v.seed << " chunk " << chunk);
      CHECK(h.digest() == v.want);
    }
  }
  // digest() leaves the state usable; reset() starts over.
  lb::hash::Xxh64 h;
  h.update(buf.data(), 100);
  (void)h.digest();
  h.update(buf.data() + 100, 122);
  CHECK(h.digest() == 0xB641AE8CB691C174ULL);
  h.reset(kPrime32);
  CHECK(h.digest() == 0xAC75FDA2929B17EFULL);
}

TEST_CASE("update_u64 feeds little-endian bytes", "[hash]") {
  lb::hash::Xxh64 h(7);
  h.update_u64(0x0807060504030201ULL);
  const unsigned char le[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  CHECK(h.digest() == xxh64(le, 8, 7));

  // Mixed with byte updates of odd sizes, across many stripes.
  std::vector<unsigned char> bytes;
  lb::hash::Xxh64 m(9);
  for (uint64_t i = 0; i < 100; ++i) {
    const uint64_t v = i * 0x0101010101010101ULL + 0x1122334455667788ULL;
    m.update_u64(v);
    for (int b = 0; b < 8; ++b) bytes.push_back(static_cast<unsigned char>(v >> (8 * b)));
    if (i % 7 == 3) {
      const unsigned char odd[3] = {static_cast<unsigned char>(i), 0xaa, 0x55};
      m.update(odd, 3);
      bytes.insert(bytes.end(), odd, odd + 3);
    }
  }
  CHECK(m.digest() == xxh64(bytes.data(), bytes.size(), 9));
}

TEST_CASE("reduce maps onto [0, n) by the high bits", "[hash]") {
  using lb::hash::reduce;
  CHECK(reduce(0, 7) == 0);
  CHECK(reduce(~uint64_t{0}, 7) == 6);
  CHECK(reduce(uint64_t{1} << 63, 10) == 5);
  CHECK(reduce(uint64_t{1} << 62, 65537) == 65537 / 4);
}

TEST_CASE("splitmix64 known answers", "[hash][prng]") {
  lb::hash::SplitMix64 a(0);
  CHECK(a.next() == 0xE220A8397B1DCDAFULL);
  CHECK(a.next() == 0x6E789E6AA1B965F4ULL);
  CHECK(a.next() == 0x06C45D188009454FULL);
  lb::hash::SplitMix64 b(1234567);
  CHECK(b.next() == 6457827717110365317ULL);
  CHECK(b.next() == 3203168211198807973ULL);
  CHECK(b.next() == 9817491932198370423ULL);
}

TEST_CASE("xoshiro256** known answers", "[hash][prng]") {
  // State {1, 2, 3, 4}: the first two outputs follow by hand from the
  // definition (rotl(2 * 5, 7) * 9 = 11520; then s1 becomes 0).
  lb::hash::Xoshiro256 x(1, 2, 3, 4);
  CHECK(x.next() == 11520ULL);
  CHECK(x.next() == 0ULL);
  CHECK(x.next() == 1509978240ULL);
  CHECK(x.next() == 1215971899390074240ULL);
}

TEST_CASE("xoshiro256 seeding and below()", "[hash][prng]") {
  lb::hash::Xoshiro256 a(1), b(1), c(2);
  const uint64_t a1 = a.next();
  CHECK(a1 == b.next());
  CHECK(a1 != c.next());

  // below(n) stays in range and is close to uniform.
  lb::hash::Xoshiro256 r(42);
  std::vector<int> counts(10, 0);
  for (int i = 0; i < 100000; ++i) {
    const uint64_t v = r.below(10);
    REQUIRE(v < 10);
    ++counts[v];
  }
  for (int c10 : counts) {
    CHECK(c10 > 9500);
    CHECK(c10 < 10500);
  }
}
