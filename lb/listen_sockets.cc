#include "lb/listen_sockets.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "core/log.h"
#include "core/socket.h"

namespace lb::app {

std::string bind_key(const conf::Listener& l, const conf::Endpoint& e) {
  std::string key = std::string(conf::to_string(l.protocol)) + "|" + e.to_string();
  if (e.port() == 0) key += "|" + l.name;
  return key;
}

std::string bind_key(const conf::Listener& l, const conf::Endpoint& e, const BoundSockets& open) {
  std::string key = bind_key(l, e);
  if (e.port() == 0 || open.count(key)) return key;
  const int type = l.protocol == conf::Protocol::Tcp ? SOCK_STREAM : SOCK_DGRAM;
  for (const auto& [k, b] : open)
    if (b.protocol_type == type &&
        systemd::same_address(reinterpret_cast<const sockaddr*>(&b.addr), b.len,
                              reinterpret_cast<const sockaddr*>(&e.addr), e.addr_len))
      return k;
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
        auto* in = systemd::match(inherited_, l.name, type, reinterpret_cast<const sockaddr*>(&e.addr),
                                  e.addr_len, by);
        if (!in) continue;
        Group& group = by_bind_[key];
        group.push_back(in);
        for (auto& other : inherited_)
          if (!other.used && other.type == in->type && other.name == in->name &&
              systemd::same_address(reinterpret_cast<const sockaddr*>(&other.addr), other.len,
                                    reinterpret_cast<const sockaddr*>(&in->addr), in->len)) {
            other.used = true;
            group.push_back(&other);
          }
      }
    }
  }
}

const SocketActivation::Group* SocketActivation::for_bind(const std::string& key) const {
  auto it = by_bind_.find(key);
  return it == by_bind_.end() ? nullptr : &it->second;
}

void SocketActivation::close_from(size_t first) {
  by_bind_.clear();
  for (size_t i = first; i < inherited_.size(); ++i) ::close(inherited_[i].fd);
  if (first < inherited_.size()) inherited_.resize(first);
}

void SocketActivation::warn_unused() const {
  for (const auto& in : inherited_)
    if (!in.used) log::warn("inherited socket matches no listener name={} fd={}", in.name, in.fd);
}

namespace {

// Socket activation: the inherited sockets replace binding. One per worker
// (a previous lb's SO_REUSEPORT group, from the descriptor store or an
// upgrade): each worker gets its own, so the connections already queued on
// each are all accepted. Otherwise the one socket systemd bound: TCP, every
// worker accepts from its own dup of it; UDP, one worker only, so a
// client's datagrams are never split over workers.
std::optional<OpenedSockets::Bind> adopt_inherited(const conf::Listener& l,
                                                   const SocketActivation::Group& socks, int type,
                                                   unsigned workers) {
  const bool per_worker = socks.size() == workers;
  if (!per_worker && socks.size() > 1)
    log::warn("inherited sockets for one bind differ from the worker count listener={} sockets={} workers={}",
              l.name, socks.size(), workers);
  const systemd::InheritedSocket& in = *socks[0];
  OpenedSockets::Bind b;
  b.socket.protocol_type = type;
  b.socket.addr = in.addr;
  b.socket.len = in.len;
  b.socket.single_worker = type == SOCK_DGRAM && !per_worker;
  b.socket.inherited = true;
  const unsigned serving = b.socket.single_worker ? 1 : workers;
  for (unsigned w = 0; w < serving; ++w) {
    int fd = systemd::dup_for_worker(per_worker ? *socks[w] : in);
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
  OpenedSockets out;            // on any failure, its descriptors close with it
  std::set<std::string> named;  // the binds `cfg` names itself
  for (const auto& l : cfg.listeners)
    for (const auto& e : l.bind) named.insert(bind_key(l, e));
  for (const auto& l : cfg.listeners) {
    int type = l.protocol == conf::Protocol::Tcp ? SOCK_STREAM : SOCK_DGRAM;
    for (const auto& e : l.bind) {
      std::string key = bind_key(l, e, open);
      if (key != bind_key(l, e) && named.count(key)) {
        // Both the port-0 bind and its address: one socket cannot serve two.
        log::error(
            "cannot listen listener={} address={} error=\"address served by a port-0 bind that stays\"",
            l.name, e.text);
        return std::nullopt;
      }
      if (open.count(key) || out.binds.count(key)) continue;
      const SocketActivation::Group* in = activation.for_bind(key);
      auto b = in ? adopt_inherited(l, *in, type, workers) : bind_new(l, e, type, workers);
      if (!b) return std::nullopt;
      out.binds.emplace(key, std::move(*b));
    }
  }
  return out;
}

}  // namespace lb::app
