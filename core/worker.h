// Worker: one thread, one libuv loop, its own listening sockets and sessions.
//
// Ownership and threads:
//  * Everything inside a Worker (loop, listeners, sessions, selectors) is
//    touched only by its own thread, except the two inboxes below.
//  * post() (control messages: listener sets, drain, abort) and publish()
//    (the latest BackendTable) are the only thread-safe entry points. Control
//    messages queue in order (a listener set carries socket fds that must not
//    be lost); tables are latest-wins, so coalesced uv_async_send wake-ups
//    never matter.
//  * Per-backend counters are relaxed atomics on the shared Backend objects;
//    per-listener counters go to this worker's slot of ListenerStats.
#pragma once

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "conf/config.h"
#include "core/acl.h"
#include "core/backend_table.h"
#include "core/flow_control.h"
#include "core/frozen_session.h"
#include "core/handover/state.h"
#include "core/pipe_pool.h"
#include "core/select/selector.h"
#include "core/select/selector_set.h"
#include "core/stats.h"
#include "core/timeout_wheel.h"
#include "core/udp/pins.h"
#include "core/uv_ptr.h"

namespace lb::tls {
struct Contexts;
class ClientContext;
class ServerContext;
}  // namespace lb::tls

namespace lb::core {

class AccessLog;
class TcpSession;
class UdpListener;

// What a listener is, as of one configuration generation. Immutable; sessions
// keep the one they started with.
struct ListenerRuntime {
  conf::Listener cfg;
  std::shared_ptr<ListenerStats> stats;  // by listener name, across reloads
  Acl acl;                               // cfg.allow / cfg.deny, ready for lookups
  PrefixSet proxy_trusted;               // cfg.proxy_protocol_trusted; empty = any peer
  // This generation's TLS contexts (every listener of a generation shares
  // them; null when nothing uses TLS), and this listener's own when
  // tls = "terminate". Certificates come from the files as they were when
  // the generation was loaded (start, SIGHUP).
  std::shared_ptr<const tls::Contexts> tls;
  const tls::ServerContext* tls_server = nullptr;
};
using ListenerRuntimePtr = std::shared_ptr<const ListenerRuntime>;

// Process-wide state every worker reads.
struct SharedState {
  std::atomic<int64_t> active_connections{0};     // all listeners, all workers
  std::atomic<uint64_t> max_connections{100000};  // [global] max_connections
  BufferBudget buffers;                           // [global] max_buffer_memory
  // Null until the first configuration with an access log; set once, never
  // reset while workers run (a reload retargets or disables the object).
  std::atomic<AccessLog*> access_log{nullptr};
  // Passive health: called on a worker thread after a connect failure
  // (success=false) or an established connection (success=true). Must be
  // thread-safe and cheap. May be empty.
  std::function<void(const BackendPtr&, bool success)> report_backend;
  // UDP sessions a previous program handed over (upgrade in place), by
  // listener and client: see udp/pins.h.
  udp::UdpPins udp_pins;
};

// One bind of a listener as handed to one worker: its listening socket and
// the listener it serves.
struct WorkerBind {
  std::string key;  // "tcp|127.0.0.1:8080": identity across reloads
  int fd = -1;      // a new socket to adopt, or -1: keep the worker's existing one
  ListenerRuntimePtr runtime;
};

// What one Freeze message took out of a worker (upgrade in place).
struct FreezeResult {
  std::vector<FrozenSession> frozen;
  // Sessions that could not be frozen yet but may soon (connecting, when
  // not asked to freeze those, or between the copy and splice paths).
  // TLS-terminated ones never can and are not counted.
  int64_t settling = 0;
  // Every live UDP session of the worker's listeners (upstream_fd unset:
  // the new program re-creates the mapping, see udp/pins.h).
  std::vector<handover::UdpSession> udp;
};

// A frozen session to continue on a worker, with what its record names.
struct ResumeItem {
  ListenerRuntimePtr listener;
  BackendPtr backend;  // null unless the record is Relaying
  FrozenSession session;
};

struct WorkerMessage {
  enum class Kind {
    Listeners,  // replace the listener set (binds not listed are closed)
    Drain,      // stop accepting; sessions continue
    Abort,      // close every session and handle; the loop ends
    Freeze,     // freeze_sessions(tcp, connecting), then on_frozen(result) on the worker's thread
    Resume,     // continue every session of `resume` on this worker
  };
  Kind kind;
  std::vector<WorkerBind> binds;  // Listeners: the whole new set
  uint64_t seq = 0;               // Listeners: reported by listeners_applied() once in use
  // Freeze: called once with what was frozen; must be thread-safe.
  std::function<void(FreezeResult)> on_frozen;
  bool tcp = true;                 // Freeze: TCP sessions too (false: only list the UDP ones)
  bool connecting = false;         // Freeze: sessions still connecting to their backend too
  std::vector<ResumeItem> resume;  // Resume
};

class Worker {
 public:
  Worker(unsigned index, SharedState& shared);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void start();  // spawns the thread
  // What start()'s thread runs: the loop, until an Abort message has closed
  // every handle; then closes the loop and returns uv_loop_close()'s result
  // (0, or UV_EBUSY for a leak, which it logs). Tests that drive the loop
  // themselves call it on their own thread instead of start().
  int run_until_stopped();
  // Takes every session that can be frozen out of this worker (see
  // TcpSession::freeze); the others carry on. On this worker's thread.
  // With tcp = false, only lists the UDP sessions (nothing changes); with
  // connecting, sessions connecting to their backend are frozen too.
  FreezeResult freeze_sessions(bool tcp = true, bool connecting = false);
  void join();  // after an Abort message
  // After join(): true when the loop still had open handles at its end (a
  // leak; the worker has logged it). lb then exits non-zero.
  bool leaked_handles() const { return leaked_handles_; }
  void post(WorkerMessage msg);
  void publish(BackendTablePtr table);

