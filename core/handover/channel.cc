#include "core/handover/channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace lb::core::handover {

namespace {

// How long a call that would block waits (see would_block_wait()).
thread_local int g_wait_ms = 10000;

void set_timeouts(int sock, std::chrono::milliseconds t) {
  g_wait_ms = static_cast<int>(t.count());
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  ::setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// The socket may be non-blocking (libuv's uv_poll_init makes it so, and the
// programs watch the channel from their loops): a call that would block
// waits in poll() instead, for as long as a blocking one would.

bool would_block_wait(int sock, short events) {
  if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
  pollfd p{sock, events, 0};
  int n;
  do {
    n = ::poll(&p, 1, g_wait_ms);
  } while (n < 0 && errno == EINTR);
  if (n == 0) errno = EAGAIN;
  return n > 0;
}

bool send_message(int sock, const void* data, size_t len, const int* fds, size_t nfds, std::string* error) {
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (nfds > 0) {
    control.assign(CMSG_SPACE(sizeof(int) * nfds), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do {
    n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && (errno == EINTR || would_block_wait(sock, POLLOUT)));
  if (n != static_cast<ssize_t>(len)) {
    if (error) *error = n < 0 ? errno_text("sendmsg") : "short send";
    return false;
  }
  return true;
}

// One message into `buf`; descriptors appended to *fds. Returns its length
// or -1 (error set), 0 at end of stream.
ssize_t receive_message(int sock, std::vector<uint8_t>& buf, std::vector<int>* fds, std::string* error) {
  iovec iov{buf.data(), buf.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kFdsPerMessage));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && (errno == EINTR || would_block_wait(sock, POLLIN)));
  if (n < 0) {
    if (error) *error = errno_text("recvmsg");
    return -1;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (fds)
        fds->push_back(fd);
      else
        ::close(fd);
    }
  }
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    if (error) *error = "message or descriptors truncated";
    return -1;
  }
  return n;
}

}  // namespace

bool send_state(int sock, const std::vector<uint8_t>& bytes, const std::vector<int>& fds,
                std::chrono::milliseconds timeout, std::string* error, const char* kind) {
  set_timeouts(sock, timeout);
  char header[64];
  int hn = std::snprintf(header, sizeof header, "%.15s %zu %zu", kind, bytes.size(), fds.size());
  if (!send_message(sock, header, static_cast<size_t>(hn), nullptr, 0, error)) return false;
  for (size_t i = 0; i < fds.size(); i += kFdsPerMessage) {
    size_t n = std::min(kFdsPerMessage, fds.size() - i);
    const char tag = 'F';
    if (!send_message(sock, &tag, 1, fds.data() + i, n, error)) return false;
  }
  for (size_t i = 0; i < bytes.size(); i += kChunk) {
    size_t n = std::min(kChunk, bytes.size() - i);
    if (!send_message(sock, bytes.data() + i, n, nullptr, 0, error)) return false;
  }
  return true;
}

std::optional<Received> receive_state(int sock, std::chrono::milliseconds timeout, std::string* error) {
  set_timeouts(sock, timeout);
  Received r;
  auto fail = [&](std::string why) -> std::optional<Received> {
    for (int fd : r.fds) ::close(fd);
    if (error) *error = std::move(why);
    return std::nullopt;
  };
  std::vector<uint8_t> buf(kChunk);
  std::string err;
  ssize_t n = receive_message(sock, buf, nullptr, &err);
  if (n <= 0) return fail(n == 0 ? "channel closed before the state" : err);
  size_t nbytes = 0, nfds = 0;
  std::string header(reinterpret_cast<char*>(buf.data()), static_cast<size_t>(n));
  if (header == "DONE") {
    r.kind = header;
    return r;
  }
  char kind[16] = {};
  if (std::sscanf(header.c_str(), "%15s %zu %zu", kind, &nbytes, &nfds) != 3) return fail("bad header");
  r.kind = kind;
  if (nbytes > (size_t{1} << 30) || nfds > 1'000'000) return fail("implausible sizes in header");
  while (r.fds.size() < nfds) {
    size_t before = r.fds.size();
    n = receive_message(sock, buf, &r.fds, &err);
    if (n <= 0) return fail(n == 0 ? "channel closed in the descriptors" : err);
    if (r.fds.size() == before) return fail("descriptor message without descriptors");
  }
  if (r.fds.size() != nfds) return fail("more descriptors than announced");
  r.bytes.reserve(nbytes);
  while (r.bytes.size() < nbytes) {
    n = receive_message(sock, buf, &r.fds, &err);
    if (n <= 0) return fail(n == 0 ? "channel closed in the state" : err);
    if (r.fds.size() != nfds) return fail("descriptors in a state chunk");
    r.bytes.insert(r.bytes.end(), buf.begin(), buf.begin() + n);
  }
  if (r.bytes.size() != nbytes) return fail("more state bytes than announced");
  return r;
}

bool send_line(int sock, const std::string& line, std::chrono::milliseconds timeout) {
  set_timeouts(sock, timeout);
  return send_message(sock, line.data(), line.size(), nullptr, 0, nullptr);
}

std::optional<std::string> receive_line(int sock, std::chrono::milliseconds timeout) {
  set_timeouts(sock, timeout);
  std::vector<uint8_t> buf(4096);
  ssize_t n = receive_message(sock, buf, nullptr, nullptr);
  if (n <= 0) return std::nullopt;
  return std::string(reinterpret_cast<char*>(buf.data()), static_cast<size_t>(n));
}

}  // namespace lb::core::handover
