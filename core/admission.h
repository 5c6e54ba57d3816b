// Admission: the edge rules a new TCP connection or a new UDP client passes,
// in one place and in the order docs/configuration.md documents:
//
//   1. [global] max_connections, then the listener's max_connections  (limit)
//   2. TCP with accept_proxy_protocol: the PROXY header, only from a peer in
//      proxy_protocol_trusted; its source is the client from then on
//                                                               (proxy_protocol)
//   3. allow / deny on that client address                        (acl)
//   4. max_connections_per_source on that client address          (limit)
//
// A TCP connection takes step 1 at accept (before any work), step 2 while it
// reads the header, steps 3 and 4 once the client address is final
// (TcpSession). A UDP client has no header and takes 1, 3 and 4 at once
// (admit()). Either way an Admission remembers what it counted and gives it
// all back in release(), once, when the connection or session ends; a
// refusal gives back at once whatever the earlier steps took.
//
// Thread: an Admission belongs to one connection on one worker; the counters
// it touches are the shared atomics of SharedState and ListenerStats.
#pragma once

#include <sys/socket.h>

#include <cstdint>

#include "core/stats.h"
#include "core/worker.h"

namespace lb::core {

// Why a new connection was refused: the `reason` label it is counted under.
enum class Refusal : uint8_t { None, Limit, ProxyProtocol, Acl };

// Counts a refusal in the listener's per-worker slot (nothing for None).
void count_refusal(ListenerStats::Slot& slot, Refusal r);

class Admission {
 public:
  // Step 1: takes a place under the global and the listener limit.
  Refusal open(SharedState& shared, const ListenerRuntime& listener);
  // Step 2: whether `peer` (the real peer, never an address it claims) may
  // send a PROXY header.
  static bool proxy_peer_trusted(const ListenerRuntime& listener, const sockaddr* peer);
  // Steps 3 and 4 on the final client address, after open().
  Refusal admit_client(SharedState& shared, const ListenerRuntime& listener, const sockaddr* client);
  // Steps 1, 3 and 4: a new client that sends no header (UDP).
  Refusal admit(SharedState& shared, const ListenerRuntime& listener, const sockaddr* client);
  // A connection admitted elsewhere comes back (a frozen session resumed):
  // counted as by steps 1 and 4, never refused. `admitted` false: it had
  // taken step 1 only (its PROXY header is still to come), so only step 1.
  void readmit(SharedState& shared, const ListenerRuntime& listener, const sockaddr* client,
               bool admitted = true);
  // Gives back everything counted; `client` as given to the steps. Idempotent.
  void release(SharedState& shared, ListenerStats& stats, const sockaddr* client);

  bool holds_place() const { return place_; }
  bool holds_source() const { return source_; }

 private:
  bool place_ = false;   // counted in the global and the listener's `open`
  bool source_ = false;  // counted in the listener's per-source table
};

}  // namespace lb::core
