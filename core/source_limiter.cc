#include "core/source_limiter.h"

#include "core/hash/hash.h"
#include "core/hash/os_random.h"

namespace lb::core {

SourceLimiter::SourceLimiter() : seed_(hash::os_random_u64()) {
  for (Shard& s : shards_) s.counts = decltype(s.counts)(16, KeyHash{seed_});
}

size_t SourceLimiter::KeyHash::operator()(const Key& k) const {
  return static_cast<size_t>(hash::xxh64(k.b, sizeof k.b, seed));
}

bool SourceLimiter::source_key(const sockaddr* addr, uint8_t out[16]) {
  if (addr == nullptr) return false;
  if (addr->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(addr);
    std::memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    std::memcpy(out + 12, &sin->sin_addr.s_addr, 4);  // already network order
    return true;
  }
  if (addr->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(addr);
    std::memcpy(out, sin6->sin6_addr.s6_addr, 16);
    // An IPv4 client seen through a dual-stack socket is that IPv4 address;
    // every other IPv6 client is its /64.
    if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) std::memset(out + 8, 0, 8);
    return true;
  }
  return false;
}

bool SourceLimiter::make_key(const sockaddr* addr, Key* key) { return source_key(addr, key->b); }

// The map's buckets are chosen from the hash modulo a prime (libstdc++), i.e.
// mostly its low bits; the shard takes the high bits so the two stay
// independent and a shard's map is not left with clustered buckets.
SourceLimiter::Shard& SourceLimiter::shard_for(const Key& key) {
  return shards_[hash::reduce(KeyHash{seed_}(key), kShards)];
}

const SourceLimiter::Shard& SourceLimiter::shard_for(const Key& key) const {
  return shards_[hash::reduce(KeyHash{seed_}(key), kShards)];
}

size_t SourceLimiter::shard_index(const sockaddr* addr) const {
  Key key;
  if (!make_key(addr, &key)) return 0;
  return hash::reduce(KeyHash{seed_}(key), kShards);
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
