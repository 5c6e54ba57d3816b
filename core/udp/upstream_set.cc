#include "core/udp/upstream_set.h"

#include <linux/errqueue.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/descriptors.h"
#include "core/hash/hash.h"

namespace lb::core::udp {

namespace {
// Ready sockets taken per epoll_wait.
constexpr int kReadyBatch = 64;
// Room for one PKTINFO control message (IPv6 is the larger).
constexpr size_t kCmsgSpace = CMSG_SPACE(sizeof(in6_pktinfo));
// Room for an error-queue read: the extended error, its offender address and PKTINFO.
constexpr size_t kErrCmsgSpace = 256;
constexpr int kMaxBatch = 64;
// Receive buffer asked for on each upstream socket: with udp_source one
// socket carries the replies of up to one session per source address and
// backend, so it needs the room of many connected sockets. Memory is only
// used while replies wait; the kernel caps it at net.core.rmem_max.
constexpr int kUpstreamRcvBuf = 4 * 1024 * 1024;
bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK; }
// Errors a send reports when it merely picked up an earlier ICMP error of
// the shared socket (sk_err): the datagram itself was not sent, try again.
bool stale_icmp_error(int e) {
  return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN || e == EPROTO;
}
}  // namespace

// The addresses of `udp_source` (CIDRs expanded), at most `limit`.
std::vector<sockaddr_storage> expand_sources(const std::vector<conf::Cidr>& cidrs, size_t limit) {
  std::vector<sockaddr_storage> out;
  for (const conf::Cidr& c : cidrs) {
    const int bits = c.family == AF_INET6 ? 128 : 32;
    const int host_bits = bits - c.prefix_len;
    const uint64_t count = host_bits >= 20 ? (uint64_t{1} << 20) : (uint64_t{1} << host_bits);
    for (uint64_t i = 0; i < count && out.size() < limit; ++i) {
      sockaddr_storage a{};
      uint8_t bytes[16];
      std::memcpy(bytes, c.bytes, 16);
      // Add i to the address (host bits are zero, so no carry out of them).
      uint64_t add = i;
      for (int b = (bits / 8) - 1; b >= 0 && add; --b) {
        uint64_t sum = bytes[b] + (add & 0xff);
        bytes[b] = static_cast<uint8_t>(sum);
        add = (add >> 8) + (sum >> 8);
      }
      a.ss_family = static_cast<sa_family_t>(c.family);
      if (c.family == AF_INET6)
        std::memcpy(&reinterpret_cast<sockaddr_in6&>(a).sin6_addr, bytes, 16);
      else
        std::memcpy(&reinterpret_cast<sockaddr_in&>(a).sin_addr, bytes, 4);
      out.push_back(a);
    }
  }
  return out;
}

struct UpstreamSet::Sock {
  int fd = -1;
  uint32_t routes = 0;  // live routes on this socket
  bool idle = false;    // no route at the last trim
  bool watch_writable = false;
  std::unique_ptr<PendingQueue> queue;  // allocated on the first EAGAIN
};

// Routes towards one backend address: slots [0, next) have been handed out,
// `free` holds those given back. Erased when its last route is released.
struct UpstreamSet::Lane {
  uint32_t live = 0;
  uint32_t next = 0;
  std::vector<uint32_t> free;
};

size_t UpstreamSet::RouteHash::operator()(const RouteKey& k) const {
  return static_cast<size_t>(hash::xxh64(&k, sizeof k, seed));
}

UpstreamSet::UpstreamSet(size_t max_sockets, size_t slot_size, const std::vector<sockaddr_storage>& sources)
    : max_sockets_(max_sockets < 1 ? 1 : (max_sockets > 65535 ? 65535 : max_sockets)),
      slot_size_(slot_size),
      lanes_(16, SeededHash{hash::os_random_u64()}),
      demux_(16, RouteHash{hash::os_random_u64()}) {
  for (const auto& s : sources)
    if (s.ss_family == AF_INET || s.ss_family == AF_INET6) sources_[fam(s.ss_family)].push_back(s);
  static_assert(sizeof(RouteKey) == 24, "RouteKey has no padding (it is hashed as bytes)");
}

UpstreamSet::~UpstreamSet() {
  for (auto& v : socks_)
    for (Sock& s : v)
      if (s.fd >= 0) ::close(s.fd);
  if (epfd_ >= 0) ::close(epfd_);
}

int UpstreamSet::init() {
  epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
  return epfd_ < 0 ? -errno : 0;
}

size_t UpstreamSet::capacity(int family) const {
  size_t s = sources_[fam(family)].size();
  return max_sockets_ * (s ? s : 1);
}

