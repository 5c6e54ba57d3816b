#include "core/udp_proxy.h"

#include <netinet/in.h>

#include <cstdlib>
#include <cstring>

#include "core/access_log.h"
#include "core/hash/hash.h"
#include "core/log.h"
#include "core/proxy_protocol.h"

namespace lb::core {

namespace {
// Bytes a socket may have queued in libuv before further datagrams are
// dropped (UDP has no backpressure; the kernel would drop them too).
constexpr size_t kMaxQueuedBytes = 1024 * 1024;
// A PROXY v2 header with IPv6 addresses and no TLVs.
constexpr size_t kProxyV2Max = 16 + 36;
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
  return static_cast<size_t>(hash::xxh64(&k, sizeof k, 0x75647031));
}

struct UdpListener::Session {
  TimeoutNode timeout;
  UdpListener* owner = nullptr;
  // The listener settings the session started with: its admission counters
  // are given back to these stats even if a reload renamed the listener.
  ListenerRuntimePtr runtime;
  UdpPeerKey key;
  sockaddr_storage client{};
  BackendPtr backend;
  uv_udp_t* upstream = nullptr;
  uint64_t table_version = 0;   // worker table the backend was last checked against
  uint64_t outstanding = 0;     // replies still expected (udp_responses > 0)
  uint64_t started_ms = 0;
  uint64_t bytes_to_backend = 0;
  uint64_t bytes_to_client = 0;
  const char* result = "ok";
  bool ended = false;
  bool holds_source = false;    // counted in the listener's per-source table
  uint8_t proxy_len = 0;        // PROXY v2 header for every datagram (0: none)
  uint8_t proxy_header[kProxyV2Max];
};

// A datagram the socket could not take at once: header and bytes together.
struct UdpListener::SendReq {
  uv_udp_send_t req;
  size_t len;
  // The bytes follow the header in the same allocation.
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

UdpListener::UdpListener(Worker& worker, std::string key, ListenerRuntimePtr runtime)
    : worker_(worker), key_(std::move(key)), runtime_(std::move(runtime)) {
  worker_.udp_listener_added(this);
}

UdpListener::~UdpListener() { worker_.udp_listener_removed(this); }

int UdpListener::open(int fd) {
  handle_ = new uv_udp_t;
  // AF_UNSPEC: no socket of libuv's own; the flag turns on recvmmsg batches.
  int rc = uv_udp_init_ex(worker_.loop(), handle_, AF_UNSPEC | UV_UDP_RECVMMSG);
  if (rc != 0) {
    delete handle_;
    handle_ = nullptr;
    delete this;
    return rc;
  }
  handle_->data = this;
  rc = uv_udp_open(handle_, fd);
  if (rc == 0) {
    int len = sizeof local_addr_;
    rc = uv_udp_getsockname(handle_, reinterpret_cast<sockaddr*>(&local_addr_), &len);
  }
  if (rc == 0) rc = uv_udp_recv_start(handle_, on_alloc, on_recv);
  if (rc != 0) {
    retired_ = true;
    close_socket();
    return rc;
  }
  return 0;
}

void UdpListener::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* self = static_cast<UdpListener*>(h->data);
  // One batch of recvmmsg: libuv cuts this buffer into 64 KiB datagram slots.
  buf->base = self->worker_.udp_buffer();
  buf->len = Worker::kUdpBufferSize;
}

void UdpListener::on_upstream_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* s = static_cast<Session*>(h->data);
  buf->base = s->owner->worker_.read_buffer();
  buf->len = Worker::kReadBufferSize;
}

void UdpListener::on_recv(uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const sockaddr* addr,
                          unsigned flags) {
  auto* self = static_cast<UdpListener*>(h->data);
  if (nread < 0) {
    log::debug("udp receive error listener={} error={}", self->runtime_->cfg.name, uv_strerror(static_cast<int>(nread)));
    return;
  }
  if (!addr) return;  // nothing more to read, or the end of a recvmmsg batch
  if (flags & UV_UDP_PARTIAL) {
    // Never forward a truncated datagram.
    log::debug("udp datagram truncated listener={}", self->runtime_->cfg.name);
    return;
  }
  self->datagram(buf->base, static_cast<size_t>(nread), addr);
}

