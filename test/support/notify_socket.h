// The receiving end of NOTIFY_SOCKET for tests of lb's systemd side: an
// AF_UNIX datagram socket bound in a private directory, keeping every
// datagram (and the descriptors passed with it: the emulated descriptor
// store) in order.
// Thread rules: one test thread.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "test/support/deadline.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"

namespace lb::test {

std::vector<std::string> split_lines(const std::string& s);
// Whether the notify datagram has the line `line` (e.g. "READY=1").
bool has_line(const std::string& datagram, const std::string& line);

class NotifySocket {
 public:
  struct Message {
    Clock::time_point at;
    std::string text;
    std::vector<int> fds;  // passed with it (SCM_RIGHTS); owned by the NotifySocket
  };
  ~NotifySocket() {
    for (auto& m : messages_)
      for (int fd : m.fds) ::close(fd);
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  NotifySocket() {
    if (dir_.path().empty()) return;
    path_ = dir_.path() + "/notify.sock";
    sockaddr_un addr{};
    if (path_.size() >= sizeof addr.sun_path) return;
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    Socket s(fd);
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return;
    sock_ = std::move(s);
  }

  bool ok() const { return sock_.valid(); }
  const std::string& path() const { return path_; }
  const std::vector<Message>& messages() const { return messages_; }

  // Receives one datagram (kept in messages()); std::nullopt at the deadline.
  std::optional<std::string> receive(Deadline deadline) {
    pollfd p{sock_.fd(), POLLIN, 0};
    for (;;) {
      int rc = ::poll(&p, 1, poll_timeout_ms(deadline));
      if (rc < 0 && errno == EINTR) continue;
      if (rc <= 0) return std::nullopt;
      char buf[4096];
      iovec iov{buf, sizeof buf};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(sock_.fd(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        return std::nullopt;
      }
      Message m{Clock::now(), std::string(buf, static_cast<size_t>(n)), {}};
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          m.fds.push_back(fd);
        }
      }
      messages_.push_back(std::move(m));
      return messages_.back().text;
    }
  }

  // Receives until a datagram contains the line `line`; returns it.
  std::optional<std::string> wait_for(const std::string& line, Deadline deadline) {
    while (auto m = receive(deadline))
      if (has_line(*m, line)) return m;
    return std::nullopt;
  }

 private:
  TempDir dir_;
  std::string path_;
  Socket sock_;
  std::vector<Message> messages_;
};

}  // namespace lb::test
