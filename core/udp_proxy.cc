#include "core/udp_proxy.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/access_log.h"
#include "core/hash/hash.h"
#include "core/log.h"
#include "core/proxy_protocol.h"

namespace lb::core {

namespace {
// Bytes a socket may have queued (it said EAGAIN) before further datagrams
// are dropped (UDP has no backpressure; the kernel would drop them too).
constexpr size_t kMaxQueuedBytes = 1024 * 1024;
// A PROXY v2 header with IPv6 addresses and no TLVs.
constexpr size_t kProxyV2Max = 16 + 36;
// recvmmsg slots in the worker's UDP buffer: one largest datagram each.
constexpr size_t kSlot = Worker::kUdpBufferSize / Worker::kUdpBatch;
static_assert(kSlot >= 65535, "a slot holds any UDP datagram");
// Replies staged for one sendmmsg: one per slot of the worker's UDP buffer,
// which they are received into.
constexpr size_t kReplyEntries = Worker::kUdpBatch;
// Receive buffer asked for on the listener socket.
constexpr size_t kListenerRcvBuf = 4 * 1024 * 1024;
// Ready sessions taken per epoll_wait of the listener's session set.
constexpr int kReadyBatch = 64;

socklen_t addr_len(const sockaddr_storage& a) {
  return a.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}
bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK; }
}  // namespace

bool UdpPeerKey::operator==(const UdpPeerKey& o) const {
  return family == o.family && port == o.port && std::memcmp(addr, o.addr, sizeof addr) == 0;
}

UdpPeerKey UdpPeerKey::from(const sockaddr* sa) {
  UdpPeerKey k;
  k.family = sa->sa_family;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    k.port = in->sin_port;
    std::memcpy(k.addr, &in->sin_addr, 4);
  } else if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    k.port = in6->sin6_port;
    std::memcpy(k.addr, &in6->sin6_addr, 16);
  }
  return k;
}

size_t UdpPeerKeyHash::operator()(const UdpPeerKey& k) const {
  return static_cast<size_t>(hash::xxh64(&k, sizeof k, seed));
}

// A datagram its socket could not take at once; the bytes follow the header
// in the same allocation.
struct UdpListener::Pending {
  Pending* next = nullptr;
  sockaddr_storage to;   // the client (listener socket); unused upstream
  size_t len = 0;
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

// FIFO of Pending copies for one socket, bounded by kMaxQueuedBytes. While
// it is not empty new datagrams go behind it, so order is kept.
struct UdpListener::PendingQueue {
  Pending* head = nullptr;
  Pending** tail = &head;
  size_t bytes = 0;

