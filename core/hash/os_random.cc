#include "core/hash/os_random.h"

#include <sys/random.h>
#include <time.h>

#include <atomic>
#include <cerrno>

namespace lb::hash {

namespace {

// SplitMix64 step (Steele, Lea, Flood 2014), for the fallback.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t os_random_u64() noexcept {
  uint64_t v = 0;
  for (;;) {
    ssize_t n = getrandom(&v, sizeof v, GRND_NONBLOCK);
    if (n == static_cast<ssize_t>(sizeof v)) return v;
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  static std::atomic<uint64_t> counter{0};
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t seed = static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
  return splitmix64(seed ^ splitmix64(counter.fetch_add(1, std::memory_order_relaxed)));
}

}  // namespace lb::hash
