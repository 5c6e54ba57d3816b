// Randomness for the health thread: DNS query IDs (unpredictable, so a
// spoofed reply has to guess them) and probe jitter.
//
// Thread-safe: every call reads the kernel's CSPRNG (getrandom(2)); there is
// no shared state. Never std::random_device or a <random> engine.
#pragma once

#include <cstdint>

namespace lb::health {

uint64_t random_u64();

// Uniform-enough value in [0, bound]; bound 0 gives 0. The modulo bias is
// irrelevant for jitter and IDs (bound << 2^64).
inline uint64_t random_below_or_equal(uint64_t bound) { return bound == 0 ? 0 : random_u64() % (bound + 1); }

}  // namespace lb::health