  PendingQueue() = default;
  PendingQueue(const PendingQueue&) = delete;
  PendingQueue& operator=(const PendingQueue&) = delete;
  ~PendingQueue() {
    while (head) pop();
  }
  bool empty() const { return head == nullptr; }
  // Copies prefix + data; false (dropped) past the bound or out of memory.
  bool push(const sockaddr_storage* to, const uint8_t* prefix, size_t prefix_len, const char* data,
            size_t len) {
    size_t total = prefix_len + len;
    if (bytes + total > kMaxQueuedBytes) return false;
    auto* p = static_cast<Pending*>(std::malloc(sizeof(Pending) + total));
    if (!p) return false;
    p->next = nullptr;
    if (to) std::memcpy(&p->to, to, addr_len(*to));
    p->len = total;
    if (prefix_len) std::memcpy(p->data(), prefix, prefix_len);
    std::memcpy(p->data() + prefix_len, data, len);
    *tail = p;
    tail = &p->next;
    bytes += total;
    return true;
  }
  void pop() {
    Pending* p = head;
    head = p->next;
    if (!head) tail = &head;
    bytes -= p->len;
    std::free(p);
  }
};

// Replies waiting for the next sendmmsg on the listener socket. Reply i was
// received straight into slot i of the worker's UDP buffer and is sent from
// there, so a reply is never copied on its way unless the listener socket is
// full. The addresses are values, so a session may end (and be freed) while
// its last reply is still staged. The worker's buffer is free again once the
// callback that staged them returns: every path that stages ends in
// flush_replies(), so listeners of one worker can share it.
struct UdpListener::ReplyBatch {
  size_t count = 0;   // staged replies
  size_t slots = 0;   // slots [0, slots) of the worker's buffer hold received replies
  sockaddr_storage to[kReplyEntries];
  iovec iov[kReplyEntries];
  mmsghdr msgs[kReplyEntries];
};

struct UdpListener::Session {
  TimeoutNode timeout;
  UdpListener* owner = nullptr;
  // The listener settings the session started with: its admission counters
  // are given back to these stats even if a reload renamed the listener.
  ListenerRuntimePtr runtime;
  UdpPeerKey key;
  sockaddr_storage client{};
  BackendPtr backend;
  int fd = -1;                  // connected upstream socket, in owner->epfd_
  bool watch_writable = false;  // registered for EPOLLOUT (queue not empty)
  PendingQueue queue;           // datagrams to the backend waiting for fd
  uint64_t table_version = 0;   // worker table the backend was last checked against
  uint64_t outstanding = 0;     // replies still expected (udp_responses > 0)
  uint64_t started_ms = 0;
  uint64_t bytes_to_backend = 0;
  uint64_t bytes_to_client = 0;
  bool holds_source = false;    // counted in the listener's per-source table
  uint8_t proxy_len = 0;        // PROXY v2 header for every datagram (0: none)
  uint8_t proxy_header[kProxyV2Max];
};

UdpListener::UdpListener(Worker& worker, std::string key, ListenerRuntimePtr runtime)
    : worker_(worker), key_(std::move(key)), runtime_(std::move(runtime)),
      client_queue_(std::make_unique<PendingQueue>()) {
  worker_.udp_listener_added(this);
}

UdpListener::~UdpListener() { worker_.udp_listener_removed(this); }

int UdpListener::open(int fd) {
  fd_ = fd;
  int rc = 0;
  // A burst of queries must not be lost to the 208 KiB default receive
  // buffer while the worker is busy. Best effort: the kernel caps the size
  // at net.core.rmem_max, and memory is used only while datagrams wait.
  int rcvbuf = static_cast<int>(kListenerRcvBuf);
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  socklen_t len = sizeof local_addr_;
  if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&local_addr_), &len) != 0) rc = -errno;
  if (rc == 0) {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) rc = -errno;
  }
  // Two handles for the loop: the listener socket itself, and the epoll set
  // of every session's upstream socket (readable when any of them is).
  auto watch = [this](uv_poll_t** slot, int watched, uv_poll_cb cb) {
    auto* h = new uv_poll_t;
    int r = uv_poll_init(worker_.loop(), h, watched);   // also makes it non-blocking
    if (r != 0) {
      delete h;
      return r;
    }
    h->data = this;
    *slot = h;
    return uv_poll_start(h, UV_READABLE, cb);
  };
  if (rc == 0) rc = watch(&poll_, fd_, on_listener_io);
  if (rc == 0) rc = watch(&sessions_poll_, epfd_, on_upstream_io);
  if (rc != 0) {
    retired_ = true;
    close_socket();
    return rc;
  }
  return 0;
}

