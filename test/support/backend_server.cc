#include "test/support/backend_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <list>
#include <vector>

#include <fmt/format.h>

namespace lb::test {

namespace {
// Echo stops reading a connection while this much is waiting to be written.
constexpr size_t kEchoHighWater = 1 << 20;
}  // namespace

struct TestBackend::Conn {
  Socket sock;
  std::string in;      // ReadUntilEofThenReply: everything received so far
  std::string out;     // bytes still to write
  size_t out_off = 0;  // written prefix of `out`
  size_t read_total = 0;
  bool peer_eof = false;
  bool close_after_flush = false;
  bool shutdown_after_flush = false;
  bool dead = false;

  size_t pending() const { return out.size() - out_off; }
};

BackendOptions TestBackend::echo(std::string host) {
  BackendOptions o;
  o.mode = BackendMode::Echo;
  o.host = std::move(host);
  return o;
}

BackendOptions TestBackend::named(std::string name, std::string host) {
  BackendOptions o;
  o.mode = BackendMode::Name;
  o.greeting = std::move(name);
  o.host = std::move(host);
  return o;
}

BackendOptions TestBackend::read_until_eof_then_reply(std::function<std::string(const std::string&)> reply,
                                                      std::string host) {
  BackendOptions o;
  o.mode = BackendMode::ReadUntilEofThenReply;
  o.reply = std::move(reply);
  o.host = std::move(host);
  return o;
}

BackendOptions TestBackend::send_then_close(std::string greeting, std::string host) {
  BackendOptions o;
  o.mode = BackendMode::SendThenClose;
  o.greeting = std::move(greeting);
  o.host = std::move(host);
  return o;
}

BackendOptions TestBackend::send_then_half_close(std::string greeting, std::string host) {
  BackendOptions o;
  o.mode = BackendMode::SendThenHalfClose;
  o.greeting = std::move(greeting);
  o.host = std::move(host);
  return o;
}

BackendOptions TestBackend::slow_reader(size_t read_limit, int recv_buffer, std::string host) {
  BackendOptions o;
  o.mode = BackendMode::SlowReader;
  o.slow_read_limit = read_limit;
  o.recv_buffer = recv_buffer;
  o.host = std::move(host);
  return o;
}

TestBackend::TestBackend(BackendOptions options) : options_(std::move(options)) {
  if (options_.mode == BackendMode::ReadUntilEofThenReply && !options_.reply) {
    options_.reply = [](const std::string& in) { return fmt::format("received {} bytes\n", in.size()); };
  }
  sockaddr_storage ss;
  socklen_t len;
  if (!make_sockaddr(options_.host, 0, &ss, &len)) return;
  Socket s(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!s) return;
  if (options_.recv_buffer > 0) {
    // Set before listen() so accepted sockets inherit it and the window
    // advertised in the handshake is already small.
    set_recv_buffer(s, options_.recv_buffer);
  }
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return;
  if (::listen(s.fd(), 4096) != 0) return;
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return;
  listener_ = std::move(s);
  port_ = local_port(listener_);
  if (port_ == 0) return;
  thread_ = std::thread([this] { run(); });
}

TestBackend::~TestBackend() {
  stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

std::string TestBackend::address() const {
  if (options_.host.find(':') != std::string::npos) return fmt::format("[{}]:{}", options_.host, port_);
  return fmt::format("{}:{}", options_.host, port_);
}

void TestBackend::stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true);
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
  thread_.join();
}

void TestBackend::notify() {
  // Taking the lock orders the counter update before a waiter's re-check.
  std::lock_guard<std::mutex> lock(mu_);
  cv_.notify_all();
}

bool TestBackend::wait_accepted(uint64_t n, Deadline deadline) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return accepted_.load() >= n; });
}

bool TestBackend::wait_active(uint64_t n, Deadline deadline) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return active_.load() == n; });
}

bool TestBackend::wait_bytes_received(uint64_t n, Deadline deadline) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return bytes_received_.load() >= n; });
}