int UpstreamSet::open_socket(int f, uint16_t index) {
  const int family = f ? AF_INET6 : AF_INET;
  int fd = ::socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (descriptors::in_accept_floor(fd)) {
    ::close(fd);  // the last descriptors are accept()'s (core/descriptors.h)
    return -EMFILE;
  }
  int one = 1;
  int rc = 0;
  // ICMP errors of an unconnected socket only arrive with RECVERR; PKTINFO
  // tells which local address a reply was sent to (needed only when there
  // is a choice of source addresses).
  if (f == 0) {
    rc = ::setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof one);
    if (rc == 0 && !sources_[f].empty()) rc = ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
  } else {
    rc = ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (rc == 0) rc = ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof one);
    if (rc == 0 && !sources_[f].empty())
      rc = ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
  }
  if (rc == 0)
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kUpstreamRcvBuf, sizeof kUpstreamRcvBuf);  // best effort
  sockaddr_storage any{};
  any.ss_family = static_cast<sa_family_t>(family);
  if (rc == 0) rc = ::bind(fd, reinterpret_cast<sockaddr*>(&any), addr_len(any));
  if (rc == 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = (static_cast<uint64_t>(f) << 32) | index;
    rc = ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  }
  if (rc != 0) {
    int err = -errno;
    ::close(fd);
    return err;
  }
  socks_[f][index].fd = fd;
  ++open_;
  return 0;
}

int UpstreamSet::acquire(const sockaddr_storage& backend, void* owner, Route* out) {
  const int f = fam(backend.ss_family);
  const size_t nsrc = sources_[f].empty() ? 1 : sources_[f].size();
  PeerKey key = PeerKey::from(backend);
  Lane& lane = lanes_[key];
  uint32_t slot;
  bool reused = !lane.free.empty();
  if (reused) {
    slot = lane.free.back();
  } else {
    if (lane.next >= max_sockets_ * nsrc) {
      if (lane.live == 0) lanes_.erase(key);
      return -EADDRNOTAVAIL;
    }
    slot = lane.next;
  }
  auto sock = static_cast<uint16_t>(slot / nsrc);
  if (socks_[f].size() <= sock) socks_[f].resize(sock + 1u);
  if (socks_[f][sock].fd < 0) {
    if (int rc = open_socket(f, sock); rc != 0) {
      if (lane.live == 0) lanes_.erase(key);
      return rc;
    }
  }
  if (reused)
    lane.free.pop_back();
  else
    ++lane.next;
  ++lane.live;
  ++socks_[f][sock].routes;
  socks_[f][sock].idle = false;
  out->slot = slot;
  out->sock = sock;
  out->source = static_cast<uint16_t>(slot % nsrc);
  demux_.insert(RouteKey{key, out->sock, out->source}, owner);
  return 0;
}

void UpstreamSet::release(const sockaddr_storage& backend, const Route& r) {
  PeerKey key = PeerKey::from(backend);
  if (demux_.erase(RouteKey{key, r.sock, r.source})) --socks_[fam(backend.ss_family)][r.sock].routes;
  auto it = lanes_.find(key);
  if (it == lanes_.end()) return;
  Lane& lane = it->second;
  if (--lane.live == 0) {
    lanes_.erase(it);  // the lane's memory goes with its last route
    return;
  }
  if (r.slot + 1 == lane.next)
    --lane.next;
  else
    lane.free.push_back(r.slot);
}

namespace {

// One control message holding `value`, at `buf`; its space.
template <class T>
size_t put_cmsg(char* buf, int level, int type, const T& value) {
  auto* c = reinterpret_cast<cmsghdr*>(buf);
  c->cmsg_level = level;
  c->cmsg_type = type;
  c->cmsg_len = CMSG_LEN(sizeof(T));
  std::memcpy(CMSG_DATA(c), &value, sizeof value);
  return CMSG_SPACE(sizeof(T));
}

}  // namespace

size_t UpstreamSet::source_cmsg(int f, uint32_t source, char* buf) const {
  if (sources_[f].empty()) return 0;
  std::memset(buf, 0, kCmsgSpace);
  const sockaddr_storage& src = sources_[f][source];
  if (f == 0) {
    in_pktinfo pi{};
    pi.ipi_spec_dst = reinterpret_cast<const sockaddr_in&>(src).sin_addr;
    return put_cmsg(buf, IPPROTO_IP, IP_PKTINFO, pi);
  }
  in6_pktinfo pi{};
  pi.ipi6_addr = reinterpret_cast<const sockaddr_in6&>(src).sin6_addr;
  return put_cmsg(buf, IPPROTO_IPV6, IPV6_PKTINFO, pi);
}

