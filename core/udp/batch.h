// Staging for UDP datagrams that do not leave the moment they arrive.
//
//  * PendingQueue: copies of datagrams a socket refused (EAGAIN), in order,
//    bounded in bytes (UDP has no backpressure: past the bound the datagram
//    is dropped, as the kernel would have). Each copy keeps its destination
//    and, towards a backend, the index of the local source address to send
//    it from, because one upstream socket carries many sessions.
//  * ReplyBatch: replies received straight into slots of the worker's UDP
//    buffer, waiting for one sendmmsg on the listener socket. A reply is
//    never copied unless that socket is full.
// Thread: one worker's loop.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace lb::core::udp {

inline socklen_t addr_len(const sockaddr_storage& a) {
  return a.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}

// Bytes one socket may have queued before further datagrams are dropped.
constexpr size_t kMaxQueuedBytes = 1024 * 1024;

// A datagram its socket could not take at once; the bytes follow the header
// in the same allocation.
struct Pending {
  Pending* next = nullptr;
  sockaddr_storage to;
  uint32_t source = 0;  // upstream: index of the local source address
  size_t len = 0;
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

class PendingQueue {
 public:
  PendingQueue() = default;
  PendingQueue(const PendingQueue&) = delete;
  PendingQueue& operator=(const PendingQueue&) = delete;
  ~PendingQueue() {
    while (head_) pop();
  }
  bool empty() const { return head_ == nullptr; }
  size_t bytes() const { return bytes_; }
  Pending* front() { return head_; }
  // Copies prefix + data; false (dropped) past the bound or out of memory.
  bool push(const sockaddr_storage& to, uint32_t source, const void* prefix, size_t prefix_len,
            const void* data, size_t len) {
    size_t total = prefix_len + len;
    if (bytes_ + total > kMaxQueuedBytes) return false;
    auto* p = static_cast<Pending*>(std::malloc(sizeof(Pending) + total));
    if (!p) return false;
    p->next = nullptr;
    std::memcpy(&p->to, &to, addr_len(to));
    p->source = source;
    p->len = total;
    if (prefix_len) std::memcpy(p->data(), prefix, prefix_len);
    std::memcpy(p->data() + prefix_len, data, len);
    *tail_ = p;
    tail_ = &p->next;
    bytes_ += total;
    return true;
  }
  void pop() {
    Pending* p = head_;
    head_ = p->next;
    if (!head_) tail_ = &head_;
    bytes_ -= p->len;
    std::free(p);
  }

 private:
  Pending* head_ = nullptr;
  Pending** tail_ = &head_;
  size_t bytes_ = 0;
};

// Replies waiting for the next sendmmsg on the listener socket. Reply i was
// received into slot `slots - ...` of the worker's UDP buffer and is sent
// from there. The addresses are values, so a session may end while its last
// reply is still staged. The worker's buffer is free again once the callback
// that staged them returns: every path that stages ends in a flush.
template <size_t N>
struct ReplyBatch {
  size_t count = 0;  // staged replies
  size_t slots = 0;  // slots [0, slots) of the worker's buffer hold received replies
  sockaddr_storage to[N];
  iovec iov[N];
  mmsghdr msgs[N];

  bool full() const { return slots == N; }
  void stage(const sockaddr_storage& dest, char* data, size_t len) {
    size_t i = count++;
    iov[i].iov_base = data;
    iov[i].iov_len = len;
    std::memcpy(&to[i], &dest, addr_len(dest));
  }
  // Fills msgs[0, count) for sendmmsg.
  void prepare() {
    for (size_t i = 0; i < count; ++i) {
      msghdr& m = msgs[i].msg_hdr;
      std::memset(&m, 0, sizeof m);
      m.msg_name = &to[i];
      m.msg_namelen = addr_len(to[i]);
      m.msg_iov = &iov[i];
      m.msg_iovlen = 1;
    }
  }
  void clear() {
    count = 0;
    slots = 0;
  }
  // Sends the staged replies from `fd` in one sendmmsg (more only when the
  // kernel takes part of them); copies what it refuses into `overflow`, or
  // everything when `overflow` already holds datagrams (order). True when
  // `overflow` is not empty afterwards (watch fd for writability).
  bool send(int fd, PendingQueue& overflow) {
    size_t sent = 0;
    if (overflow.empty()) {
      prepare();
      while (sent < count) {
        int r = ::sendmmsg(fd, msgs + sent, static_cast<unsigned>(count - sent), MSG_DONTWAIT);
        if (r > 0) {
          sent += static_cast<size_t>(r);
          continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r == 0 || errno == EAGAIN || errno == EWOULDBLOCK) break;
        // This datagram cannot be sent at all (sendmmsg reports the first
        // failure; the ones before it went): drop it, go on with the rest.
        ++sent;
      }
    }
    for (; sent < count; ++sent)
      overflow.push(to[sent], 0, nullptr, 0, iov[sent].iov_base, iov[sent].iov_len);
    clear();
    return !overflow.empty();
  }
};

// Sends what `q` holds from `fd`, each to its own address; true once the
// queue is empty (stop watching for writability).
inline bool send_queued(int fd, PendingQueue& q) {
  while (!q.empty()) {
    Pending* p = q.front();
    ssize_t r = ::sendto(fd, p->data(), p->len, MSG_DONTWAIT, reinterpret_cast<const sockaddr*>(&p->to),
                         addr_len(p->to));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    q.pop();  // sent, or failed for good: dropped
  }
  return true;
}

}  // namespace lb::core::udp