  unsigned index() const { return index_; }
  // Sessions open on this worker (read by the main thread while draining).
  int64_t open_sessions() const { return open_sessions_.load(std::memory_order_relaxed); }
  // Drained: this worker has handled its Drain message (it accepts nothing
  // more) and none of its sessions is open. Until the Drain is handled a
  // connection can still be accepted, so "no session open" alone is not
  // drained. Any thread.
  bool drained() const { return drain_done_.load(std::memory_order_acquire) && open_sessions() == 0; }
  // The seq of the last Listeners message this worker has applied: new
  // connections it accepts from then on use that listener set (any thread).
  uint64_t listeners_applied() const { return listeners_applied_.load(std::memory_order_acquire); }

  // --- used by sessions, on this worker's thread only ---
  uv_loop_t* loop() { return &loop_; }
  TimeoutWheel& timeouts() { return *timeouts_; }
  SharedState& shared() { return shared_; }
  // A connection refused because lb is out of descriptors (its reserve is
  // reached, or a backend socket could not be made): counted as a "limit"
  // refusal of `listener` by the caller; this logs one rate-limited warning
  // for the whole process.
  // (The reserve and floor kept for accept(): core/descriptors.h.)
  static void warn_descriptors_exhausted(const std::string& listener);
  // The per-loop read buffer: every read lands here and is written on at once.
  char* read_buffer() { return read_buffer_.get(); }
  // Pipes for the splice(2) relay of this worker's TCP sessions.
  PipePool& pipe_pool() { return pipe_pool_; }
  // Whether this worker's sessions may move to splice(2) at all (on top of
  // SpliceRelay::supported()). Tests turn it off to pin the copy path.
  bool splice_allowed() const { return splice_allowed_; }
  void set_splice_allowed(bool on) { splice_allowed_ = on; }
  static constexpr size_t kReadBufferSize = 64 * 1024;
  // Picks a backend of pool `pool` (of `listener`'s pool) for a new
  // connection; null when none. *table: the pool's current table, if any.
  Backend* pick(const std::string& pool, const PickContext& ctx, const PoolTable** table);
  Backend* pick(const ListenerRuntime& listener, const PickContext& ctx, const PoolTable** table) {
    return pick(listener.cfg.pool, ctx, table);
  }
  // The flow hash of `client` for pool `pool`'s selector (0 unless it
  // hashes). With hash_key = "sni", `sni` (lower-cased, no trailing dot)
  // when not empty, else the client's address.
  uint64_t flow_hash_for(const std::string& pool, const sockaddr* client, std::string_view sni = {});
  // Pool `pool`'s [pool.tls] in the current table (null: plaintext to its
  // backends): the table pick() chose from.
  std::shared_ptr<const tls::ClientContext> pool_tls(const std::string& pool) const;
  uint64_t flow_hash_for(const ListenerRuntime& listener, const sockaddr* client) {
    return flow_hash_for(listener.cfg.pool, client);
  }
  void session_opened(TcpSession* s);
  void session_closed(TcpSession* s);
  // Sessions that stopped reading because the shared BufferBudget is spent,
  // in FIFO order. A session queues itself once (whatever it waits on) and
  // leaves by cancel or by being woken. Waking happens when this worker frees
  // buffers and, since other workers free budget too, on a kBudgetPollMs
  // timer that runs only while someone waits; each wake takes from the head
  // about as many sessions as the headroom has read buffers for (at least
  // one), so returning budget neither stampedes every waiter nor skips any.
  void wait_for_budget(TcpSession* s);
  void cancel_budget_wait(TcpSession* s);
  void wake_budget_waiters();
  static constexpr uint64_t kBudgetPollMs = 10;
  // UDP: the batch receive buffer (recvmmsg slots of 64 KiB each), allocated
  // on first use so TCP-only workers do not carry it.
  static constexpr size_t kUdpBatch = 20;
  static constexpr size_t kUdpBufferSize = kUdpBatch * 64 * 1024;
  char* udp_buffer();
  uint64_t table_version() const { return table_ ? table_->version : 0; }
  // Whether `b` is still a candidate of pool `pool` in the current table.
  bool is_candidate(const std::string& pool, const Backend* b) const;
  void count_session(int delta) { open_sessions_.fetch_add(delta, std::memory_order_relaxed); }
  void udp_listener_added(UdpListener* l) { udp_all_.push_back(l); }
  void udp_listener_removed(UdpListener* l);

