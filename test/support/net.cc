#include "test/support/net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "test/support/proc_net.h"

namespace lb::test {

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.release();
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

bool make_sockaddr(const std::string& host, uint16_t port, sockaddr_storage* out, socklen_t* len) {
  std::memset(out, 0, sizeof(*out));
  auto* v4 = reinterpret_cast<sockaddr_in*>(out);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(out);
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

namespace {

// Waits for `events` on one fd; returns revents, 0 on timeout, -1 on error.
int poll_one(int fd, short events, Deadline deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, poll_timeout_ms(deadline));
    if (rc > 0) return p.revents;
    if (rc == 0) {
      if (expired(deadline)) return 0;
      continue;
    }
    if (errno != EINTR) return -1;
  }
}

int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

// One non-blocking recv into `out`. Returns >0 bytes, 0 on EOF, -1 would block,
// -2 on error (errno in *err).
ssize_t recv_some(int fd, std::string& out, int* err) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      return n;
    }
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    *err = errno;
    return -2;
  }
}

}  // namespace

const char* to_string(ReadEnd e) {
  switch (e) {
    case ReadEnd::Complete:
      return "complete";
    case ReadEnd::Eof:
      return "eof";
    case ReadEnd::Reset:
      return "reset";
    case ReadEnd::Timeout:
      return "timeout";
  }
  return "?";
}

Socket tcp_connect_start(const std::string& host, uint16_t port, int* error, int rcvbuf, int mss) {
  return tcp_connect_start_from("", host, port, error, rcvbuf, mss);
}

Socket tcp_connect_start_from(const std::string& source, const std::string& host, uint16_t port, int* error,
                              int rcvbuf, int mss) {
  sockaddr_storage ss;
  socklen_t len;
  if (!make_sockaddr(host, port, &ss, &len)) {
    if (error) *error = EINVAL;
    return {};
  }
  Socket s(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!s) {
    if (error) *error = errno;
    return {};
  }
  if (!source.empty()) {
    sockaddr_storage src;
    socklen_t src_len;
    if (!make_sockaddr(source, 0, &src, &src_len) ||
        ::bind(s.fd(), reinterpret_cast<sockaddr*>(&src), src_len) != 0) {
      if (error) *error = errno ? errno : EINVAL;
      return {};
    }
  }
  int one = 1;
  setsockopt(s.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (rcvbuf > 0) setsockopt(s.fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  if (mss > 0) setsockopt(s.fd(), IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss));
  int rc;
  do {
    rc = ::connect(s.fd(), reinterpret_cast<sockaddr*>(&ss), len);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0 && errno != EINPROGRESS) {
    if (error) *error = errno;
    return {};
  }
  if (error) *error = 0;
  return s;
}

int wait_connected(const Socket& s, Deadline deadline) {
  int rev = poll_one(s.fd(), POLLOUT, deadline);
  if (rev == 0) return ETIMEDOUT;
  if (rev < 0) return errno;
  return socket_error(s.fd());
}

Socket tcp_connect(const std::string& host, uint16_t port, Deadline deadline, int* error) {
  return tcp_connect_from("", host, port, deadline, error);
}

Socket tcp_connect_from(const std::string& source, const std::string& host, uint16_t port, Deadline deadline,
                        int* error) {
  int err = 0;
  Socket s = tcp_connect_start_from(source, host, port, &err);
  if (s) err = wait_connected(s, deadline);
  if (error) *error = err;
  if (err != 0) return {};
  return s;
}

size_t write_all(const Socket& s, std::string_view data, Deadline deadline) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(s.fd(), data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int rev = poll_one(s.fd(), POLLOUT, deadline);
      if (rev <= 0) break;  // deadline or poll failure
      continue;
    }
    break;  // EPIPE, ECONNRESET, ...
  }
  return done;
}