void TestBackend::run() {
  std::list<Conn> conns;
  std::vector<pollfd> pfds;
  std::vector<Conn*> index;  // pfds[i + 2] belongs to index[i]
  const BackendMode mode = options_.mode;

  auto flush = [](Conn& c) {
    while (c.pending() > 0) {
      ssize_t n = ::send(c.sock.fd(), c.out.data() + c.out_off, c.pending(), MSG_NOSIGNAL);
      if (n > 0) {
        c.out_off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      c.dead = true;
      return;
    }
    if (c.pending() == 0) {
      c.out.clear();
      c.out_off = 0;
      if (c.close_after_flush) c.dead = true;
      if (c.shutdown_after_flush) {
        ::shutdown(c.sock.fd(), SHUT_WR);
        c.shutdown_after_flush = false;
      }
    }
  };

  while (!stopping_.load()) {
    pfds.clear();
    index.clear();
    pfds.push_back({wake_fd_, POLLIN, 0});
    pfds.push_back({listener_.fd(), POLLIN, 0});
    for (Conn& c : conns) {
      short ev = 0;
      bool want_read = !c.peer_eof;
      if (mode == BackendMode::SlowReader && c.read_total >= options_.slow_read_limit) want_read = false;
      if (mode == BackendMode::Echo || mode == BackendMode::Name) {
        if (c.pending() >= kEchoHighWater) want_read = false;
      }
      if (want_read) ev |= POLLIN;
      if (c.pending() > 0) ev |= POLLOUT;
      pfds.push_back({c.sock.fd(), ev, 0});
      index.push_back(&c);
    }
    int rc = ::poll(pfds.data(), pfds.size(), -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pfds[0].revents) break;  // stop() poked us

    bool changed = false;
    if (pfds[1].revents & POLLIN) {
      for (;;) {
        int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;  // EAGAIN, or a transient error: poll again
        Conn& c = conns.emplace_back();
        c.sock = Socket(fd);
        switch (mode) {
          case BackendMode::Name:
            c.out = options_.greeting;
            break;
          case BackendMode::SendThenClose:
            c.out = options_.greeting;
            c.close_after_flush = true;
            break;
          case BackendMode::SendThenHalfClose:
            c.out = options_.greeting;
            c.shutdown_after_flush = true;
            break;
          default:
            break;
        }
        // Counted before the first byte leaves: a client that has read the
        // greeting may look at accepted() at once.
        accepted_.fetch_add(1);
        active_.fetch_add(1);
        flush(c);  // also performs an immediate close / shutdown when nothing is queued
        changed = true;
      }
    }

    for (size_t i = 0; i < index.size(); ++i) {
      Conn& c = *index[i];
      short rev = pfds[i + 2].revents;
      if (!rev || c.dead) continue;
      if (rev & POLLOUT) flush(c);
      if (c.dead) continue;
      if (rev & (POLLIN | POLLHUP | POLLERR)) {
        if (!(pfds[i + 2].events & POLLIN)) {
          // Not reading (slow reader, echo high water): only a hang-up or
          // error matters (and must be handled, or poll() would spin on it);
          // queued data stays unread.
          if (rev & (POLLERR | POLLHUP)) c.dead = true;
          continue;
        }
        char buf[65536];
        size_t want = sizeof(buf);
        if (mode == BackendMode::SlowReader) want = std::min(want, options_.slow_read_limit - c.read_total);
        ssize_t n = ::recv(c.sock.fd(), buf, want, 0);
        if (n > 0) {
          c.read_total += static_cast<size_t>(n);
          bytes_received_.fetch_add(static_cast<uint64_t>(n));
          changed = true;
          switch (mode) {
            case BackendMode::Echo:
            case BackendMode::Name:
              c.out.append(buf, static_cast<size_t>(n));
              flush(c);
              break;
            case BackendMode::ReadUntilEofThenReply:
              c.in.append(buf, static_cast<size_t>(n));
              break;
            default:
              break;  // SlowReader, SendThenHalfClose: count and discard
          }
        } else if (n == 0) {
          c.peer_eof = true;
          switch (mode) {
            case BackendMode::ReadUntilEofThenReply:
              c.out = options_.reply(c.in);
              c.close_after_flush = true;
              flush(c);
              break;
            case BackendMode::Echo:
            case BackendMode::Name:
              c.close_after_flush = true;
              flush(c);
              break;
            default:
              c.dead = true;
              break;
          }
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          c.dead = true;
        }
      }
    }

    for (auto it = conns.begin(); it != conns.end();) {
      if (it->dead) {
        it = conns.erase(it);  // Socket closes the fd
        active_.fetch_sub(1);
        changed = true;
      } else {
        ++it;
      }
    }
    if (changed) notify();
  }

  active_.fetch_sub(conns.size());
  conns.clear();
  listener_.close();
  notify();
}

}  // namespace lb::test