int UpstreamSet::source_of(int f, const msghdr& m) const {
  const auto& srcs = sources_[f];
  if (srcs.empty()) return 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(const_cast<msghdr*>(&m), c)) {
    if (f == 0 && c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo pi;
      std::memcpy(&pi, CMSG_DATA(c), sizeof pi);
      for (size_t i = 0; i < srcs.size(); ++i)
        if (reinterpret_cast<const sockaddr_in&>(srcs[i]).sin_addr.s_addr == pi.ipi_addr.s_addr)
          return static_cast<int>(i);
    } else if (f == 1 && c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      in6_pktinfo pi;
      std::memcpy(&pi, CMSG_DATA(c), sizeof pi);
      for (size_t i = 0; i < srcs.size(); ++i)
        if (std::memcmp(&reinterpret_cast<const sockaddr_in6&>(srcs[i]).sin6_addr, &pi.ipi6_addr, 16) == 0)
          return static_cast<int>(i);
    }
  }
  return -1;
}

void UpstreamSet::send(const Route& r, const sockaddr_storage& backend, const void* prefix, size_t prefix_len,
                       const iovec* data, unsigned n, bool* taken) {
  const int f = fam(backend.ss_family);
  Sock& s = socks_[f][r.sock];
  alignas(cmsghdr) char cmsg[kCmsgSpace];
  const size_t cmsg_len = source_cmsg(f, r.source, cmsg);
  unsigned done = 0;
  if (!s.queue || s.queue->empty()) {
    mmsghdr msgs[kMaxBatch];
    iovec iov[kMaxBatch][2];
    int stale_retries = 2;
    while (done < n) {
      unsigned batch = n - done < static_cast<unsigned>(kMaxBatch) ? n - done : kMaxBatch;
      for (unsigned k = 0; k < batch; ++k) {
        iov[k][0].iov_base = const_cast<void*>(prefix);
        iov[k][0].iov_len = prefix_len;
        iov[k][1] = data[done + k];
        msghdr& m = msgs[k].msg_hdr;
        std::memset(&m, 0, sizeof m);
        m.msg_name = const_cast<sockaddr_storage*>(&backend);
        m.msg_namelen = addr_len(backend);
        m.msg_iov = prefix_len ? iov[k] : iov[k] + 1;
        m.msg_iovlen = prefix_len ? 2 : 1;
        if (cmsg_len) {
          m.msg_control = cmsg;
          m.msg_controllen = cmsg_len;
        }
      }
      int sent = ::sendmmsg(s.fd, msgs, batch, MSG_DONTWAIT);
      if (sent > 0) {
        for (int k = 0; k < sent; ++k) taken[done + k] = true;
        done += static_cast<unsigned>(sent);
        continue;
      }
      if (sent < 0 && errno == EINTR) continue;
      if (sent == 0 || would_block(errno)) break;
      if (stale_icmp_error(errno) && stale_retries-- > 0) continue;  // that error is consumed now
      taken[done++] = false;                                         // fails for good: this one is dropped
    }
  }
  // The socket is full (or already has a queue): keep copies, bounded.
  bool queued = false;
  for (unsigned k = done; k < n; ++k) {
    if (!s.queue) s.queue = std::make_unique<PendingQueue>();
    taken[k] = s.queue->push(backend, r.source, prefix, prefix_len, data[k].iov_base, data[k].iov_len);
    queued |= taken[k];
  }
  if (queued) watch(f, r.sock, true);
}

void UpstreamSet::flush_queue(int f, uint16_t index) {
  Sock& s = socks_[f][index];
  alignas(cmsghdr) char cmsg[kCmsgSpace];
  int stale_retries = 2;
  while (s.queue && !s.queue->empty()) {
    Pending* p = s.queue->front();
    iovec iov{p->data(), p->len};
    msghdr m{};
    m.msg_name = &p->to;
    m.msg_namelen = addr_len(p->to);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (size_t len = source_cmsg(f, p->source, cmsg)) {
      m.msg_control = cmsg;
      m.msg_controllen = len;
    }
    ssize_t r = ::sendmsg(s.fd, &m, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && would_block(errno)) return;
    if (r < 0 && stale_icmp_error(errno) && stale_retries-- > 0) continue;
    s.queue->pop();  // sent, or failed for good: dropped like an unqueued one
  }
  s.queue.reset();
  watch(f, index, false);
}

void UpstreamSet::watch(int f, uint16_t index, bool writable) {
  Sock& s = socks_[f][index];
  if (s.watch_writable == writable) return;
  epoll_event ev{};
  ev.events = EPOLLIN | (writable ? EPOLLOUT : 0u);
  ev.data.u64 = (static_cast<uint64_t>(f) << 32) | index;
  if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, s.fd, &ev) == 0) s.watch_writable = writable;
}