void UdpListener::on_listener_io(uv_poll_t* h, int status, int events) {
  auto* self = static_cast<UdpListener*>(h->data);
  if (status < 0) {
    // libuv stops the handle on POLLERR. Take (and so clear) the pending
    // socket error, then watch again.
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(self->fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    log::debug("udp receive error listener={} error={}", self->runtime_->cfg.name,
               uv_strerror(err ? -err : status));
    self->watch_listener(self->listener_writable_, true);
    return;
  }
  if (events & UV_WRITABLE) self->flush_client_queue();
  if (events & UV_READABLE) self->receive_batch();
}

void UdpListener::receive_batch() {
  // One recvmmsg per readable event: if more is queued, level-triggered
  // epoll reports the socket again on the next iteration, so there is no
  // extra call just to learn EAGAIN.
  constexpr unsigned kBatch = Worker::kUdpBatch;
  mmsghdr msgs[kBatch];
  iovec iov[kBatch];
  sockaddr_storage from[kBatch];
  char* buf = worker_.udp_buffer();
  for (unsigned i = 0; i < kBatch; ++i) {
    iov[i].iov_base = buf + i * kSlot;
    iov[i].iov_len = kSlot;
    std::memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
    msgs[i].msg_hdr.msg_name = &from[i];
    msgs[i].msg_hdr.msg_namelen = sizeof from[i];
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int n = ::recvmmsg(fd_, msgs, kBatch, MSG_DONTWAIT, nullptr);
  if (n < 0) {
    if (!would_block(errno) && errno != EINTR)
      log::debug("udp receive error listener={} error={}", runtime_->cfg.name, uv_strerror(-errno));
    return;
  }
  // First a session for every datagram (admission happens here, in arrival
  // order), then one sendmmsg per session for all of its datagrams: a DNS
  // client with several queries in flight costs one syscall per batch, not
  // one per query. Order between clients may change; within one it cannot.
  Session* dest[kBatch];
  for (int i = 0; i < n; ++i) {
    dest[i] = nullptr;
    if (closing_) continue;
    if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
      // Never forward a truncated datagram.
      log::debug("udp datagram truncated listener={}", runtime_->cfg.name);
      continue;
    }
    dest[i] = session_for(reinterpret_cast<const sockaddr*>(&from[i]));
  }
  // Nothing below ends a session, so the pointers in dest stay valid.
  unsigned group[kBatch];
  for (int i = 0; i < n; ++i) {
    Session* s = dest[i];
    if (!s) continue;
    unsigned count = 0;
    for (int j = i; j < n; ++j) {
      if (dest[j] != s) continue;
      group[count++] = static_cast<unsigned>(j);
      dest[j] = nullptr;
    }
    forward(s, buf, msgs, group, count);
  }
}

UdpListener::Session* UdpListener::session_for(const sockaddr* client) {
  bump(runtime_->stats->slot(worker_.index()).datagrams_in);
  UdpPeerKey key = UdpPeerKey::from(client);
  if (Session** found = sessions_.find(key)) {
    Session* s = *found;
    if (still_valid(s)) return s;
    end_session(s, "ok");
  }
  if (retired_) return nullptr;
  return new_session(client, key);
}

void UdpListener::forward(Session* s, char* buf, const mmsghdr* in, const unsigned* idx, unsigned count) {
  // The PROXY v2 header goes as a first iovec: the payload is never copied.
  mmsghdr out[Worker::kUdpBatch];
  iovec iov[Worker::kUdpBatch][2];
  bool taken[Worker::kUdpBatch];   // sent or queued
  for (unsigned k = 0; k < count; ++k) {
    unsigned nv = 0;
    if (s->proxy_len) iov[k][nv++] = iovec{s->proxy_header, s->proxy_len};
    iov[k][nv++] = iovec{buf + idx[k] * kSlot, in[idx[k]].msg_len};
    std::memset(&out[k].msg_hdr, 0, sizeof out[k].msg_hdr);
    out[k].msg_hdr.msg_iov = iov[k];
    out[k].msg_hdr.msg_iovlen = nv;
    taken[k] = false;
  }
  unsigned done = 0;
  if (s->queue.empty()) {
    while (done < count) {
      int r;
      if (count - done == 1 && !s->proxy_len)   // the common single query: plain send()
        r = ::send(s->fd, iov[done][0].iov_base, iov[done][0].iov_len, MSG_DONTWAIT) < 0 ? -1 : 1;
      else
        r = ::sendmmsg(s->fd, out + done, count - done, MSG_DONTWAIT);
      if (r > 0) {
        for (unsigned k = done; k < done + static_cast<unsigned>(r); ++k) taken[k] = true;
        done += static_cast<unsigned>(r);
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r == 0 || would_block(errno)) break;
      ++done;   // fails for good (e.g. a pending ICMP error): this one is dropped
    }
  }
  // The socket is full (or already has a queue): keep copies, bounded.
  bool queued = false;
  for (unsigned k = done; k < count; ++k) {
    taken[k] = s->queue.push(nullptr, s->proxy_header, s->proxy_len, buf + idx[k] * kSlot, in[idx[k]].msg_len);
    queued |= taken[k];
  }
  if (queued) watch_session(s, true);
  bool any = false;
  for (unsigned k = 0; k < count; ++k) {
    if (!taken[k]) continue;
    size_t len = in[idx[k]].msg_len;
    s->bytes_to_backend += len;
    s->backend->bytes_to_backend.fetch_add(len, std::memory_order_relaxed);
    s->outstanding += runtime_->cfg.udp_responses;
    any = true;
  }
  if (any) worker_.timeouts().touch(&s->timeout);
}

bool UdpListener::still_valid(Session* s) {
  uint64_t v = worker_.table_version();
  if (s->table_version == v) return true;
  if (!worker_.is_candidate(runtime_->cfg.pool, s->backend.get())) return false;
  s->table_version = v;
  return true;
}

UdpListener::Session* UdpListener::new_session(const sockaddr* client, const UdpPeerKey& key) {
  auto& slot = runtime_->stats->slot(worker_.index());
  SharedState& shared = worker_.shared();
  ListenerStats& lstats = *runtime_->stats;
  const conf::Listener& cfg = runtime_->cfg;
  if (runtime_->acl.enabled() && !runtime_->acl.permits(client)) {
    bump(slot.rejected_acl);
    return nullptr;
  }
  if (shared.active_connections.fetch_add(1, std::memory_order_relaxed) >=
      static_cast<int64_t>(shared.max_connections.load(std::memory_order_relaxed))) {
    shared.active_connections.fetch_sub(1, std::memory_order_relaxed);
    bump(slot.rejected_limit);
    return nullptr;
  }
  if (!lstats.try_open(cfg.max_connections)) {
    shared.active_connections.fetch_sub(1, std::memory_order_relaxed);
    bump(slot.rejected_limit);
    return nullptr;
  }
  bool holds_source = false;
  if (cfg.max_connections_per_source) {
    if (!lstats.sources.try_acquire(client, cfg.max_connections_per_source)) {
      lstats.close_one();
      shared.active_connections.fetch_sub(1, std::memory_order_relaxed);
      bump(slot.rejected_limit);
      return nullptr;
    }
    holds_source = true;
  }
  // Gives back what admission took, for the failures below.
  auto unadmit = [&] {
    if (holds_source) lstats.sources.release(client);
    lstats.close_one();
    shared.active_connections.fetch_sub(1, std::memory_order_relaxed);
  };
  PickContext ctx;
  ctx.hash = worker_.flow_hash_for(*runtime_, client);
  const PoolTable* pool = nullptr;
  Backend* b = worker_.pick(*runtime_, ctx, &pool);
  if (!b) {
    unadmit();
    if (pool && all_full(*pool)) bump(slot.rejected_limit);
    else bump(slot.rejected_no_backend);
    return nullptr;
  }
  // A connected socket: the kernel matches the backend's replies (and its
  // ICMP errors) to this session.
  auto* s = new Session;
  s->owner = this;
  int rc = 0;
  s->fd = ::socket(b->address.addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->fd < 0) rc = -errno;
  if (rc == 0 && ::connect(s->fd, reinterpret_cast<const sockaddr*>(&b->address.addr),
                           addr_len(b->address.addr)) != 0)
    rc = -errno;
  if (rc == 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = s;
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, s->fd, &ev) != 0) rc = -errno;
  }
  if (rc != 0) {
    // Out of sockets or ports: count it against the backend and drop.
    // Once per client datagram while descriptors or ports are short:
    // rate-limited, so spoofed sources cannot make the worker log-bound.
    static log::Throttle throttle;
    log::warn_throttled(throttle, "udp upstream socket failed listener={} backend={} error={}",
                        runtime_->cfg.name, b->id, uv_strerror(rc));
    b->connect_failures.fetch_add(1, std::memory_order_relaxed);
    if (s->fd >= 0) ::close(s->fd);
    delete s;
    unadmit();
    return nullptr;
  }
  s->key = key;
  s->runtime = runtime_;
  s->holds_source = holds_source;
  std::memcpy(&s->client, client, client->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
  s->backend = b->shared_from_this();
  s->backend->active.fetch_add(1, std::memory_order_relaxed);
  s->backend->total.fetch_add(1, std::memory_order_relaxed);
  if (cfg.proxy_protocol == conf::ProxyProtocol::V2) {
    s->proxy_len = static_cast<uint8_t>(
        proxy::write_v2(client, reinterpret_cast<const sockaddr*>(&local_addr_), true, s->proxy_header,
                        sizeof s->proxy_header));
  }
  s->table_version = worker_.table_version();
  s->started_ms = uv_now(worker_.loop());
  s->timeout.fire = on_session_timeout;
  s->timeout.owner = s;
  worker_.timeouts().arm(&s->timeout, static_cast<uint64_t>(runtime_->cfg.session_timeout.count()));
  sessions_.insert(key, s);
  ++live_sessions_;
  bump(slot.connections);
  bump<int64_t>(slot.active, 1);
  worker_.count_session(1);
  return s;
}

