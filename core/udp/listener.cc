#include "core/udp/listener.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/access_log.h"
#include "core/admission.h"
#include "core/descriptors.h"
#include "core/log.h"
#include "core/proxy_protocol.h"

namespace lb::core {

namespace {
// A PROXY v2 header with IPv6 addresses and no TLVs.
constexpr size_t kProxyV2Max = 16 + 36;
// Receive buffer asked for on the listener socket.
constexpr size_t kListenerRcvBuf = 4 * 1024 * 1024;
bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK; }

}  // namespace

struct UdpListener::Session {
  TimeoutNode timeout;
  UdpListener* owner = nullptr;
  // The listener settings the session started with: its admission counters
  // are given back to these stats even if a reload renamed the listener.
  ListenerRuntimePtr runtime;
  BackendPtr backend;
  udp::PeerKey client;  // the table key; also the reply address
  udp::Route route;     // in owner->upstream_, towards backend->address
  Admission admission;  // what the session counts against the limits
  bool ended = false;
  uint64_t table_version = 0;  // worker table the backend was last checked against
  uint64_t outstanding = 0;    // replies still expected (udp_responses > 0)
  uint64_t started_ms = 0;
  uint64_t bytes_to_backend = 0;
  uint64_t bytes_to_client = 0;
};

UdpListener::UdpListener(Worker& worker, std::string key, ListenerRuntimePtr runtime)
    : worker_(worker), key_(std::move(key)), runtime_(std::move(runtime)) {
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
    upstream_ = std::make_unique<udp::UpstreamSet>(
        kMaxUpstreamSockets, kSlot, udp::expand_sources(runtime_->cfg.udp_source, kMaxSources));
    rc = upstream_->init();
  }
  // Two handles for the loop: the listener socket itself, and the epoll set
  // of the shared upstream sockets (readable when any of them is).
  auto watch = [this](UvPtr<uv_poll_t>& slot, int watched, uv_poll_cb cb) {
    int r = 0;
    slot = make_uv<uv_poll_t>(worker_.loop(), this, &r, uv_poll_init, watched);  // also makes it non-blocking
    return r != 0 ? r : uv_poll_start(slot.get(), UV_READABLE, cb);
  };
  if (rc == 0) rc = watch(poll_, fd_, on_listener_io);
  if (rc == 0) rc = watch(upstream_poll_, upstream_->epoll_fd(), on_upstream_io);
  if (rc == 0) {
    trim_timer_ = make_uv<uv_timer_t>(worker_.loop(), this, nullptr, uv_timer_init);
    uv_timer_start(trim_timer_.get(), on_trim, kTrimMs, kTrimMs);
    uv_unref(reinterpret_cast<uv_handle_t*>(trim_timer_.get()));  // never keeps the loop alive
  }
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
  self->reap();
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
  // Ended sessions are only freed by reap(), so every pointer in dest is valid.
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
    if (!s->ended) forward(s, buf, msgs, group, count);
  }
}