void UpstreamSet::trim() {
  for (auto& v : socks_) {
    for (Sock& s : v) {
      if (s.fd < 0 || s.routes > 0 || (s.queue && !s.queue->empty())) {
        s.idle = false;
        continue;
      }
      if (!s.idle) {
        s.idle = true;  // closed at the next trim if still unused
        continue;
      }
      ::close(s.fd);  // also leaves the epoll set (never duplicated)
      s = Sock();
      --open_;
    }
    while (!v.empty() && v.back().fd < 0) v.pop_back();
  }
}

void UpstreamSet::poll(Handler& h) {
  epoll_event ready[kReadyBatch];
  int n = ::epoll_wait(epfd_, ready, kReadyBatch, 0);
  for (int i = 0; i < n; ++i) {
    int f = static_cast<int>(ready[i].data.u64 >> 32);
    auto index = static_cast<uint16_t>(ready[i].data.u64 & 0xffff);
    on_ready(f, index, ready[i].events, h);
  }
}

void UpstreamSet::on_ready(int f, uint16_t index, uint32_t events, Handler& h) {
  if (events & EPOLLOUT) flush_queue(f, index);
  if (events & EPOLLERR) read_errors(f, index, h);
  if (events & EPOLLIN) read(f, index, h);
}

void UpstreamSet::read(int f, uint16_t index, Handler& h) {
  // One recvmmsg, straight into the handler's free reply slots (the replies
  // leave from there); level-triggered epoll reports the socket again if
  // more is queued.
  unsigned room = 0;
  char* first = h.reply_slots(&room);
  if (room > static_cast<unsigned>(kMaxBatch)) room = kMaxBatch;
  mmsghdr msgs[kMaxBatch];
  iovec iov[kMaxBatch];
  sockaddr_storage from[kMaxBatch];
  const bool want_cmsg = !sources_[f].empty();
  alignas(cmsghdr) char cmsg[kMaxBatch][kCmsgSpace];
  for (unsigned i = 0; i < room; ++i) {
    iov[i].iov_base = first + i * slot_size_;
    iov[i].iov_len = slot_size_;
    msghdr& m = msgs[i].msg_hdr;
    std::memset(&m, 0, sizeof m);
    m.msg_name = &from[i];
    m.msg_namelen = sizeof from[i];
    m.msg_iov = &iov[i];
    m.msg_iovlen = 1;
    if (want_cmsg) {
      m.msg_control = cmsg[i];
      m.msg_controllen = kCmsgSpace;
    }
  }
  int n = ::recvmmsg(socks_[f][index].fd, msgs, room, MSG_DONTWAIT, nullptr);
  // An error here is a pending ICMP error of the shared socket (it also went
  // to the error queue, where it is matched to its session): nothing to read.
  if (n <= 0) return;
  // Taken, matched or not: a later read must not overwrite a staged reply.
  h.reply_slots_taken(static_cast<unsigned>(n));
  for (int i = 0; i < n; ++i) {
    const msghdr& m = msgs[i].msg_hdr;
    if (m.msg_flags & MSG_TRUNC) continue;  // never forward a truncated datagram
    int source = source_of(f, m);
    if (source < 0) continue;
    // Looked up per datagram: a session that ended on an earlier reply of
    // this batch is no longer in the table, and its later replies drop.
    void** owner = demux_.find(RouteKey{PeerKey::from(from[i]), index, static_cast<uint16_t>(source)});
    if (owner) h.upstream_reply(*owner, static_cast<char*>(iov[i].iov_base), msgs[i].msg_len);
  }
}

void UpstreamSet::read_errors(int f, uint16_t index, Handler& h) {
  const int fd = socks_[f][index].fd;
  for (int budget = 0; budget < kMaxBatch; ++budget) {
    sockaddr_storage to{};
    char payload[1];
    iovec iov{payload, sizeof payload};
    alignas(cmsghdr) char cbuf[kErrCmsgSpace];
    msghdr m{};
    m.msg_name = &to;
    m.msg_namelen = sizeof to;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    if (::recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) break;
    int err = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
      if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) ||
          (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
        sock_extended_err ee;
        std::memcpy(&ee, CMSG_DATA(c), sizeof ee);
        if (ee.ee_origin == SO_EE_ORIGIN_ICMP || ee.ee_origin == SO_EE_ORIGIN_ICMP6)
          err = static_cast<int>(ee.ee_errno);
      }
    }
    if (err == 0) continue;
    // msg_name is the datagram's destination (the backend); PKTINFO the
    // local address it left from.
    int source = source_of(f, m);
    if (source < 0) continue;
    if (void** owner = demux_.find(RouteKey{PeerKey::from(to), index, static_cast<uint16_t>(source)}))
      h.upstream_error(*owner, err);
  }
  // The same error also sits in the socket's pending error: take it, so a
  // later send does not fail with it.
  int soerr = 0;
  socklen_t len = sizeof soerr;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
}

}  // namespace lb::core::udp