ReadResult read_exact(const Socket& s, size_t n, Deadline deadline) {
  ReadResult r;
  while (r.data.size() < n) {
    // Never read past n: the caller may expect more bytes on the stream later.
    char buf[65536];
    size_t want = std::min(sizeof(buf), n - r.data.size());
    ssize_t got = ::recv(s.fd(), buf, want, 0);
    if (got > 0) {
      r.data.append(buf, static_cast<size_t>(got));
      continue;
    }
    if (got == 0) {
      r.end = ReadEnd::Eof;
      return r;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (poll_one(s.fd(), POLLIN, deadline) <= 0) {
        r.end = ReadEnd::Timeout;
        return r;
      }
      continue;
    }
    r.end = ReadEnd::Reset;
    r.error = errno;
    return r;
  }
  r.end = ReadEnd::Complete;
  return r;
}

ReadResult read_until_eof(const Socket& s, Deadline deadline) {
  ReadResult r;
  for (;;) {
    ssize_t got = recv_some(s.fd(), r.data, &r.error);
    if (got > 0) continue;
    if (got == 0) {
      r.end = ReadEnd::Eof;
      return r;
    }
    if (got == -2) {
      r.end = ReadEnd::Reset;
      return r;
    }
    if (poll_one(s.fd(), POLLIN, deadline) <= 0) {
      r.end = ReadEnd::Timeout;
      return r;
    }
  }
}

ReadResult read_until(const Socket& s, std::string_view delimiter, Deadline deadline) {
  ReadResult r;
  for (;;) {
    // One byte per recv() never consumes past the delimiter, so the rest of
    // the stream stays for the caller; fine for the short lines this reads.
    char c;
    ssize_t got = ::recv(s.fd(), &c, 1, 0);
    if (got == 1) {
      r.data.push_back(c);
      if (r.data.size() >= delimiter.size() &&
          std::string_view(r.data).substr(r.data.size() - delimiter.size()) == delimiter) {
        r.end = ReadEnd::Complete;
        return r;
      }
      continue;
    }
    if (got == 0) {
      r.end = ReadEnd::Eof;
      return r;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (poll_one(s.fd(), POLLIN, deadline) <= 0) {
        r.end = ReadEnd::Timeout;
        return r;
      }
      continue;
    }
    r.end = ReadEnd::Reset;
    r.error = errno;
    return r;
  }
}

ReadResult exchange(const Socket& s, std::string_view out, size_t expect_in, Deadline deadline,
                    bool shutdown_after_send) {
  ReadResult r;
  size_t sent = 0;
  bool shut = false;
  bool write_failed = false;
  for (;;) {
    if (sent == out.size() && shutdown_after_send && !shut) {
      ::shutdown(s.fd(), SHUT_WR);
      shut = true;
    }
    if (r.data.size() >= expect_in && (sent == out.size() || write_failed)) {
      r.end = ReadEnd::Complete;
      return r;
    }
    short events = POLLIN;
    if (sent < out.size() && !write_failed) events |= POLLOUT;
    pollfd p{s.fd(), events, 0};
    int rc = ::poll(&p, 1, poll_timeout_ms(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) {
      r.end = ReadEnd::Timeout;
      return r;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t got = recv_some(s.fd(), r.data, &r.error);
      if (got == 0) {
        r.end = r.data.size() >= expect_in ? ReadEnd::Complete : ReadEnd::Eof;
        return r;
      }
      if (got == -2) {
        r.end = ReadEnd::Reset;
        return r;
      }
    }
    if ((p.revents & POLLOUT) && sent < out.size()) {
      ssize_t n = ::send(s.fd(), out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        write_failed = true;  // the read side will report how the stream ended
      }
    }
  }
}

ReadEnd wait_closed(const Socket& s, Deadline deadline) {
  for (;;) {
    int rev = poll_one(s.fd(), POLLIN, deadline);
    if (rev == 0) return ReadEnd::Timeout;
    if (rev < 0) return ReadEnd::Reset;
    char c;
    ssize_t n = ::recv(s.fd(), &c, 1, MSG_PEEK);
    if (n == 0) return ReadEnd::Eof;
    if (n > 0) return ReadEnd::Complete;
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
    return ReadEnd::Reset;
  }
}

bool shutdown_write(const Socket& s) { return ::shutdown(s.fd(), SHUT_WR) == 0; }

bool set_recv_buffer(const Socket& s, int bytes) {
  return setsockopt(s.fd(), SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes)) == 0;
}