void UdpListener::datagram(const char* data, size_t len, const sockaddr* client) {
  auto& slot = runtime_->stats->slot(worker_.index());
  bump(slot.datagrams_in);
  UdpPeerKey key = UdpPeerKey::from(client);
  Session* s = nullptr;
  if (Session** found = sessions_.find(key)) {
    s = *found;
    if (!still_valid(s)) {
      end_session(s, "ok");
      s = nullptr;
    }
  }
  if (!s) {
    if (retired_) return;
    s = new_session(client, key);
    if (!s) return;
  }
  if (!send(s->upstream, data, len, nullptr, s->proxy_header, s->proxy_len)) return;
  s->bytes_to_backend += len;
  s->backend->bytes_to_backend.fetch_add(len, std::memory_order_relaxed);
  s->outstanding += runtime_->cfg.udp_responses;
  worker_.timeouts().touch(&s->timeout);
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
  auto* up = new uv_udp_t;
  int rc = uv_udp_init_ex(worker_.loop(), up, b->address.addr.ss_family);
  if (rc == 0) rc = uv_udp_connect(up, reinterpret_cast<const sockaddr*>(&b->address.addr));
  auto* s = new Session;
  s->owner = this;
  up->data = s;
  s->upstream = up;
  if (rc == 0) rc = uv_udp_recv_start(up, on_upstream_alloc, on_upstream_recv);
  if (rc != 0) {
    // Out of sockets or ports: count it against the backend and drop.
    log::warn("udp upstream socket failed listener={} backend={} error={}", runtime_->cfg.name, b->id,
              uv_strerror(rc));
    b->connect_failures.fetch_add(1, std::memory_order_relaxed);
    uv_close(reinterpret_cast<uv_handle_t*>(up), [](uv_handle_t* h) {
      delete static_cast<Session*>(h->data);
      delete reinterpret_cast<uv_udp_t*>(h);
    });
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

bool UdpListener::send(uv_udp_t* h, const char* data, size_t len, const sockaddr* addr, const uint8_t* prefix,
                       size_t prefix_len) {
  uv_buf_t b[2];
  unsigned nb = 0;
  if (prefix_len) b[nb++] = uv_buf_init(reinterpret_cast<char*>(const_cast<uint8_t*>(prefix)),
                                        static_cast<unsigned>(prefix_len));
  b[nb++] = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(len));
  int rc = uv_udp_try_send(h, b, nb, addr);
  if (rc >= 0) return true;
  if (rc != UV_EAGAIN) return false;
  size_t total = prefix_len + len;
  if (h->send_queue_size + total > kMaxQueuedBytes) return false;
  auto* r = static_cast<SendReq*>(std::malloc(sizeof(SendReq) + total));
  if (!r) return false;
  r->len = total;
  if (prefix_len) std::memcpy(r->data(), prefix, prefix_len);
  std::memcpy(r->data() + prefix_len, data, len);
  uv_buf_t qb = uv_buf_init(r->data(), static_cast<unsigned>(total));
  if (uv_udp_send(&r->req, h, &qb, 1, addr, on_send_done) != 0) {
    std::free(r);
    return false;
  }
  return true;
}

void UdpListener::on_send_done(uv_udp_send_t* req, int) { std::free(reinterpret_cast<SendReq*>(req)); }

void UdpListener::on_upstream_recv(uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const sockaddr* addr,
                                   unsigned flags) {
  auto* s = static_cast<Session*>(h->data);
  if (s->ended) return;
  UdpListener* self = s->owner;
  if (nread < 0) {
    // ICMP port/host unreachable from the backend: a failure for passive
    // health; the client's next datagram starts over on a live backend.
    s->backend->connect_failures.fetch_add(1, std::memory_order_relaxed);
    s->backend->consecutive_failures.fetch_add(1, std::memory_order_relaxed);
    if (auto& report = self->worker_.shared().report_backend) report(s->backend, false);
    self->end_session(s, "connect_failed");
    return;
  }
  if (nread == 0 && !addr) return;
  if (flags & UV_UDP_PARTIAL) return;
  self->reply(s, buf->base, static_cast<size_t>(nread));
}

void UdpListener::reply(Session* s, const char* data, size_t len) {
  if (s->backend->consecutive_failures.load(std::memory_order_relaxed) != 0) {
    s->backend->consecutive_failures.store(0, std::memory_order_relaxed);
    if (auto& report = worker_.shared().report_backend) report(s->backend, true);
  }
  if (!handle_ || !send(handle_, data, len, reinterpret_cast<const sockaddr*>(&s->client))) return;
  bump(runtime_->stats->slot(worker_.index()).datagrams_out);
  s->bytes_to_client += len;
  s->backend->bytes_to_client.fetch_add(len, std::memory_order_relaxed);
  worker_.timeouts().touch(&s->timeout);
  if (runtime_->cfg.udp_responses > 0 && s->outstanding > 0 && --s->outstanding == 0) end_session(s, "ok");
}

void UdpListener::on_session_timeout(TimeoutNode* n) {
  auto* s = static_cast<Session*>(n->owner);
  s->owner->end_session(s, s->outstanding > 0 ? "timeout" : "ok");
}

void UdpListener::end_session(Session* s, const char* result) {
  if (s->ended) return;
  s->ended = true;
  s->result = result;
  worker_.timeouts().disarm(&s->timeout);
  sessions_.erase(s->key);
  uv_close(reinterpret_cast<uv_handle_t*>(s->upstream), on_upstream_closed);
}

void UdpListener::on_upstream_closed(uv_handle_t* h) {
  auto* s = static_cast<Session*>(h->data);
  UdpListener* self = s->owner;
  Worker& w = self->worker_;
  if (AccessLog* log = w.shared().access_log) {
    AccessRecord rec;
    rec.listener = self->runtime_->cfg.name;
    rec.client = reinterpret_cast<const sockaddr*>(&s->client);
    rec.backend = s->backend->id;
    rec.duration_ms = uv_now(w.loop()) - s->started_ms;
    rec.bytes_to_backend = s->bytes_to_backend;
    rec.bytes_to_client = s->bytes_to_client;
    rec.result = s->result;
    log->write(w.index(), rec);
  }
  s->backend->active.fetch_sub(1, std::memory_order_relaxed);
  ListenerStats& stats = *s->runtime->stats;
  if (s->holds_source) stats.sources.release(reinterpret_cast<const sockaddr*>(&s->client));
  stats.close_one();
  bump<int64_t>(stats.slot(w.index()).active, -1);
  w.shared().active_connections.fetch_sub(1, std::memory_order_relaxed);
  w.count_session(-1);
  delete reinterpret_cast<uv_udp_t*>(h);
  delete s;
  self->session_gone();
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
  closing_ = true;
  if (!handle_) {
    delete this;
    return;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(handle_), [](uv_handle_t* h) {
    auto* self = static_cast<UdpListener*>(h->data);
    delete reinterpret_cast<uv_udp_t*>(h);
    self->handle_ = nullptr;
    delete self;
  });
}

}  // namespace lb::core