void UdpListener::flush_session_queue(Session* s) {
  while (!s->queue.empty()) {
    Pending* p = s->queue.head;
    ssize_t r = ::send(s->fd, p->data(), p->len, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && would_block(errno)) return;
    s->queue.pop();   // sent, or failed for good: dropped like an unqueued one
  }
  watch_session(s, false);
}

void UdpListener::watch_session(Session* s, bool writable) {
  if (s->watch_writable == writable) return;
  epoll_event ev{};
  ev.events = EPOLLIN | (writable ? EPOLLOUT : 0u);
  ev.data.ptr = s;
  if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, s->fd, &ev) == 0) s->watch_writable = writable;
}

void UdpListener::watch_listener(bool writable, bool force) {
  // uv_poll_start re-registers the fd (two epoll_ctl calls): only on change.
  if (closing_ || !poll_ || (writable == listener_writable_ && !force)) return;
  listener_writable_ = writable;
  uv_poll_start(poll_, UV_READABLE | (writable ? UV_WRITABLE : 0), on_listener_io);
}

void UdpListener::on_upstream_io(uv_poll_t* h, int status, int) {
  auto* self = static_cast<UdpListener*>(h->data);
  if (status < 0) {
    // Not expected of an epoll fd; libuv stopped the handle, so resume.
    if (!self->closing_) uv_poll_start(h, UV_READABLE, on_upstream_io);
    return;
  }
  epoll_event ready[kReadyBatch];
  int n = ::epoll_wait(self->epfd_, ready, kReadyBatch, 0);
  // Handling one session never ends another one, so every pointer in
  // `ready` stays valid until its turn.
  for (int i = 0; i < n; ++i) self->upstream_event(static_cast<Session*>(ready[i].data.ptr), ready[i].events);
  // Every ready session has been read: their replies leave together.
  self->flush_replies();
}

