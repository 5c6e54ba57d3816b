#pragma once

#include <cstdint>

// lb's open-file limit, and how it keeps descriptors for accept().
//
// A proxied TCP connection takes two descriptors (more while it splices),
// a UDP session one for each backend route it needs, and lb opens others
// for health probes, the admin API and reloads. The kernel hands out the
// lowest free descriptor, so a new descriptor's number says how many below
// it are taken. Two bands at the top of the limit:
//
//   - kAcceptReserve: a client accepted into the last 64 is refused at once
//     (counted as a "limit" refusal, one rate-limited warning), leaving the
//     rest to what connections and everything else need after accept().
//   - kAcceptFloor: the last 16 are for accept() alone. Bulk consumers (UDP
//     routes, backend sockets, splice pipes) that land there give theirs
//     back and fail as "out of descriptors". Otherwise accept() itself could
//     fail with EMFILE, and libuv then accepts and closes the waiting clients
//     on its own ("emfile trick"): no callback, nothing counted or logged.
//
// Thread-safe: the limit is set once at start (and again when lb re-reads
// it) and read by every worker.
namespace lb::core::descriptors {

inline constexpr uint64_t kAcceptReserve = 64;
inline constexpr uint64_t kAcceptFloor = 16;

// RLIMIT_NOFILE (soft) as lb settled it; 0 = unlimited or unknown.
void set_limit(uint64_t limit);
uint64_t limit();

// Whether descriptor `fd` lies in the accept reserve / the accept floor of
// the current limit (never when the limit is unknown).
bool in_accept_reserve(int fd);
bool in_accept_floor(int fd);

}  // namespace lb::core::descriptors
