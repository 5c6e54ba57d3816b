#include "core/source_limiter.h"

#include "core/hash/hash.h"

namespace lb::core {

namespace {

// Fixed seed so shard placement does not depend on the build; the value is
// arbitrary, it only keeps this hash distinct from the placement hashes.
constexpr uint64_t kSeed = 0x5eed50c11b17ULL;

}  // namespace

size_t SourceLimiter::KeyHash::operator()(const Key& k) const {
  return static_cast<size_t>(hash::xxh64(k.b, sizeof k.b, kSeed));
}

bool SourceLimiter::make_key(const sockaddr* addr, Key* key) {
  if (addr == nullptr) return false;
  if (addr->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(addr);
    std::memset(key->b, 0, 10);
    key->b[10] = 0xff;
    key->b[11] = 0xff;
    std::memcpy(key->b + 12, &sin->sin_addr.s_addr, 4);  // already network order
    return true;
  }
  if (addr->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(addr);
    std::memcpy(key->b, sin6->sin6_addr.s6_addr, 16);
    return true;
  }
  return false;
}

// The map's buckets are chosen from the hash modulo a prime (libstdc++), i.e.
// mostly its low bits; the shard takes the high bits so the two stay
// independent and a shard's map is not left with clustered buckets.
SourceLimiter::Shard& SourceLimiter::shard_for(const Key& key) {
  return shards_[hash::reduce(KeyHash{}(key), kShards)];
}

const SourceLimiter::Shard& SourceLimiter::shard_for(const Key& key) const {
  return shards_[hash::reduce(KeyHash{}(key), kShards)];
}

bool SourceLimiter::try_acquire(const sockaddr* addr, uint64_t limit) {
  Key key;
  if (!make_key(addr, &key)) return true;
  Shard& s = shard_for(key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.counts.find(key);
  if (it == s.counts.end()) {
    // First connection of this IP: accepted by any limit (0 or >= 1). A
    // refused client never gets an entry, so refusals cost no memory.
    s.counts.emplace(key, 1);
    return true;
  }
  if (limit != 0 && it->second >= limit) return false;
  ++it->second;
  return true;
}

void SourceLimiter::release(const sockaddr* addr) {
  Key key;
  if (!make_key(addr, &key)) return;
  Shard& s = shard_for(key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.counts.find(key);
  if (it == s.counts.end()) return;  // unmatched release: ignore rather than wrap
  if (--it->second == 0) s.counts.erase(it);
}

uint64_t SourceLimiter::count(const sockaddr* addr) const {
  Key key;
  if (!make_key(addr, &key)) return 0;
  const Shard& s = shard_for(key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.counts.find(key);
  return it == s.counts.end() ? 0 : it->second;
}

size_t SourceLimiter::tracked_sources() const {
  size_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard<std::mutex> lock(s.mu);
    n += s.counts.size();
  }
  return n;
}

}  // namespace lb::core