void UdpListener::upstream_event(Session* s, uint32_t events) {
  if (events & EPOLLOUT) flush_session_queue(s);
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) read_upstream(s);
}

void UdpListener::read_upstream(Session* s) {
  // One recvmmsg, straight into the free staging slots (the replies leave
  // from there); level-triggered epoll reports the socket again if more
  // replies are queued.
  if (!replies_) replies_.reset(new ReplyBatch);   // uninitialised arrays: filled as used
  if (replies_->slots == kReplyEntries) flush_replies();
  const size_t first = replies_->slots;
  const unsigned room = static_cast<unsigned>(kReplyEntries - first);
  mmsghdr msgs[kReplyEntries];
  iovec iov[kReplyEntries];
  char* buf = worker_.udp_buffer();
  for (unsigned i = 0; i < room; ++i) {
    iov[i].iov_base = buf + (first + i) * kSlot;
    iov[i].iov_len = kSlot;
    std::memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int n = ::recvmmsg(s->fd, msgs, room, MSG_DONTWAIT, nullptr);
  if (n < 0) {
    if (would_block(errno) || errno == EINTR) return;
    // ICMP port/host unreachable from the backend: a failure for passive
    // health; the client's next datagram starts over on a live backend.
    s->backend->connect_failures.fetch_add(1, std::memory_order_relaxed);
    s->backend->consecutive_failures.fetch_add(1, std::memory_order_relaxed);
    if (auto& report = worker_.shared().report_backend) report(s->backend, false);
    end_session(s, "connect_failed");
    return;
  }
  // Taken, staged or not: a later read must not overwrite a staged reply.
  replies_->slots = first + static_cast<size_t>(n);
  for (int i = 0; i < n; ++i) {
    if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) continue;   // never forward a truncated datagram
    // False: the session ended, the rest is dropped.
    if (!reply(s, static_cast<char*>(iov[i].iov_base), msgs[i].msg_len)) return;
  }
}