 private:
  struct BindSocket;

  static void on_async(uv_async_t* a);
  // Every kPipeTrimMs: closes pooled pipes unused for that long, and lets
  // the pool try for full-size pipes again after a shortage.
  static void on_trim(uv_timer_t* t);
  void close_timers();
  static constexpr uint64_t kPipeTrimMs = 1000;
  void drain_inbox();
  void apply_binds(const std::vector<WorkerBind>& binds);
  void close_binds();
  void drain();
  void abort_all();
  void swap_table(BackendTablePtr table);
  static void on_connection(uv_stream_t* server, int status);
  void accept_one(BindSocket* l);

  const unsigned index_;
  SharedState& shared_;
  uv_loop_t loop_;
  UvPtr<uv_async_t> async_;  // null once the worker stopped (under inbox_mu_)
  std::unique_ptr<TimeoutWheel> timeouts_;
  std::unique_ptr<char[]> read_buffer_;
  PipePool pipe_pool_;            // outlives the loop: the destructor runs after run_until_stopped()
  UvPtr<uv_timer_t> trim_timer_;  // gives idle pipes back to the kernel
  uint64_t trim_seen_acquires_ = 0;
  static void on_budget_timer(uv_timer_t* t);
  UvPtr<uv_timer_t> budget_timer_;     // runs while budget_head_ is set
  TcpSession* budget_head_ = nullptr;  // sessions waiting for budget (FIFO)
  TcpSession* budget_tail_ = nullptr;
  std::thread thread_;

  std::mutex inbox_mu_;
  std::vector<WorkerMessage> inbox_;
  BackendTablePtr pending_table_;

  std::vector<std::unique_ptr<BindSocket>> binds_;
  BackendTablePtr table_;
  SelectorSet selectors_;              // one per pool of table_
  TcpSession* sessions_ = nullptr;     // intrusive list of open sessions
  std::vector<UdpListener*> udp_all_;  // live and retired UDP listeners
  std::unique_ptr<char[]> udp_buffer_;
  std::atomic<int64_t> open_sessions_{0};
  // Set (release) once a Drain has closed every bind: the sessions counted
  // before it are then visible to the thread that reads it (acquire).
  std::atomic<bool> drain_done_{false};
  std::atomic<uint64_t> listeners_applied_{0};
  bool aborting_ = false;
  bool splice_allowed_ = true;
  bool loop_closed_ = false;
  bool leaked_handles_ = false;  // written by the worker thread before join()
};

}  // namespace lb::core
