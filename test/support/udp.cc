#include "test/support/udp.h"

#include <arpa/inet.h>

#include <cstring>
#include <set>

#include "test/support/proc_net.h"

namespace lb::test {

UdpSwarm::UdpSwarm(size_t endpoints, const std::string& first_source, size_t per_socket)
    : endpoints_(endpoints), per_socket_(per_socket) {
  in_addr a{};
  ok_ = inet_pton(AF_INET, first_source.c_str(), &a) == 1 && per_socket > 0;
  first_ = ntohl(a.s_addr);
  size_t n = ok_ ? (endpoints + per_socket - 1) / per_socket : 0;
  for (size_t k = 0; k < n && ok_; ++k) {
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1, big = 4 << 20;
    sockaddr_in any{};
    any.sin_family = AF_INET;
    ok_ = fd >= 0 && ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one) == 0 &&
          ::bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof any) == 0;
    if (fd >= 0) {
      ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
      ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
      fds_.push_back(fd);
    }
  }
}

UdpSwarm::~UdpSwarm() {
  for (int fd : fds_) ::close(fd);
}

bool UdpSwarm::send(size_t i, uint16_t port, const std::string& data) {
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  iovec iov{const_cast<char*>(data.data()), data.size()};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(in_pktinfo))] = {};
  msghdr m{};
  m.msg_name = &to;
  m.msg_namelen = sizeof to;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof cbuf;
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = IPPROTO_IP;
  c->cmsg_type = IP_PKTINFO;
  c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
  in_pktinfo pi{};
  pi.ipi_spec_dst.s_addr = htonl(first_ + static_cast<uint32_t>(i % per_socket_));
  std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
  for (int tries = 0; tries < 1000; ++tries) {
    if (::sendmsg(fds_[i / per_socket_], &m, 0) == static_cast<ssize_t>(data.size())) return true;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
    pollfd p{fds_[i / per_socket_], POLLOUT, 0};
    ::poll(&p, 1, 10);
  }
  return false;
}

std::vector<UdpSwarm::Reply> UdpSwarm::receive(size_t want, Deadline deadline) {
  std::vector<Reply> out;
  std::vector<pollfd> p(fds_.size());
  std::string buf(70000, '\0');
  while (out.size() < want) {
    for (size_t k = 0; k < fds_.size(); ++k) p[k] = pollfd{fds_[k], POLLIN, 0};
    if (::poll(p.data(), p.size(), poll_timeout_ms(deadline)) <= 0) break;
    for (size_t k = 0; k < fds_.size(); ++k) {
      if (!(p[k].revents & POLLIN)) continue;
      for (;;) {
        iovec iov{buf.data(), buf.size()};
        alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(in_pktinfo))];
        msghdr m{};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = cbuf;
        m.msg_controllen = sizeof cbuf;
        ssize_t n = ::recvmsg(fds_[k], &m, MSG_DONTWAIT);
        if (n < 0) break;
        for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
          if (c->cmsg_level != IPPROTO_IP || c->cmsg_type != IP_PKTINFO) continue;
          in_pktinfo pi;
          std::memcpy(&pi, CMSG_DATA(c), sizeof pi);
          uint32_t off = ntohl(pi.ipi_addr.s_addr) - first_;
          if (off < per_socket_)
            out.push_back(Reply{k * per_socket_ + off, buf.substr(0, static_cast<size_t>(n))});
        }
      }
    }
  }
  return out;
}

uint64_t udp_drops(pid_t pid) {
  const std::set<std::string> held = socket_inodes(pid);
  uint64_t drops = 0;
  for (const auto& r : proc_net_rows("udp"))
    if (held.count(r.inode)) drops += r.drops;
  return drops;
}

}  // namespace lb::test