bool UdpListener::reply(Session* s, char* data, size_t len) {
  if (s->backend->consecutive_failures.load(std::memory_order_relaxed) != 0) {
    s->backend->consecutive_failures.store(0, std::memory_order_relaxed);
    if (auto& report = worker_.shared().report_backend) report(s->backend, true);
  }
  // Counted once staged, as a queued datagram always was: the send happens
  // at the end of this callback (flush_replies).
  if (closing_ || !stage_reply(s->client, data, len)) return true;
  bump(runtime_->stats->slot(worker_.index()).datagrams_out);
  s->bytes_to_client += len;
  s->backend->bytes_to_client.fetch_add(len, std::memory_order_relaxed);
  worker_.timeouts().touch(&s->timeout);
  if (runtime_->cfg.udp_responses > 0 && s->outstanding > 0 && --s->outstanding == 0) {
    end_session(s, "ok");
    return false;
  }
  return true;
}

bool UdpListener::stage_reply(const sockaddr_storage& to, char* data, size_t len) {
  // `data` is in a slot below replies_->slots: read_upstream received it there.
  ReplyBatch& b = *replies_;
  // Behind a backed-up socket a reply would be queued: drop it now, as the
  // full queue would, rather than count it as sent.
  if (!client_queue_->empty() && client_queue_->bytes + len > kMaxQueuedBytes) return false;
  size_t i = b.count++;
  b.iov[i].iov_base = data;
  b.iov[i].iov_len = len;
  std::memcpy(&b.to[i], &to, addr_len(to));
  return true;
}

void UdpListener::flush_replies() {
  if (!replies_ || replies_->count == 0) return;
  ReplyBatch& b = *replies_;
  size_t sent = 0;
  if (client_queue_->empty()) {
    for (size_t i = 0; i < b.count; ++i) {
      msghdr& m = b.msgs[i].msg_hdr;
      std::memset(&m, 0, sizeof m);
      m.msg_name = &b.to[i];
      m.msg_namelen = addr_len(b.to[i]);
      m.msg_iov = &b.iov[i];
      m.msg_iovlen = 1;
    }
    while (sent < b.count) {
      int r = ::sendmmsg(fd_, b.msgs + sent, static_cast<unsigned>(b.count - sent), MSG_DONTWAIT);
      if (r > 0) {
        sent += static_cast<size_t>(r);
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r == 0 || would_block(errno)) break;
      // This datagram cannot be sent at all (sendmmsg reports the first
      // failure; the ones before it went): drop it, go on with the rest.
      log::debug("udp send error listener={} error={}", runtime_->cfg.name, uv_strerror(-errno));
      ++sent;
    }
  }
  // The socket is full: keep copies (bounded) until it is writable again.
  for (; sent < b.count; ++sent)
    client_queue_->push(&b.to[sent], nullptr, 0, static_cast<const char*>(b.iov[sent].iov_base),
                        b.iov[sent].iov_len);
  b.count = 0;
  b.slots = 0;
  if (!client_queue_->empty()) watch_listener(true);
}