bool set_send_buffer(const Socket& s, int bytes) {
  return setsockopt(s.fd(), SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes)) == 0;
}

bool set_linger_reset(const Socket& s) {
  linger l{1, 0};
  return setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0;
}

Socket tcp_listen(const std::string& host, uint16_t port, int backlog) {
  sockaddr_storage ss;
  socklen_t len;
  if (!make_sockaddr(host, port, &ss, &len)) return {};
  Socket s(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!s) return {};
  if (ss.ss_family == AF_INET6) {
    int one = 1;
    setsockopt(s.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return {};
  if (::listen(s.fd(), backlog) != 0) return {};
  return s;
}

uint16_t local_port(const Socket& s) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(s.fd(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

uint16_t refused_port(const std::string& host) {
  sockaddr_storage ss;
  socklen_t len;
  if (!make_sockaddr(host, 0, &ss, &len)) return 0;
  Socket s(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return 0;
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return 0;
  return local_port(s);  // closed (never listened) when `s` goes out of scope
}

std::string random_bytes(size_t n, uint64_t seed) {
  // xorshift64*: a fixed, tiny generator so payloads are reproducible.
  std::string out(n, '\0');
  uint64_t x = seed ? seed : 1;
  size_t i = 0;
  while (i < n) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    uint64_t v = x * 0x2545F4914F6CDD1DULL;
    for (int b = 0; b < 8 && i < n; ++b, ++i) out[i] = static_cast<char>(v >> (8 * b));
  }
  return out;
}

size_t mismatch_offset(std::string_view a, std::string_view b) {
  size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return i;
  }
  return a.size() == b.size() ? std::string::npos : n;
}

uint64_t raise_fd_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

}  // namespace lb::test

namespace lb::test {

Socket udp_bind(const std::string& host, uint16_t port) {
  sockaddr_storage a{};
  socklen_t len = 0;
  if (!make_sockaddr(host, port, &a, &len)) return {};
  Socket s(::socket(a.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s || ::bind(s.fd(), reinterpret_cast<sockaddr*>(&a), len) != 0) return {};
  return s;
}

bool udp_send_to(const Socket& s, const std::string& host, uint16_t port, std::string_view data) {
  sockaddr_storage a{};
  socklen_t len = 0;
  if (!make_sockaddr(host, port, &a, &len)) return false;
  return ::sendto(s.fd(), data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), len) ==
         static_cast<ssize_t>(data.size());
}

std::string udp_receive_within(const Socket& s, Deadline deadline, sockaddr_storage* from) {
  for (;;) {
    char buf[2048];
    sockaddr_storage sender{};
    socklen_t len = sizeof sender;
    const ssize_t n =
        ::recvfrom(s.fd(), buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&sender), &len);
    if (n >= 0) {
      if (from) *from = sender;
      return std::string(buf, static_cast<size_t>(n));
    }
    if (expired(deadline)) return {};
    pollfd p{s.fd(), POLLIN, 0};
    ::poll(&p, 1, poll_timeout_ms(deadline));
  }
}

bool udp_reply_to(const Socket& s, const sockaddr_storage& to, std::string_view data) {
  const socklen_t len = to.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  return ::sendto(s.fd(), data.data(), data.size(), 0, reinterpret_cast<const sockaddr*>(&to), len) ==
         static_cast<ssize_t>(data.size());
}

long udp_receive_queue(uint16_t port) {
  for (const auto& r : proc_net_rows("udp"))
    if (r.local_port == port) return static_cast<long>(r.rx_queue);
  return -1;
}

std::optional<TcpTimer> tcp_timer_to(uint16_t remote_port) {
  for (const auto& r : proc_net_rows("tcp"))
    if (r.state == kTcpEstablished && r.remote_port == remote_port)
      return TcpTimer{r.timer_active, r.timer_when};
  return std::nullopt;
}

bool echoes(uint16_t port, const std::string& payload) {
  Socket s = tcp_connect("127.0.0.1", port, in(seconds(5)));
  if (!s) return false;
  return exchange(s, payload, payload.size(), in(seconds(5))).data == payload;
}

}  // namespace lb::test
