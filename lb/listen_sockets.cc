#include "lb/listen_sockets.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/log.h"
#include "core/socket.h"

namespace lb::app {

std::string bind_key(const conf::Listener& l, const conf::Endpoint& e) {
  std::string key = std::string(conf::to_string(l.protocol)) + "|" + e.to_string();
  if (e.port() == 0) key += "|" + l.name;
  return key;
}

OwnedFd& OwnedFd::operator=(OwnedFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

OwnedFd::~OwnedFd() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<int> OpenedSockets::take(const std::string& key, unsigned worker) {
  auto it = binds.find(key);
  if (it == binds.end() || worker >= it->second.fds.size()) return std::nullopt;
  return it->second.fds[worker].release();
}

std::string SocketActivation::take_inherited() {
  std::string warnings;
  inherited_ = systemd::inherited_sockets(&warnings);
  return warnings;
}

void SocketActivation::match(const conf::Config& cfg) {
  by_bind_.clear();
  for (auto& in : inherited_) in.used = false;
  for (auto by : {systemd::MatchBy::NameOnly, systemd::MatchBy::AddressOnly}) {
    for (const auto& l : cfg.listeners) {
      int type = l.protocol == conf::Protocol::Tcp ? SOCK_STREAM : SOCK_DGRAM;
      for (const auto& e : l.bind) {
        std::string key = bind_key(l, e);
        if (by_bind_.count(key)) continue;
        if (auto* in = systemd::match(inherited_, l.name, type, reinterpret_cast<const sockaddr*>(&e.addr),
                                      e.addr_len, by))
          by_bind_[key] = in;
      }
    }
  }
}

const systemd::InheritedSocket* SocketActivation::for_bind(const std::string& key) const {
  auto it = by_bind_.find(key);
  return it == by_bind_.end() ? nullptr : it->second;
}

void SocketActivation::warn_unused() const {
  for (const auto& in : inherited_)
    if (!in.used) log::warn("inherited socket matches no listener name={} fd={}", in.name, in.fd);
}

namespace {

// Socket activation: the inherited socket replaces binding. TCP: every
// worker accepts from its own dup of it. UDP: one worker only, so a client's
// datagrams are never split over workers.
std::optional<OpenedSockets::Bind> adopt_inherited(const conf::Listener& l,
                                                   const systemd::InheritedSocket& in, int type,
                                                   unsigned workers) {
  OpenedSockets::Bind b;
  b.socket.protocol_type = type;
  b.socket.addr = in.addr;
  b.socket.len = in.len;
  b.socket.single_worker = type == SOCK_DGRAM;
  b.socket.inherited = true;
  const unsigned serving = b.socket.single_worker ? 1 : workers;
  for (unsigned w = 0; w < serving; ++w) {
    int fd = systemd::dup_for_worker(in);
    if (fd < 0) {
      log::error("cannot use inherited socket listener={} error=\"{}\"", l.name, strerror(-fd));
      return std::nullopt;
    }
    b.fds.emplace_back(fd);
  }
  b.socket.actual = core::format_address(reinterpret_cast<sockaddr*>(&b.socket.addr));
  return b;
}

std::optional<OpenedSockets::Bind> bind_new(const conf::Listener& l, const conf::Endpoint& e, int type,
                                            unsigned workers) {
  OpenedSockets::Bind b;
  b.socket.protocol_type = type;
  b.socket.addr = e.addr;
  b.socket.len = e.addr_len;
  for (unsigned w = 0; w < workers; ++w) {
    int fd = core::make_reuseport_socket(reinterpret_cast<sockaddr*>(&b.socket.addr), b.socket.len, type);
    if (fd < 0) {
      log::error("cannot bind listener={} address={} error=\"{}\"", l.name, e.text, strerror(-fd));
      return std::nullopt;
    }
    b.fds.emplace_back(fd);
    if (w == 0) core::local_address(fd, &b.socket.addr, &b.socket.len);
    if (type == SOCK_STREAM && ::listen(fd, 4096) != 0) {
      int err = errno;
      log::error("cannot listen listener={} address={} error=\"{}\"", l.name, e.text, strerror(err));
      return std::nullopt;
    }
  }
  b.socket.actual = core::format_address(reinterpret_cast<sockaddr*>(&b.socket.addr));
  return b;
}

}  // namespace

std::optional<OpenedSockets> open_listen_sockets(const conf::Config& cfg, unsigned workers,
                                                 const BoundSockets& open,
                                                 const SocketActivation& activation) {
  OpenedSockets out;  // on any failure, its descriptors close with it
  for (const auto& l : cfg.listeners) {
    int type = l.protocol == conf::Protocol::Tcp ? SOCK_STREAM : SOCK_DGRAM;
    for (const auto& e : l.bind) {
      std::string key = bind_key(l, e);
      if (open.count(key) || out.binds.count(key)) continue;
      const systemd::InheritedSocket* in = activation.for_bind(key);
      auto b = in ? adopt_inherited(l, *in, type, workers) : bind_new(l, e, type, workers);
      if (!b) return std::nullopt;
      out.binds.emplace(key, std::move(*b));
    }
  }
  return out;
}

}  // namespace lb::app
