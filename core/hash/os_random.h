// Unpredictable 64-bit values from the kernel's CSPRNG (getrandom(2)).
//
// For what an outsider must not be able to guess: the seeds of lb's internal
// hash tables (the UDP session table, the per-source connection counter), so
// that clients cannot choose addresses that collide in them, and DNS probe
// IDs. Never for placement: placement hashes (hash.h) are fixed on purpose so
// that every instance agrees.
//
// Thread-safe: no shared state beyond an atomic counter in the fallback.
// Never std::random_device or a <random> engine.
#pragma once

#include <cstdint>

namespace lb::hash {

// getrandom(2); if the kernel cannot serve it (no getrandom, seccomp, pool not
// yet initialised at early boot), a SplitMix64 mix of the monotonic clock and
// a counter: still distinct per call, though not secret.
uint64_t os_random_u64() noexcept;

}  // namespace lb::hash
