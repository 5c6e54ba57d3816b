// UpstreamSet: the sockets one UDP listener (of one worker) talks to its
// backends through, shared by all of its sessions, and their epoll set.
//
// Why shared: a socket per session takes a local port and a file descriptor
// per session, and both run out (about 28,000 ephemeral ports; 20,000 open
// files per process here). Instead a session is given a ROUTE: one of at
// most `max_sockets` unconnected sockets (per address family, bound to the
// wildcard address and an ephemeral port), and one of the configured local
// source addresses (`udp_source`; none: the kernel's choice), sent as an
// IP_PKTINFO / IPV6_PKTINFO control message. A backend tells its clients
// apart by the (address, port) it sees, so a route carries at most ONE
// session per backend address, and a reply is matched by what comes back:
// (socket, the local address it was sent to (PKTINFO), the backend's address
// and port) -> session. Towards one backend address that allows
//   max_sockets x max(1, source addresses of its family)
// sessions; different backends reuse the same routes. Sockets are opened as
// the busiest backend needs them and stay open (at most max_sockets per
// family: the fds and ports this set holds are bounded whatever the session
// count, and health probes always find ports). A socket that carried no
// route for a while is closed again (trim), so its port and kernel memory go
// back after a burst.
//
// ICMP errors (port unreachable) of unconnected sockets arrive on the error
// queue (IP_RECVERR) with the original destination, so they still reach the
// one session that caused them.
//
// Datagrams a socket refuses (EAGAIN) are copied into a per-socket queue
// (bounded) and sent when it turns writable.
// Thread: one worker's loop.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "conf/config.h"
#include "core/udp/batch.h"
#include "core/udp/session_table.h"

namespace lb::core::udp {

// The addresses of `udp_source` (CIDRs expanded), at most `limit`.
std::vector<sockaddr_storage> expand_sources(const std::vector<conf::Cidr>& cidrs, size_t limit);

// Where a session's datagrams leave from.
struct Route {
  uint32_t slot = 0;    // in the backend's lane: sock * sources + source
  uint16_t sock = 0;    // index in the family's socket array
  uint16_t source = 0;  // index in the family's source addresses (0: kernel's choice when none)
};

class UpstreamSet {
 public:
  // Receives what the sockets deliver.
  class Handler {
   public:
    // Free reply slots: first slot pointer and their count (each kSlot
    // bytes); the handler flushes staged replies first if none are left.
    virtual char* reply_slots(unsigned* room) = 0;
    // `n` slots from the last reply_slots() now hold datagrams.
    virtual void reply_slots_taken(unsigned n) = 0;
    // A datagram for `owner` (the value given to acquire()).
    virtual void upstream_reply(void* owner, char* data, size_t len) = 0;
    // The backend of `owner`'s route answered with an ICMP error.
    virtual void upstream_error(void* owner, int err) = 0;

   protected:
    ~Handler() = default;
  };

  // `sources`: local addresses to send from (either family, may be empty).
  UpstreamSet(size_t max_sockets, size_t slot_size, const std::vector<sockaddr_storage>& sources);
  ~UpstreamSet();  // closes every socket and the epoll fd
  UpstreamSet(const UpstreamSet&) = delete;
  UpstreamSet& operator=(const UpstreamSet&) = delete;

  // Creates the epoll set: 0 or -errno.
  int init();
  int epoll_fd() const { return epfd_; }

  // A free route towards `backend` for `owner`: 0, -EADDRNOTAVAIL when every
  // route to that address is taken, or -errno when a socket cannot open.
  int acquire(const sockaddr_storage& backend, void* owner, Route* out);
  // Frees the route at once (a reply arriving later is dropped).
  void release(const sockaddr_storage& backend, const Route& r);
  // How many routes towards one address of this family exist.
  size_t capacity(int family) const;
  size_t open_sockets() const { return open_; }
  size_t routes_in_use() const { return demux_.size(); }

  // Sends data[0, n) (each after `prefix`) from route `r` to `backend`;
  // what the socket refuses is queued (bounded). taken[i]: sent or queued.
  void send(const Route& r, const sockaddr_storage& backend, const void* prefix, size_t prefix_len,
            const iovec* data, unsigned n, bool* taken);
  // Handles the ready sockets (call when epoll_fd() is readable).
  void poll(Handler& h);
  // Closes the sockets that carried no route (and had nothing queued) at the
  // previous trim and still carry none: call every few seconds.
  void trim();

 private:
  struct Sock;
  struct Lane;
  struct RouteKey {
    PeerKey backend;
    uint16_t sock = 0;
    uint16_t source = 0;
    bool operator==(const RouteKey& o) const {
      return backend == o.backend && sock == o.sock && source == o.source;
    }
  };
  struct RouteHash {
    uint64_t seed = 0;
    size_t operator()(const RouteKey& k) const;
  };
  static int fam(int family) { return family == AF_INET6 ? 1 : 0; }
  int open_socket(int f, uint16_t index);
  void on_ready(int f, uint16_t index, uint32_t events, Handler& h);
  void read(int f, uint16_t index, Handler& h);
  void read_errors(int f, uint16_t index, Handler& h);
  void flush_queue(int f, uint16_t index);
  void watch(int f, uint16_t index, bool writable);
  // Control message for sending from source `source` of family f (0 bytes: none).
  size_t source_cmsg(int f, uint32_t source, char* buf) const;
  // The source index of a received PKTINFO control message; -1: unknown.
  int source_of(int f, const msghdr& m) const;

  const size_t max_sockets_;
  const size_t slot_size_;
  std::vector<sockaddr_storage> sources_[2];  // by family: IPv4, IPv6
  std::vector<Sock> socks_[2];
  size_t open_ = 0;
  int epfd_ = -1;
  std::unordered_map<PeerKey, Lane, SeededHash> lanes_;
  FlatMap<RouteKey, void*, RouteHash> demux_;
};

}  // namespace lb::core::udp
