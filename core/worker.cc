#include "core/worker.h"

#include <unistd.h>

#include <algorithm>
#include <cassert>

#include "core/admission.h"
#include "core/descriptors.h"
#include "core/hash/hash.h"
#include "core/log.h"
#include "core/select/flow_hash.h"
#include "core/tcp_session.h"
#include "core/tls/settings.h"
#include "core/udp/listener.h"

namespace lb::core {

// A bind's listening socket adopted by this worker's loop.
struct Worker::BindSocket {
  Worker* worker = nullptr;
  std::string key;
  ListenerRuntimePtr runtime;
  UvPtr<uv_tcp_t> handle;      // TCP
  UdpListener* udp = nullptr;  // UDP: deletes itself once retired and idle

  // Stops taking new connections or sessions.
  void close() {
    handle.reset();
    if (udp) {
      udp->retire();
      udp = nullptr;
    }
  }
};

Worker::Worker(unsigned index, SharedState& shared)
    : index_(index), shared_(shared), read_buffer_(new char[kReadBufferSize]) {
  uv_loop_init(&loop_);
  async_ = make_uv<uv_async_t>(&loop_, this, nullptr, uv_async_init, on_async);
  timeouts_ = std::make_unique<TimeoutWheel>(&loop_);
  trim_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
  uv_timer_start(trim_timer_.get(), on_trim, kPipeTrimMs, kPipeTrimMs);
  budget_timer_ = make_uv<uv_timer_t>(&loop_, this, nullptr, uv_timer_init);
}

// Pipes unused for a whole period go back to the kernel: bursts keep their
// pool, a quiet worker holds none.
void Worker::on_trim(uv_timer_t* t) {
  auto* w = static_cast<Worker*>(t->data);
  if (w->pipe_pool_.acquires() == w->trim_seen_acquires_ && w->pipe_pool_.idle() > 0) w->pipe_pool_.trim();
  w->trim_seen_acquires_ = w->pipe_pool_.acquires();
  // After a pipe shortage, ask for full-size pipes again.
  w->pipe_pool_.retry();
}

void Worker::close_timers() {
  trim_timer_.reset();
  budget_timer_.reset();
}

void Worker::wait_for_budget(TcpSession* s) {
  if (s->budget_waiting) return;
  s->budget_waiting = true;
  s->budget_next = nullptr;
  s->budget_prev = budget_tail_;
  if (budget_tail_)
    budget_tail_->budget_next = s;
  else
    budget_head_ = s;
  budget_tail_ = s;
  if (budget_timer_ && !uv_is_active(reinterpret_cast<uv_handle_t*>(budget_timer_.get())))
    uv_timer_start(budget_timer_.get(), on_budget_timer, kBudgetPollMs, kBudgetPollMs);
}

void Worker::cancel_budget_wait(TcpSession* s) {
  if (!s->budget_waiting) return;
  s->budget_waiting = false;
  if (s->budget_prev)
    s->budget_prev->budget_next = s->budget_next;
  else
    budget_head_ = s->budget_next;
  if (s->budget_next)
    s->budget_next->budget_prev = s->budget_prev;
  else
    budget_tail_ = s->budget_prev;
  s->budget_prev = s->budget_next = nullptr;
  if (!budget_head_ && budget_timer_) uv_timer_stop(budget_timer_.get());
}

void Worker::wake_budget_waiters() {
  if (!budget_head_) return;
  const int64_t headroom = shared_.buffers.headroom();
  if (headroom <= 0) return;
  // A woken session may allocate up to a read buffer per read before it
  // sees the bound again: wake about as many as the headroom covers.
  int64_t n = std::max<int64_t>(1, headroom / static_cast<int64_t>(kReadBufferSize));
  while (n-- > 0 && budget_head_) {
    TcpSession* s = budget_head_;
    cancel_budget_wait(s);
    s->budget_returned();  // may finish (and later free) the session, never now
  }
}

void Worker::on_budget_timer(uv_timer_t* t) { static_cast<Worker*>(t->data)->wake_budget_waiters(); }

Worker::~Worker() {
  if (thread_.joinable()) thread_.join();
  if (loop_closed_) return;
  // The thread never ran (start-up failed): close what the constructor opened.
  {
    std::lock_guard lk(inbox_mu_);
    async_.reset();
  }
  timeouts_->close();
  close_timers();
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

void Worker::start() {
  thread_ = std::thread([this] { run_until_stopped(); });
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

int Worker::run_until_stopped() {
  // Runs until Abort has closed every handle and their callbacks have run.
  uv_run(&loop_, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&loop_);
  if (rc != 0) {
    log::error("worker loop has open handles at exit worker={}", index_);
    leaked_handles_ = true;
  }
  loop_closed_ = true;
  return rc;
}

FreezeResult Worker::freeze_sessions(bool tcp, bool connecting) {
  FreezeResult out;
  for (UdpListener* u : udp_all_) u->export_sessions(&out.udp);
  if (!tcp) return out;
  // A frozen session leaves the list only when its handles have closed.
  for (TcpSession* s = sessions_; s; s = s->next) {
    FrozenSession f;
    if (s->freeze(&f, connecting))
      out.frozen.push_back(std::move(f));
    else if (s->settling())
      ++out.settling;
  }
  return out;
}

// The wake-up is sent under the inbox lock: abort_all() closes the async
// handle under the same lock, so no thread can signal a closed handle.
void Worker::post(WorkerMessage msg) {
  std::lock_guard lk(inbox_mu_);
  if (!async_) return;  // the worker has stopped
  inbox_.push_back(std::move(msg));
  uv_async_send(async_.get());
}

void Worker::publish(BackendTablePtr table) {
  std::lock_guard lk(inbox_mu_);
  if (!async_) return;
  pending_table_ = std::move(table);
  uv_async_send(async_.get());
}

void Worker::on_async(uv_async_t* a) { static_cast<Worker*>(a->data)->drain_inbox(); }

void Worker::drain_inbox() {
  std::vector<WorkerMessage> msgs;
  BackendTablePtr table;
  {
    std::lock_guard lk(inbox_mu_);
    msgs.swap(inbox_);
    table = std::move(pending_table_);
    pending_table_.reset();
  }
  // The table first: a new listener set may name pools only it has.
  if (table) swap_table(std::move(table));
  for (auto& m : msgs) {
    switch (m.kind) {
      case WorkerMessage::Kind::Listeners:
        apply_binds(m.binds);
        listeners_applied_.store(m.seq, std::memory_order_release);
        break;
      case WorkerMessage::Kind::Drain:
        drain();
        break;
      case WorkerMessage::Kind::Abort:
        abort_all();
        return;
      case WorkerMessage::Kind::Freeze:
        m.on_frozen(freeze_sessions(m.tcp, m.connecting));
        break;
      case WorkerMessage::Kind::Resume:
        for (ResumeItem& r : m.resume)
          TcpSession::resume(*this, std::move(r.listener), std::move(r.backend), std::move(r.session));
        break;
    }
  }
}

void Worker::swap_table(BackendTablePtr table) {
  selectors_.update(*table, (static_cast<uint64_t>(index_) << 32) ^ table->version);
  table_ = std::move(table);
}

Backend* Worker::pick(const std::string& pool, const PickContext& ctx, const PoolTable** table) {
  SelectorSet::Entry* e = selectors_.find(pool);
  if (!e) return nullptr;
  *table = e->table.get();
  return e->selector->pick(ctx);
}

std::shared_ptr<const tls::ClientContext> Worker::pool_tls(const std::string& pool) const {
  if (!table_ || !table_->tls) return nullptr;
  auto it = table_->tls->pools.find(pool);
  return it == table_->tls->pools.end() ? nullptr : it->second;
}

uint64_t Worker::flow_hash_for(const std::string& pool, const sockaddr* client, std::string_view sni) {
  const SelectorSet::Entry* e = selectors_.find(pool);
  if (!e || !conf::is_hash_selector(e->table->selector)) return 0;
  // The same name lands on the same backend from every worker and every lb
  // instance: XXH64 of its bytes (already lower-cased by the caller).
  if (e->table->hash_key == conf::HashKey::Sni && !sni.empty()) return hash::xxh64(sni);
  return hash::flow_hash(client, e->table->hash_key);
}

void Worker::apply_binds(const std::vector<WorkerBind>& binds) {
  std::vector<std::unique_ptr<BindSocket>> next;
  for (auto& e : binds) {
    std::unique_ptr<BindSocket> l;
    for (auto& old : binds_) {
      if (old && old->key == e.key) {
        l = std::move(old);
        break;
      }
    }
    if (l) {
      // Unchanged bind: keep the socket, take the new settings.
      l->runtime = e.runtime;
      if (l->udp) l->udp->set_runtime(e.runtime);
      if (e.fd >= 0) ::close(e.fd);
      next.push_back(std::move(l));
      continue;
    }
    if (e.fd < 0) {
      log::error("worker has no socket for listener={} worker={}", e.runtime->cfg.name, index_);
      continue;
    }
    l = std::make_unique<BindSocket>();
    l->worker = this;
    l->key = e.key;
    l->runtime = e.runtime;
    if (e.runtime->cfg.protocol == conf::Protocol::Udp) {
      auto* u = new UdpListener(*this, e.key, e.runtime);
      int rc = u->open(e.fd);  // on failure u has scheduled its own deletion
      if (rc != 0) {
        log::error("cannot receive listener={} worker={} error={}", e.runtime->cfg.name, index_,
                   uv_strerror(rc));
        continue;
      }
      l->udp = u;
      next.push_back(std::move(l));
      continue;
    }
    l->handle = make_uv<uv_tcp_t>(&loop_, l.get(), nullptr, uv_tcp_init);
    int rc = uv_tcp_open(l->handle.get(), e.fd);
    // Once open, the handle owns the fd (closing the handle closes it); a socket
    // it refused is still ours to close.
    if (rc != 0) ::close(e.fd);
    // Accepted sockets inherit TCP_NODELAY from the listening socket (Linux
    // clones the listener's options), so it is set once here rather than
    // once per connection.
    if (rc == 0) rc = uv_tcp_nodelay(l->handle.get(), 1);
    if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(l->handle.get()), 4096, on_connection);
    if (rc != 0) {
      log::error("cannot listen listener={} worker={} error={}", e.runtime->cfg.name, index_,
                 uv_strerror(rc));
      continue;  // l->handle closes with l
    }
    next.push_back(std::move(l));
  }
  // Whatever is left was removed from the configuration: stop accepting at
  // once; its established sessions carry on.
  for (auto& old : binds_)
    if (old) old->close();
  binds_ = std::move(next);
}

void Worker::close_binds() {
  for (auto& l : binds_) l->close();
  binds_.clear();
}

void Worker::drain() {
  close_binds();
  std::vector<UdpListener*> udp = udp_all_;
  for (UdpListener* u : udp) u->drain();
  drain_done_.store(true, std::memory_order_release);
}

char* Worker::udp_buffer() {
  if (!udp_buffer_) udp_buffer_.reset(new char[kUdpBufferSize]);
  return udp_buffer_.get();
}

bool Worker::is_candidate(const std::string& pool, const Backend* b) const {
  const SelectorSet::Entry* e = selectors_.find(pool);
  if (!e) return false;
  for (auto& c : e->table->candidates)
    if (c.backend == b) return true;
  return false;
}

void Worker::udp_listener_removed(UdpListener* l) {
  for (size_t i = 0; i < udp_all_.size(); ++i) {
    if (udp_all_[i] == l) {
      udp_all_[i] = udp_all_.back();
      udp_all_.pop_back();
      return;
    }
  }
}

void Worker::abort_all() {
  aborting_ = true;
  close_binds();
  // Copy: an idle UDP listener deletes itself (and leaves udp_all_) at once.
  std::vector<UdpListener*> udp = udp_all_;
  for (UdpListener* u : udp) u->abort();
  while (sessions_) {
    TcpSession* s = sessions_;
    s->abort();
    // abort() starts closing; the session leaves the list when its last
    // handle closes. Unlink it now so the loop terminates.
    if (sessions_ == s) {
      sessions_ = s->next;
      if (sessions_) sessions_->prev = nullptr;
      s->prev = s->next = nullptr;
    }
  }
  timeouts_->close();
  close_timers();
  {
    std::lock_guard lk(inbox_mu_);
    async_.reset();
    pending_table_.reset();
    inbox_.clear();
  }
  selectors_.clear();
  table_.reset();
}

void Worker::on_connection(uv_stream_t* server, int status) {
  auto* l = static_cast<BindSocket*>(server->data);
  if (status < 0) {
    // Out of descriptors, every new connection fails here: rate-limited, so
    // a connection flood does not turn into a log flood on this worker.
    static log::Throttle throttle;
    log::warn_throttled(throttle, "accept failed listener={} error={}", l->runtime->cfg.name,
                        uv_strerror(status));
    return;
  }
  l->worker->accept_one(l);
}

void Worker::warn_descriptors_exhausted(const std::string& listener) {
  static log::Throttle throttle;
  log::warn_throttled(throttle, "connection refused: out of file descriptors listener={} open_file_limit={}",
                      listener, descriptors::limit());
}

void Worker::accept_one(BindSocket* l) {
  // The client's UvPtr goes to the TcpSession, which closes it; a client
  // that no session takes closes as the UvPtr goes out of scope.
  UvPtr<uv_tcp_t> client = make_uv<uv_tcp_t>(&loop_, nullptr, nullptr, uv_tcp_init);
  if (!client || uv_accept(reinterpret_cast<uv_stream_t*>(l->handle.get()),
                           reinterpret_cast<uv_stream_t*>(client.get())) != 0)
    return;
  // Near the descriptor limit, refuse it now (core/descriptors.h); the
  // UvPtr closes it.
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(client.get()), &fd) == 0 &&
      descriptors::in_accept_reserve(fd)) {
    count_refusal(l->runtime->stats->slot(index_), Refusal::Limit);
    warn_descriptors_exhausted(l->runtime->cfg.name);
    return;
  }
  // The address-independent limits (admission step 1) are checked here,
  // before any work. The rest of admission is the session's, because with
  // accept_proxy_protocol the client address is known only later.
  Admission admission;
  if (Refusal r = admission.open(shared_, *l->runtime); r != Refusal::None) {
    count_refusal(l->runtime->stats->slot(index_), r);
    return;
  }
  TcpSession::start(*this, l->runtime, std::move(client), admission);
}

void Worker::session_opened(TcpSession* s) {
  s->next = sessions_;
  s->prev = nullptr;
  if (sessions_) sessions_->prev = s;
  sessions_ = s;
  open_sessions_.fetch_add(1, std::memory_order_relaxed);
}

void Worker::session_closed(TcpSession* s) {
  if (s->prev)
    s->prev->next = s->next;
  else if (sessions_ == s)
    sessions_ = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = nullptr;
  open_sessions_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace lb::core
