// Source-address access control for a listener: the `allow` and `deny` CIDR
// lists of shared/spec/interface.md.
//
// A PrefixSet turns a list of CIDRs into, per address family, a sorted vector
// of disjoint, non-adjacent [first, last] address ranges: overlapping and
// touching prefixes are merged at build time, so a lookup is one binary search
// (O(log n)) with no per-prefix work, however large or redundant the list.
// IPv4 ranges are uint32_t, IPv6 ranges unsigned __int128, both in host order
// so that numeric order is address order.
//
// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, what a dual-stack socket reports
// for an IPv4 client) are looked up in the IPv6 ranges and, in addition, as
// a.b.c.d in the IPv4 ranges: `deny = ["192.0.2.0/24"]` must refuse that
// client whichever socket accepted it. The converse is deliberately not done:
// a plain AF_INET address is matched against IPv4 prefixes only, so
// `deny = ["::/0"]` means "all IPv6 clients", not "everyone".
//
// Thread and ownership rules: built once per configuration generation (on the
// control thread), immutable afterwards, then shared read-only by every worker
// (typically through a shared_ptr<const Acl>). Lookups take no lock and never
// allocate or throw.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "conf/config.h"

namespace lb::core {

class PrefixSet {
 public:
  __extension__ using u128 = unsigned __int128;

  PrefixSet() = default;
  // Entries of an unknown family are ignored. A prefix length beyond the
  // family's width is clamped to it; host bits are masked off even if the
  // parser already zeroed them.
  explicit PrefixSet(const std::vector<conf::Cidr>& cidrs);

  // AF_INET or AF_INET6 (see the v4-mapped rule above); any other family, or
  // a null address, is not contained.
  bool contains(const sockaddr* addr) const;
  bool contains_v4(uint32_t host_order) const;
  bool contains_v6(u128 host_order) const;

  bool empty() const { return v4_.empty() && v6_.empty(); }
  // Ranges after merging, both families (for tests and diagnostics).
  size_t range_count() const { return v4_.size() + v6_.size(); }

 private:
  template <typename T>
  struct Range {
    T first;
    T last;  // inclusive, so a /0 needs no value past the end of the space
  };

  template <typename T>
  static void merge(std::vector<Range<T>>& ranges);
  template <typename T>
  static bool lookup(const std::vector<Range<T>>& ranges, T addr);

  std::vector<Range<uint32_t>> v4_;
  std::vector<Range<u128>> v6_;
};

// The allow/deny pair of one listener. A source is permitted when
// (allow is empty or allow contains it) and deny does not contain it: deny
// wins over allow. An address of unknown family is therefore refused when
// `allow` is non-empty and permitted otherwise.
// Thread rules: as PrefixSet (immutable, shared read-only).
class Acl {
 public:
  Acl() = default;
  Acl(const std::vector<conf::Cidr>& allow, const std::vector<conf::Cidr>& deny);

  bool permits(const sockaddr* addr) const;
  // False when both lists are empty: callers skip the lookup entirely.
  bool enabled() const { return !allow_.empty() || !deny_.empty(); }

  const PrefixSet& allow() const { return allow_; }
  const PrefixSet& deny() const { return deny_; }

 private:
  PrefixSet allow_;
  PrefixSet deny_;
};

}  // namespace lb::core