void UdpListener::flush_client_queue() {
  PendingQueue& q = *client_queue_;
  while (!q.empty()) {
    Pending* p = q.head;
    ssize_t r = ::sendto(fd_, p->data(), p->len, MSG_DONTWAIT, reinterpret_cast<const sockaddr*>(&p->to),
                         addr_len(p->to));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && would_block(errno)) return;
    q.pop();   // sent, or failed for good: dropped
  }
  watch_listener(false);
}

void UdpListener::on_session_timeout(TimeoutNode* n) {
  auto* s = static_cast<Session*>(n->owner);
  s->owner->end_session(s, s->outstanding > 0 ? "timeout" : "ok");
}

void UdpListener::end_session(Session* s, const char* result) {
  worker_.timeouts().disarm(&s->timeout);
  sessions_.erase(s->key);
  // Closing the socket also takes it out of epfd_ (it is never duplicated).
  ::close(s->fd);
  Worker& w = worker_;
  if (AccessLog* log = w.shared().access_log) {
    AccessRecord rec;
    rec.listener = runtime_->cfg.name;
    rec.client = reinterpret_cast<const sockaddr*>(&s->client);
    rec.backend = s->backend->id;
    rec.duration_ms = uv_now(w.loop()) - s->started_ms;
    rec.bytes_to_backend = s->bytes_to_backend;
    rec.bytes_to_client = s->bytes_to_client;
    rec.result = result;
    log->write(w.index(), rec);
  }
  s->backend->active.fetch_sub(1, std::memory_order_relaxed);
  ListenerStats& stats = *s->runtime->stats;
  if (s->holds_source) stats.sources.release(reinterpret_cast<const sockaddr*>(&s->client));
  stats.close_one();
  bump<int64_t>(stats.slot(w.index()).active, -1);
  w.shared().active_connections.fetch_sub(1, std::memory_order_relaxed);
  w.count_session(-1);
  delete s;
  session_gone();
}

void UdpListener::session_gone() {
  --live_sessions_;
  if (retired_ && live_sessions_ == 0) close_socket();
}

void UdpListener::retire() {
  retired_ = true;
  if (live_sessions_ == 0) close_socket();
}

void UdpListener::drain() {
  retired_ = true;
  // A session that owes no reply has nothing left to finish: end it now
  // rather than at its session_timeout. The others end with their answers.
  std::vector<Session*> idle;
  sessions_.for_each([&](const UdpPeerKey&, Session* s) {
    if (s->outstanding == 0) idle.push_back(s);
  });
  for (Session* s : idle) end_session(s, "ok");
  if (live_sessions_ == 0) close_socket();
}

void UdpListener::abort() {
  retired_ = true;
  // end_session erases from the map: iterate over a copy of the pointers.
  std::vector<Session*> all;
  all.reserve(sessions_.size());
  sessions_.for_each([&](const UdpPeerKey&, Session* s) { all.push_back(s); });
  for (Session* s : all) end_session(s, "reset");
  if (live_sessions_ == 0) close_socket();
}

void UdpListener::close_socket() {
  if (closing_) return;
  // Replies staged by the session that just ended still go out.
  flush_replies();
  closing_ = true;
  for (uv_poll_t* h : {poll_, sessions_poll_}) {
    if (!h) continue;
    ++open_handles_;
    uv_close(reinterpret_cast<uv_handle_t*>(h), on_handle_closed);
  }
  if (open_handles_ == 0) destroy();
}

void UdpListener::on_handle_closed(uv_handle_t* h) {
  auto* self = static_cast<UdpListener*>(h->data);
  if (h == reinterpret_cast<uv_handle_t*>(self->poll_)) self->poll_ = nullptr;
  if (h == reinterpret_cast<uv_handle_t*>(self->sessions_poll_)) self->sessions_poll_ = nullptr;
  delete reinterpret_cast<uv_poll_t*>(h);
  if (--self->open_handles_ == 0) self->destroy();
}

void UdpListener::destroy() {
  // The handles are gone, so the fds can be closed (queued replies with them).
  if (fd_ >= 0) ::close(fd_);
  if (epfd_ >= 0) ::close(epfd_);
  delete this;
}

}  // namespace lb::core