UdpListener::Session* UdpListener::session_for(const sockaddr* client) {
  bump(runtime_->stats->slot(worker_.index()).datagrams_in);
  udp::PeerKey key = udp::PeerKey::from(client);
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
  uint8_t header[kProxyV2Max];
  size_t header_len = 0;
  if (s->runtime->cfg.proxy_protocol == conf::ProxyProtocol::V2) {
    sockaddr_storage client;
    s->client.to_sockaddr(&client);
    header_len =
        proxy::write_v2(reinterpret_cast<const sockaddr*>(&client),
                        reinterpret_cast<const sockaddr*>(&local_addr_), true, header, sizeof header);
  }
  iovec data[Worker::kUdpBatch];
  bool taken[Worker::kUdpBatch];  // sent or queued
  for (unsigned k = 0; k < count; ++k) {
    data[k] = iovec{buf + idx[k] * kSlot, in[idx[k]].msg_len};
    taken[k] = false;
  }
  upstream_->send(s->route, s->backend->address.addr, header, header_len, data, count, taken);
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

UdpListener::Session* UdpListener::new_session(const sockaddr* client, const udp::PeerKey& key) {
  auto& slot = runtime_->stats->slot(worker_.index());
  SharedState& shared = worker_.shared();
  const conf::Listener& cfg = runtime_->cfg;
  auto refuse_limit = [&] {
    bump(slot.rejected_limit);
    warn_refused("limit");
    return nullptr;
  };
  Admission admission;
  if (Refusal r = admission.admit(shared, *runtime_, client); r != Refusal::None) {
    if (r == Refusal::Limit) return refuse_limit();
    count_refusal(slot, r);
    return nullptr;
  }
  // Gives back what admission took, for the failures below.
  auto unadmit = [&] { admission.release(shared, *runtime_->stats, client); };
  PickContext ctx;
  ctx.hash = worker_.flow_hash_for(runtime_->cfg.pool, client);
  const PoolTable* pool = nullptr;
  Backend* b = nullptr;
  // A session the previous program had (upgrade in place) keeps its
  // backend while that is still a candidate.
  if (BackendPtr pinned = shared.udp_pins.take(cfg.name, client);
      pinned && worker_.is_candidate(cfg.pool, pinned.get()))
    b = pinned.get();
  if (!b) b = worker_.pick(runtime_->cfg.pool, ctx, &pool);
  if (!b) {
    unadmit();
    if (pool && all_full(*pool)) return refuse_limit();
    bump(slot.rejected_no_backend);
    warn_refused("no_backend");
    return nullptr;
  }
  auto* s = new Session;
  if (int rc = upstream_->acquire(b->address.addr, s, &s->route); rc != 0) {
    delete s;
    unadmit();
    // lb out of descriptors: its own limit, not the backend's failure.
    if (rc == -EMFILE || rc == -ENFILE) {
      bump(slot.rejected_limit);
      Worker::warn_descriptors_exhausted(cfg.name);
      return nullptr;
    }
    // Every route to this backend is taken, or a socket cannot open: count
    // it against the backend and drop.
    warn_no_route(*b, rc);
    b->connect_failures.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  s->owner = this;
  s->client = key;
  s->runtime = runtime_;
  s->admission = admission;
  s->backend = b->shared_from_this();
  s->backend->active.fetch_add(1, std::memory_order_relaxed);
  s->backend->total.fetch_add(1, std::memory_order_relaxed);
  s->table_version = worker_.table_version();
  s->started_ms = uv_now(worker_.loop());
  s->timeout.fire = on_session_timeout;
  s->timeout.owner = s;
  worker_.timeouts().arm(&s->timeout, static_cast<uint64_t>(cfg.session_timeout.count()));
  sessions_.insert(key, s);
  ++live_sessions_;
  bump(slot.connections);
  bump<int64_t>(slot.active, 1);
  worker_.count_session(1);
  return s;
}

void UdpListener::export_sessions(std::vector<handover::UdpSession>* out) {
  sessions_.for_each([&](const udp::PeerKey& key, Session* s) {
    if (s->ended) return;
    handover::UdpSession u;
    u.listener = s->runtime->cfg.name;
    sockaddr_storage ss{};
    key.to_sockaddr(&ss);
    const auto* p = reinterpret_cast<const uint8_t*>(&ss);
    u.client.assign(p, p + sizeof ss);
    u.pool = s->backend->pool;
    u.backend = s->backend->id;
    out->push_back(std::move(u));
  });
}

void UdpListener::warn_refused(const char* reason) {
  log::warn_throttled(refused_warn_, "udp new sessions refused listener={} reason={}", runtime_->cfg.name,
                      reason);
}

void UdpListener::warn_no_route(const Backend& b, int err) {
  log::warn_throttled(route_warn_, "udp cannot open a route listener={} backend={} error={}",
                      runtime_->cfg.name, b.id,
                      err == -EADDRNOTAVAIL ? "every route to the backend is taken" : uv_strerror(err));
}

void UdpListener::watch_listener(bool writable, bool force) {
  // uv_poll_start re-registers the fd (two epoll_ctl calls): only on change.
  if (closing_ || !poll_ || (writable == listener_writable_ && !force)) return;
  listener_writable_ = writable;
  // Retired, the socket is no longer read: it opens no session, and the
  // socket may be read by another (the new program after an upgrade hands
  // it over, which also has this program's clients pinned). Reading it here
  // would take their datagrams and drop them. Replies of the sessions still
  // owed one go out on it all the same.
  const int events = (retired_ ? 0 : UV_READABLE) | (writable ? UV_WRITABLE : 0);
  if (events == 0)
    uv_poll_stop(poll_.get());
  else
    uv_poll_start(poll_.get(), events, on_listener_io);
}

void UdpListener::stop_reading() {
  retired_ = true;
  watch_listener(listener_writable_, true);
}

void UdpListener::on_trim(uv_timer_t* t) { static_cast<UdpListener*>(t->data)->upstream_->trim(); }

void UdpListener::on_upstream_io(uv_poll_t* h, int status, int) {
  auto* self = static_cast<UdpListener*>(h->data);
  if (status < 0) {
    // Not expected of an epoll fd; libuv stopped the handle, so resume.
    if (!self->closing_) uv_poll_start(h, UV_READABLE, on_upstream_io);
    return;
  }
  self->upstream_->poll(*self);
  // Every ready socket has been read: their replies leave together.
  self->flush_replies();
  self->reap();
}

char* UdpListener::reply_slots(unsigned* room) {
  if (!replies_) replies_ = std::make_unique<udp::ReplyBatch<Worker::kUdpBatch>>();
  if (replies_->full()) flush_replies();
  *room = static_cast<unsigned>(Worker::kUdpBatch - replies_->slots);
  return worker_.udp_buffer() + replies_->slots * kSlot;
}

void UdpListener::reply_slots_taken(unsigned n) { replies_->slots += n; }

void UdpListener::upstream_error(void* owner, int) {
  auto* s = static_cast<Session*>(owner);
  // ICMP port/host unreachable from the backend: a failure for passive
  // health; the client's next datagram starts over on a live backend.
  s->backend->connect_failures.fetch_add(1, std::memory_order_relaxed);
  s->backend->consecutive_failures.fetch_add(1, std::memory_order_relaxed);
  if (auto& report = worker_.shared().report_backend) report(s->backend, false);
  end_session(s, "connect_failed");
}

void UdpListener::upstream_reply(void* owner, char* data, size_t len) {
  auto* s = static_cast<Session*>(owner);
  if (s->backend->consecutive_failures.load(std::memory_order_relaxed) != 0) {
    s->backend->consecutive_failures.store(0, std::memory_order_relaxed);
    if (auto& report = worker_.shared().report_backend) report(s->backend, true);
  }
  if (closing_) return;
  // Behind a backed-up socket a reply would be queued: drop it now, as the
  // full queue would, rather than count it as sent.
  if (!client_queue_.empty() && client_queue_.bytes() + len > udp::kMaxQueuedBytes) return;
  sockaddr_storage to;
  s->client.to_sockaddr(&to);
  replies_->stage(to, data, len);
  // Counted once staged: the send happens at the end of this callback.
  bump(runtime_->stats->slot(worker_.index()).datagrams_out);
  s->bytes_to_client += len;
  s->backend->bytes_to_client.fetch_add(len, std::memory_order_relaxed);
  worker_.timeouts().touch(&s->timeout);
  if (runtime_->cfg.udp_responses > 0 && s->outstanding > 0 && --s->outstanding == 0) end_session(s, "ok");
}

void UdpListener::flush_replies() {
  if (!replies_) return;
  // What the socket does not take now is queued (bounded) until it is writable.
  if (replies_->send(fd_, client_queue_)) watch_listener(true);
}

void UdpListener::flush_client_queue() {
  if (udp::send_queued(fd_, client_queue_)) watch_listener(false);
}

void UdpListener::on_session_timeout(TimeoutNode* n) {
  auto* s = static_cast<Session*>(n->owner);
  UdpListener* self = s->owner;
  self->end_session(s, s->outstanding > 0 ? "timeout" : "ok");
  self->reap();
}

void UdpListener::end_session(Session* s, const char* result) {
  if (s->ended) return;
  s->ended = true;
  worker_.timeouts().disarm(&s->timeout);
  sessions_.erase(s->client);
  // The route is free at once: a late reply for it is dropped.
  upstream_->release(s->backend->address.addr, s->route);
  Worker& w = worker_;
  if (AccessLog* log = w.shared().access_log) {
    sockaddr_storage client;
    s->client.to_sockaddr(&client);
    AccessRecord rec;
    rec.listener = runtime_->cfg.name;
    rec.client = reinterpret_cast<const sockaddr*>(&client);
    rec.backend = s->backend->id;
    rec.duration_ms = uv_now(w.loop()) - s->started_ms;
    rec.bytes_to_backend = s->bytes_to_backend;
    rec.bytes_to_client = s->bytes_to_client;
    rec.result = result;
    log->write(w.index(), rec);
  }
  s->backend->active.fetch_sub(1, std::memory_order_relaxed);
  ListenerStats& stats = *s->runtime->stats;
  sockaddr_storage client{};
  if (s->admission.holds_source()) s->client.to_sockaddr(&client);
  s->admission.release(w.shared(), stats, reinterpret_cast<const sockaddr*>(&client));
  bump<int64_t>(stats.slot(w.index()).active, -1);
  w.count_session(-1);
  dead_.push_back(s);
  session_gone();
}

void UdpListener::reap() {
  for (Session* s : dead_) delete s;
  dead_.clear();
  if (dead_.capacity() > 1024) dead_.shrink_to_fit();
}

void UdpListener::session_gone() {
  --live_sessions_;
  if (retired_ && live_sessions_ == 0) close_socket();
}

void UdpListener::retire() {
  stop_reading();
  if (live_sessions_ == 0) close_socket();
}

void UdpListener::drain() {
  stop_reading();
  // A session that owes no reply has nothing left to finish: end it now
  // rather than at its session_timeout. The others end with their answers.
  std::vector<Session*> idle;
  sessions_.for_each([&](const udp::PeerKey&, Session* s) {
    if (s->outstanding == 0) idle.push_back(s);
  });
  for (Session* s : idle) end_session(s, "ok");
  reap();
  if (live_sessions_ == 0) close_socket();
}

void UdpListener::abort() {
  retired_ = true;
  // end_session erases from the map: iterate over a copy of the pointers.
  std::vector<Session*> all;
  all.reserve(sessions_.size());
  sessions_.for_each([&](const udp::PeerKey&, Session* s) { all.push_back(s); });
  for (Session* s : all) end_session(s, "reset");
  reap();
  if (live_sessions_ == 0) close_socket();
}

void UdpListener::close_socket() {
  if (closing_) return;
  // Replies staged by the session that just ended still go out.
  flush_replies();
  closing_ = true;
  for (bool closing :
       {close_then(poll_, on_handle_closed, this), close_then(upstream_poll_, on_handle_closed, this),
        close_then(trim_timer_, on_handle_closed, this)})
    if (closing) ++open_handles_;
  if (open_handles_ == 0) destroy();
}

void UdpListener::on_handle_closed(void* owner) {
  auto* self = static_cast<UdpListener*>(owner);
  if (--self->open_handles_ == 0) self->destroy();
}

void UdpListener::destroy() {
  // The handles are gone, so the fds can be closed (queued datagrams with them).
  reap();
  if (fd_ >= 0) ::close(fd_);
  upstream_.reset();
  delete this;
}

}  // namespace lb::core
