#include "core/acl.h"

#include <algorithm>

namespace lb::core {

namespace {

using u128 = PrefixSet::u128;

constexpr u128 kAllOnes128 = ~static_cast<u128>(0);

uint32_t load_be32(const uint8_t* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | static_cast<uint32_t>(p[3]);
}

u128 load_be128(const uint8_t* p) {
  u128 v = 0;
  for (int i = 0; i < 16; ++i) v = (v << 8) | p[i];
  return v;
}

// Host bits of a prefix; shifting by the full width is undefined, hence the
// explicit ends.
uint32_t host_mask32(int prefix_len) {
  if (prefix_len <= 0) return UINT32_MAX;
  if (prefix_len >= 32) return 0;
  return UINT32_MAX >> prefix_len;
}

u128 host_mask128(int prefix_len) {
  if (prefix_len <= 0) return kAllOnes128;
  if (prefix_len >= 128) return 0;
  return kAllOnes128 >> prefix_len;
}

// ::ffff:0:0/96
bool is_v4_mapped(const uint8_t* b) {
  for (int i = 0; i < 10; ++i)
    if (b[i] != 0) return false;
  return b[10] == 0xff && b[11] == 0xff;
}

}  // namespace

PrefixSet::PrefixSet(const std::vector<conf::Cidr>& cidrs) {
  for (const conf::Cidr& c : cidrs) {
    if (c.family == AF_INET) {
      uint32_t mask = host_mask32(c.prefix_len);
      uint32_t first = load_be32(c.bytes) & ~mask;
      v4_.push_back({first, first | mask});
    } else if (c.family == AF_INET6) {
      u128 mask = host_mask128(c.prefix_len);
      u128 first = load_be128(c.bytes) & ~mask;
      v6_.push_back({first, first | mask});
    }
  }
  merge(v4_);
  merge(v6_);
}

// Sorts by start, then folds every range that overlaps or touches its
// predecessor into it. Touching (last + 1 == next.first) ranges are merged too:
// it does not change membership, and it keeps the vector minimal.
template <typename T>
void PrefixSet::merge(std::vector<Range<T>>& ranges) {
  if (ranges.empty()) return;
  std::sort(ranges.begin(), ranges.end(), [](const Range<T>& a, const Range<T>& b) {
    return a.first < b.first || (a.first == b.first && a.last > b.last);
  });
  size_t out = 0;
  for (size_t i = 1; i < ranges.size(); ++i) {
    Range<T>& cur = ranges[out];
    const Range<T>& next = ranges[i];
    // cur.last == max covers everything after it; testing it first also keeps
    // cur.last + 1 from wrapping.
    if (cur.last == static_cast<T>(~static_cast<T>(0)) || next.first <= cur.last + 1) {
      cur.last = std::max(cur.last, next.last);
    } else {
      ranges[++out] = next;
    }
  }
  ranges.resize(out + 1);
  ranges.shrink_to_fit();
}

// The candidate is the last range starting at or before addr; being disjoint
// and sorted, no other range can contain it.
template <typename T>
bool PrefixSet::lookup(const std::vector<Range<T>>& ranges, T addr) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), addr,
                             [](T a, const Range<T>& r) { return a < r.first; });
  if (it == ranges.begin()) return false;
  --it;
  return addr <= it->last;
}

bool PrefixSet::contains_v4(uint32_t host_order) const { return lookup(v4_, host_order); }

bool PrefixSet::contains_v6(u128 host_order) const { return lookup(v6_, host_order); }

bool PrefixSet::contains(const sockaddr* addr) const {
  if (addr == nullptr) return false;
  if (addr->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(addr);
    return contains_v4(ntohl(sin->sin_addr.s_addr));
  }
  if (addr->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(addr);
    const uint8_t* b = sin6->sin6_addr.s6_addr;
    if (contains_v6(load_be128(b))) return true;
    return is_v4_mapped(b) && contains_v4(load_be32(b + 12));
  }
  return false;
}

Acl::Acl(const std::vector<conf::Cidr>& allow, const std::vector<conf::Cidr>& deny)
    : allow_(allow), deny_(deny) {}

bool Acl::permits(const sockaddr* addr) const {
  if (deny_.contains(addr)) return false;
  return allow_.empty() || allow_.contains(addr);
}

}  // namespace lb::core
