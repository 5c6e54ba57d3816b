// The upgrade hand-over: what a running lb passes to the program that takes
// over from it (docs/upgrade.md describes the wire format byte by byte).
//
// HandoverState is plain data: no libuv handle, no pointer into a worker.
// Descriptors travel beside the bytes (SCM_RIGHTS, see channel.h); a record
// names one by its index into the descriptor array, never by number, because
// the receiver gets different numbers.
//
// Versioning: the encoding starts with a magic and a version. A build reads
// every version from kHandoverMinVersion to kHandoverVersion and writes
// kHandoverVersion; anything else is refused with a reason, never guessed
// at. A new section or field means a new version, and the reader keeps
// decoding the older ones (a new build must read what the previous release
// writes).
//
// Thread rules: none (values only). decode() never trusts its input: every
// length is bounds-checked, every descriptor index checked against the
// number of descriptors received.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/frozen_session.h"

namespace lb::core::handover {

inline constexpr char kHandoverMagic[8] = {'L', 'B', 'H', 'A', 'N', 'D', 'O', 'V'};
inline constexpr uint32_t kHandoverVersion = 3;     // what this build writes
inline constexpr uint32_t kHandoverMinVersion = 1;  // the oldest it reads

// One bind of a listener: its sockets, one per worker (SO_REUSEPORT group
// members), or a single one shared by every worker.
struct ListenerSocket {
  std::string listener;       // the listener's name
  std::string key;            // the bind's identity (Server::bind_key)
  uint8_t kind = 0;           // 1 = TCP (SOCK_STREAM), 2 = UDP (SOCK_DGRAM)
  std::vector<uint32_t> fds;  // indexes into the descriptor array
  bool operator==(const ListenerSocket&) const = default;
};

// A listener's counters (lb_listener_*), summed over the old workers.
struct ListenerCounters {
  std::string listener;
  uint64_t connections = 0;
  uint64_t rejected_acl = 0;
  uint64_t rejected_limit = 0;
  uint64_t rejected_no_backend = 0;
  uint64_t rejected_proxy = 0;
  uint64_t rejected_tls = 0;
  uint64_t datagrams_in = 0;
  uint64_t datagrams_out = 0;
  // lb_tls_handshakes_total (version 2 on; 0 when read from version 1).
  uint64_t tls_ok = 0;
  uint64_t tls_failed = 0;
  uint64_t tls_timeout = 0;
  bool operator==(const ListenerCounters&) const = default;
};

// A backend's state and counters, keyed by (pool, id).
struct BackendState {
  std::string pool;
  std::string id;
  bool up = false;     // health verdict
  bool drain = false;  // admin state
  // Weight set through the admin API plus one (a weight of 0 is valid);
  // 0 when the configured weight applies.
  uint32_t admin_weight = 0;
  // Slow start: milliseconds since the backend came up, when it is still
  // ramping; 0 when it is not (done, or no slow start).
  uint64_t slow_start_elapsed_ms = 0;
  uint64_t total = 0;
  uint64_t connect_failures = 0;
  uint64_t bytes_to_backend = 0;
  uint64_t bytes_to_client = 0;
  uint64_t checks_pass = 0;
  uint64_t checks_fail = 0;
  bool operator==(const BackendState&) const = default;
};

// A live UDP session: who, where it goes, and its upstream socket if it
// travels (lb's own writers send none: the new program re-creates the
// mapping, see core/udp/pins.h).
struct UdpSession {
  std::string listener;
  std::vector<uint8_t> client;  // the client's sockaddr, as bytes
  std::string pool;
  std::string backend;                  // backend id
  std::optional<uint32_t> upstream_fd;  // index into the descriptor array
  bool operator==(const UdpSession&) const = default;
};

struct HandoverState {
  uint32_t version = kHandoverVersion;  // the version it was decoded from
  uint64_t generation = 0;
  uint64_t reloads_ok = 0;
  uint64_t reloads_error = 0;
  uint64_t upgrades_ok = 0;
  uint64_t upgrades_refused = 0;
  uint64_t access_log_dropped = 0;
  std::optional<uint32_t> access_log_fd;  // index into the descriptor array
  std::optional<uint32_t> admin_fd;       // the admin API's listening socket
  std::vector<ListenerSocket> listeners;
  std::vector<ListenerCounters> listener_counters;
  std::vector<BackendState> backends;
  std::vector<UdpSession> udp_sessions;
  // Established TCP connections (version 2 on), and from version 3 on
  // those still reading a PROXY header or ClientHello or connecting
  // (FrozenSession::stage; backend_fd -1 for those). Here client_fd and
  // backend_fd are indexes into the descriptor array, not descriptors.
  std::vector<FrozenSession> tcp_sessions;
  bool operator==(const HandoverState&) const = default;
};

// The bytes of `s` in format kHandoverVersion. `fd_count` is the size of
// the descriptor array sent beside them (recorded, so the receiver can
// check it got them all).
// `version` (kHandoverMinVersion..kHandoverVersion) writes an older
// format, without what that version does not carry (tests of the reader).
std::vector<uint8_t> encode(const HandoverState& s, uint32_t fd_count, uint32_t version = kHandoverVersion);

// Decodes bytes written by any version this build reads. `fd_count` is the
// number of descriptors received. nullopt with *error set on a wrong magic,
// an unknown version, a length or checksum mismatch, a truncated or
// over-long record, a descriptor index out of range or a count mismatch.
std::optional<HandoverState> decode(const std::vector<uint8_t>& bytes, uint32_t fd_count, std::string* error);

// The line `lb --handover-version` prints: "handover reads 1-2 writes 2".
std::string version_line();
// Parses version_line()'s output; true when a program printing it reads
// `version`. *error says why not.
bool reads_version(const std::string& line, uint32_t version, std::string* error);

}  // namespace lb::core::handover
