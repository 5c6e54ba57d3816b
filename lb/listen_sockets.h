// The listening sockets of a configuration's binds: opened on the main thread
// (before privileges are dropped), then handed to the workers.
//
// Words: a *bind* is one address of a listener (conf::Listener::bind); its
// *bind key* names it across reloads. Each bind has one SO_REUSEPORT socket
// per worker, or, under socket activation, per-worker copies of the socket
// systemd passed (an inherited UDP socket: worker 0 only), or the per-worker
// sockets of a previous lb (descriptor store, upgrade in place).
//
// Thread: main thread only.
#pragma once

#include <sys/socket.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"
#include "lb/systemd.h"

namespace lb::app {

// A bind's identity across reloads. Port 0 means "a free port of its own"
// for each listener, so such binds are told apart by listener name too.
std::string bind_key(const conf::Listener& l, const conf::Endpoint& e);

// What is known about a bind's socket once it is open.
struct BoundSocket {
  int protocol_type = SOCK_STREAM;  // SOCK_STREAM / SOCK_DGRAM
  std::string actual;               // address with the real port
  sockaddr_storage addr{};
  socklen_t len = 0;
  bool single_worker = false;  // an inherited UDP socket: worker 0 only
  bool inherited = false;      // socket activation
};
using BoundSockets = std::map<std::string, BoundSocket>;  // by bind key

// The key of `e` among the binds already `open`: a bind naming the very
// address an open one has (the port lb chose for a port-0 bind, now written
// into the configuration) is that bind, with its sockets. Opening a second
// SO_REUSEPORT group beside it instead would split the port between two
// groups until the first closed: the datagrams and queued connections the
// kernel hashed to the departing one would be lost.
std::string bind_key(const conf::Listener& l, const conf::Endpoint& e, const BoundSockets& open);

// A descriptor with one owner: closed on destruction unless released.
class OwnedFd {
 public:
  explicit OwnedFd(int fd) : fd_(fd) {}
  OwnedFd(OwnedFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  OwnedFd& operator=(OwnedFd&& o) noexcept;
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd();
  int get() const { return fd_; }
  // Gives the descriptor up to the caller.
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Sockets opened for binds that had none. Owns the descriptors until
// take() hands them out; whatever is left is closed on destruction (a failed
// start or an aborted reload).
struct OpenedSockets {
  struct Bind {
    BoundSocket socket;
    std::vector<OwnedFd> fds;  // one per worker that serves the bind, worker 0 first
  };
  std::map<std::string, Bind> binds;  // by bind key

  // The descriptor of `key` for `worker`, given up by this set; nullopt when
  // the bind is not new or that worker does not serve it.
  std::optional<int> take(const std::string& key, unsigned worker);
};

// Socket activation (LISTEN_FDS): the sockets systemd passed, and which bind
// each one serves for a given configuration. An upgrade's handed-over
// sockets join them (add()), named after their listeners.
class SocketActivation {
 public:
  using Group = std::vector<systemd::InheritedSocket*>;

  // Takes over the inherited sockets (once, before other threads start);
  // returns what was odd about them ("" when nothing).
  std::string take_inherited();
  // One more inherited socket (an upgrade's); call match() afterwards.
  void add(const systemd::InheritedSocket& in) { inherited_.push_back(in); }
  size_t count() const { return inherited_.size(); }
  // Closes the sockets from index `first` on and forgets them (the
  // hand-over's copies, once the workers have theirs); call match() again.
  void close_from(size_t first);
  // Every bind of `cfg` that inherited sockets serve, matched by listener
  // name first across all listeners, then by address; with each match, the
  // rest of its group (same name, type and address: a previous lb's
  // SO_REUSEPORT group, one per worker). Replaces the last match.
  void match(const conf::Config& cfg);
  // The inherited sockets serving `key` in the last match(), or null.
  const Group* for_bind(const std::string& key) const;
  // Logs the inherited sockets that the last match() left unused.
  void warn_unused() const;

 private:
  std::vector<systemd::InheritedSocket> inherited_;
  std::map<std::string, Group> by_bind_;
};

// Opens a socket per worker for every bind of `cfg` not in `open` (inherited
// sockets from `activation` replace binding). Port 0 is resolved by the first
// socket; the others bind the port it got. nullopt (error logged, nothing
// left open) when one cannot be opened.
std::optional<OpenedSockets> open_listen_sockets(const conf::Config& cfg, unsigned workers,
                                                 const BoundSockets& open,
                                                 const SocketActivation& activation);

}  // namespace lb::app
