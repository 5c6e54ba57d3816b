// UDP helpers for end-to-end tests: sockets, an echo backend, and a swarm of
// many client endpoints on few file descriptors.
//
// Thread rules: UdpEcho serves on its own thread (received() is atomic);
// everything else belongs to the calling thread.
#pragma once

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test/support/deadline.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"

namespace lb::test {

// A UDP socket bound to host:bind_port (an IP literal).
inline int udp_socket(uint16_t bind_port = 0, const std::string& host = "127.0.0.1") {
  sockaddr_storage a{};
  socklen_t len = 0;
  if (!make_sockaddr(host, bind_port, &a, &len)) return -1;
  int fd = ::socket(a.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  int big = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  return fd;
}

inline uint16_t udp_local_port(int fd) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return a.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&a)->sin6_port)
                                 : ntohs(reinterpret_cast<sockaddr_in*>(&a)->sin_port);
}

inline bool send_to(int fd, uint16_t port, const std::string& data, const std::string& host = "127.0.0.1") {
  sockaddr_storage a{};
  socklen_t len = 0;
  if (!make_sockaddr(host, port, &a, &len)) return false;
  return ::sendto(fd, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), len) ==
         static_cast<ssize_t>(data.size());
}

inline std::optional<std::string> recv_within(int fd, Deadline deadline) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, poll_timeout_ms(deadline)) <= 0) return std::nullopt;
  std::string buf(70000, '\0');
  ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  if (n < 0) return std::nullopt;
  buf.resize(static_cast<size_t>(n));
  return buf;
}

// A UDP server that answers every datagram with "<name>:" + the datagram.
class UdpEcho {
 public:
  // hold > 1: replies are held back until `hold` datagrams have arrived, then all are sent, so that
  // many requests are in flight at once whatever the scheduling.
  explicit UdpEcho(std::string name, std::string host = "127.0.0.1", size_t hold = 1)
      : name_(std::move(name)), host_(std::move(host)), hold_(hold), fd_(udp_socket(0, host_)) {
    port_ = udp_local_port(fd_);
    ::pipe(stop_pipe_);
    thread_ = std::thread([this] { run(); });
  }
  ~UdpEcho() { stop(); }
  void stop() {
    if (!thread_.joinable()) return;
    ::write(stop_pipe_[1], "x", 1);
    thread_.join();
    ::close(fd_);
    ::close(stop_pipe_[0]);
    ::close(stop_pipe_[1]);
  }
  uint16_t port() const { return port_; }
  std::string address() const {
    return (host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_);
  }
  uint64_t received() const { return received_.load(); }

 private:
  void run() {
    std::string buf(70000, '\0');
    for (;;) {
      pollfd p[2] = {{fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
      if (::poll(p, 2, -1) < 0) continue;
      if (p[1].revents) return;
      sockaddr_storage from{};
      socklen_t len = sizeof from;
      ssize_t n = ::recvfrom(fd_, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) continue;
      ++received_;
      held_.push_back({name_ + ":" + buf.substr(0, static_cast<size_t>(n)), from, len});
      if (held_.size() < hold_) continue;
      for (auto& h : held_)
        ::sendto(fd_, h.reply.data(), h.reply.size(), 0, reinterpret_cast<sockaddr*>(&h.to), h.len);
      held_.clear();
    }
  }
  struct Held {
    std::string reply;
    sockaddr_storage to;
    socklen_t len;
  };
  std::string name_;
  std::string host_;
  size_t hold_;
  std::vector<Held> held_;
  int fd_;
  uint16_t port_ = 0;
  int stop_pipe_[2] = {-1, -1};
  std::atomic<uint64_t> received_{0};
  std::thread thread_;
};

// Datagrams the kernel dropped (full receive buffer) on the UDP sockets that
// process `pid` holds open now: from /proc/PID/fd and /proc/net/udp{,6}.
uint64_t udp_drops(pid_t pid);

// Value of the sample `series` (name{labels}) in a /metrics body.
inline std::optional<double> metric(uint16_t admin_port, const std::string& series) {
  auto r = http_get(admin_port, "/metrics");
  if (r.status != 200) return std::nullopt;
  size_t pos = 0;
  while ((pos = r.body.find(series + " ", pos)) != std::string::npos) {
    if (pos == 0 || r.body[pos - 1] == '\n') return std::stod(r.body.substr(pos + series.size() + 1));
    ++pos;
  }
  return std::nullopt;
}

inline std::string udp_config(const std::string& listener_extra, const std::string& pool_extra,
                              const std::vector<std::string>& backends, unsigned workers = 1,
                              const std::string& bind = "127.0.0.1:0", const std::string& global_extra = "") {
  // global_extra goes into [global]; it may set access_log itself.
  std::string g = global_section(workers);
  if (!global_extra.empty()) {
    const std::string off = "access_log = \"off\"\n";
    std::string repl = global_extra + "\n";
    if (global_extra.find("access_log") == std::string::npos) repl += off;
    g.replace(g.find(off), off.size(), repl);
  }
  std::string c = g + "[[listener]]\nname = \"udp\"\nprotocol = \"udp\"\nbind = \"" + bind +
                  "\"\npool = \"p\"\n" + listener_extra + "\n[[pool]]\nname = \"p\"\n" + pool_extra + "\n";
  for (auto& b : backends) c += "[[pool.backend]]\naddress = \"" + b + "\"\n";
  return c;
}

// Many UDP client endpoints (source address, port) on few sockets: socket k
// is bound to 0.0.0.0:P_k and sends from any of `sources` (loopback
// addresses) with IP_PKTINFO, so endpoint i = (sources[i % S], P_(i / S)).
// Replies are matched back to their endpoint by (local address, socket).
class UdpSwarm {
 public:
  // `endpoints` clients from the addresses first_source, first_source + 1, ...
  // (IPv4, e.g. "127.3.0.1"), `per_socket` of them on each socket.
  UdpSwarm(size_t endpoints, const std::string& first_source, size_t per_socket);
  ~UdpSwarm();
  UdpSwarm(const UdpSwarm&) = delete;
  UdpSwarm& operator=(const UdpSwarm&) = delete;
  bool ok() const { return ok_; }
  size_t size() const { return endpoints_; }
  size_t sockets() const { return fds_.size(); }
  // Sends `data` from endpoint i to 127.0.0.1:port.
  bool send(size_t i, uint16_t port, const std::string& data);
  struct Reply {
    size_t endpoint;
    std::string data;
  };
  // Every reply that arrives until `deadline` or until `want` replies were
  // read (whichever first).
  std::vector<Reply> receive(size_t want, Deadline deadline);

 private:
  size_t endpoints_;
  size_t per_socket_;
  uint32_t first_;  // host order
  std::vector<int> fds_;
  bool ok_ = true;
};

}  // namespace lb::test
