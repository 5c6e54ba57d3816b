// FlatMap (the UDP session table) against std::unordered_map as a reference,
// with a well-mixed hash and with a deliberately terrible one (long probe
// runs that wrap around the end of the array: the hard case for
// backward-shift deletion).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "core/flat_map.h"

namespace {

struct Mixed {
  size_t operator()(uint64_t k) const {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return static_cast<size_t>(k);
  }
};
// Everything lands in a few home slots near the end of the table.
struct Clustered {
  size_t operator()(uint64_t k) const { return static_cast<size_t>(~0ULL - (k % 3)); }
};

template <typename Hash>
void compare_with_reference(uint64_t key_space, int ops, uint32_t seed) {
  lb::core::FlatMap<uint64_t, int, Hash> m(4);
  std::unordered_map<uint64_t, int> ref;
  std::mt19937 rng(seed);
  for (int i = 0; i < ops; ++i) {
    uint64_t k = rng() % key_space;
    switch (rng() % 3) {
      case 0:
        m.insert(k, i);
        ref[k] = i;
        break;
      case 1:
        REQUIRE(m.erase(k) == (ref.erase(k) == 1));
        break;
      default: {
        int* v = m.find(k);
        auto it = ref.find(k);
        REQUIRE((v != nullptr) == (it != ref.end()));
        if (v) REQUIRE(*v == it->second);
      }
    }
    REQUIRE(m.size() == ref.size());
  }
  // Every key agrees at the end, present or absent.
  for (uint64_t k = 0; k < key_space; ++k) {
    int* v = m.find(k);
    auto it = ref.find(k);
    REQUIRE((v != nullptr) == (it != ref.end()));
    if (v) REQUIRE(*v == it->second);
  }
  size_t visited = 0;
  m.for_each([&](uint64_t k, int v) {
    ++visited;
    REQUIRE(ref.at(k) == v);
  });
  CHECK(visited == ref.size());
}

}  // namespace

TEST_CASE("FlatMap agrees with unordered_map under random inserts, erases and lookups", "[flat_map]") {
  compare_with_reference<Mixed>(2000, 200000, 1);
  compare_with_reference<Mixed>(50, 50000, 2);
}

TEST_CASE("FlatMap stays correct when every key collides and probe runs wrap", "[flat_map]") {
  compare_with_reference<Clustered>(300, 60000, 3);
}

TEST_CASE("FlatMap grows to stay at most half full and keeps every entry", "[flat_map]") {
  lb::core::FlatMap<uint64_t, int, Mixed> m;
  for (int i = 0; i < 10000; ++i) m.insert(static_cast<uint64_t>(i) * 7919, i);
  CHECK(m.size() == 10000);
  CHECK(m.capacity() >= 20000);
  for (int i = 0; i < 10000; ++i) {
    int* v = m.find(static_cast<uint64_t>(i) * 7919);
    REQUIRE(v);
    CHECK(*v == i);
  }
  for (int i = 0; i < 10000; ++i) REQUIRE(m.erase(static_cast<uint64_t>(i) * 7919));
  CHECK(m.empty());
  CHECK(m.find(0) == nullptr);
}
