// UdpPins: the backends of UDP sessions a previous program handed over
// (upgrade in place), waiting for each client's next datagram.
//
// The new program does not take over the old one's upstream sockets: a UDP
// session is only a mapping (client -> backend), so it re-creates it. The
// old program's sessions arrive as (listener, client, backend) records and
// are pinned here before the workers start; the first datagram of a client
// with a pin starts its session on the pinned backend (if it is still a
// candidate) instead of asking the selector, on whichever worker the kernel
// gives the client to. Replies to datagrams the old program had already
// forwarded still reach it (it keeps such sessions until answered or timed
// out, as on a graceful stop) and leave from the same listening socket.
//
// Thread: add() on the main thread, take() on any worker; a mutex guards the
// map, and an atomic count keeps take() free while nothing is pinned (the
// usual case). A pin is used once; pins never used are dropped on clear().
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/backend.h"

namespace lb::core::udp {

class UdpPins {
 public:
  void add(const std::string& listener, const sockaddr_storage& client, BackendPtr backend) {
    std::lock_guard lk(mu_);
    if (pins_.insert_or_assign(key(listener, reinterpret_cast<const sockaddr*>(&client)), std::move(backend))
            .second)
      count_.fetch_add(1, std::memory_order_relaxed);
  }
  // The pinned backend of `client` on `listener`, removed; null when none.
  BackendPtr take(const std::string& listener, const sockaddr* client) {
    if (count_.load(std::memory_order_relaxed) == 0) return nullptr;
    std::lock_guard lk(mu_);
    auto it = pins_.find(key(listener, client));
    if (it == pins_.end()) return nullptr;
    BackendPtr b = std::move(it->second);
    pins_.erase(it);
    count_.fetch_sub(1, std::memory_order_relaxed);
    return b;
  }
  size_t size() const { return count_.load(std::memory_order_relaxed); }
  void clear() {
    std::lock_guard lk(mu_);
    pins_.clear();
    count_.store(0, std::memory_order_relaxed);
  }

 private:
  // Listener name, then family, port and address bytes.
  static std::string key(const std::string& listener, const sockaddr* sa) {
    std::string k = listener;
    k.push_back('\0');
    if (sa->sa_family == AF_INET) {
      auto* in = reinterpret_cast<const sockaddr_in*>(sa);
      k.append(reinterpret_cast<const char*>(&in->sin_port), sizeof in->sin_port);
      k.append(reinterpret_cast<const char*>(&in->sin_addr), sizeof in->sin_addr);
    } else if (sa->sa_family == AF_INET6) {
      auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
      k.append(reinterpret_cast<const char*>(&in6->sin6_port), sizeof in6->sin6_port);
      k.append(reinterpret_cast<const char*>(&in6->sin6_addr), sizeof in6->sin6_addr);
    }
    k.push_back(static_cast<char>(sa->sa_family));
    return k;
  }
  std::mutex mu_;
  std::unordered_map<std::string, BackendPtr> pins_;
  std::atomic<size_t> count_{0};
};

}  // namespace lb::core::udp
