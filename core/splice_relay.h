// SpliceRelay: the zero-copy relay between a client and a backend socket.
//
// The copy path (TcpSession) reads every byte into the worker's buffer and
// writes it out again: two copies across the user/kernel boundary per byte.
// This relay moves the bytes with splice(2) socket -> pipe -> socket, so they
// never leave the kernel. It reproduces the copy path's semantics exactly:
//
//  * Backpressure. Bytes the destination has not taken yet wait in the
//    direction's pipe; reading the source stops when they reach the
//    high-water mark (Direction::kHighWater, 256 KiB, or the pipe's capacity
//    if the kernel granted less) and resumes at the low-water mark
//    (Direction::kLowWater, 64 KiB). A destination that does not read thus
//    pins at most one pipe's worth of bytes in lb.
//  * Half-close. EOF from a source is passed on as shutdown(SHUT_WR) on the
//    destination once the pipe has drained; the other direction goes on.
//    Both directions passed on => finished Ok, both sockets closed.
//  * Reset. Any error on either socket (ECONNRESET, EPIPE, ...) resets both
//    (SO_LINGER {1,0} then close) => finished Reset. As on the copy path,
//    backend_failed is set only when the error came from *reading* the
//    backend (or the backend socket reported an error to the poller).
//
// Idle connections hold no pipe: a direction takes a pipe from the worker's
// PipePool on its first byte and gives it back as soon as the pipe is empty
// and the source has nothing more (EAGAIN) or ended. A relay at rest is this
// object plus two uv_poll_t handles and the two socket fds.
//
// Syscalls per chunk: splice in, splice out, nothing else (no epoll_ctl
// while data flows: interest changes only on backpressure and EOF). A
// callback keeps going until the source runs dry (EAGAIN, or a short read,
// which on TCP means the receive queue is empty) or the direction has moved
// kBudget bytes; then it yields to other connections, and the
// level-triggered poll brings it back if more is waiting. No allocation
// after start(), no locks.
//
// ---- Contract with the owner (TcpSession) --------------------------------
//
// Taking over the sockets. libuv forbids polling an fd that a live stream
// owns, and a uv_tcp_t cannot hand its fd over. The owner therefore:
//   1. makes sure neither uv_tcp_t is reading and neither has a pending write
//      or shutdown (switch right after the connect completed, before
//      uv_read_start; any bytes that must precede the client's stream to the
//      backend, e.g. a PROXY header, are given to start() as the preface
//      instead of being uv_write()n). Socket options (TCP_NODELAY) are set
//      before: they belong to the socket and survive the dup,
//   2. dup()s both fds (F_DUPFD_CLOEXEC),
//   3. uv_close()s both uv_tcp_t handles (that closes the original fds and
//      removes them from the loop's epoll set; the duplicates keep the
//      connections open),
//   4. constructs the relay with the duplicates (the relay owns them from
//      here on) and calls start().
//
// Callbacks (a Handler table of plain function pointers + the owner's ctx,
// so no per-connection std::function allocation) run on the loop thread:
//   * activity(ctx, to_backend, bytes): bytes taken from a source, reported
//     once per poll callback per direction, before any finished() of the same
//     callback. The owner counts them and touches its idle timer. The preface
//     is not reported.
//   * finished(ctx, result, backend_failed): once, when the relay itself ends
//     the relay (Ok, Reset or Unsupported). On Ok/Reset both fds are already
//     closed. Not called after the owner's own abort() / close().
//   * closed(ctx): exactly once after a successful start(), when both poll
//     handles are closed, whoever ended the relay. From then on the relay
//     touches nothing; the owner may delete it here (and only from here on).
//     Deleting the relay inside finished() is not allowed.
// The owner may call abort()/close() from any callback; both are idempotent.
//
// Unsupported and falling back. The cheap check is SpliceRelay::supported()
// before switching: a once-per-process probe (splice through a pipe between a
// socketpair), false when env LB_SPLICE is "0"/"off"/"false"/"no" (read once),
// or after disable(). Should a splice still fail with EINVAL before any byte
// has moved either way, the relay ends with finished(Unsupported) *without*
// closing the fds and without having consumed or sent anything (a preface is
// still unsent); after closed() the owner takes them back with take_fds(),
// wraps them in fresh uv_tcp_t handles (uv_tcp_open) and continues on the
// copy path, re-sending its preface; it should also call disable() so later
// sessions skip splice. An owner that does not take them may just delete the
// relay: the destructor resets any fd it still owns. A failed start() (< 0)
// leaves the relay in the same "not started, fds still owned" state, without
// any callback.
//
// No pipe. A direction takes a pipe on its first byte; when the PipePool has
// none of a useful size (the user's pipe quota is spent, or out of fds), the
// relay does not read that source and, as soon as the other direction's
// pipe is empty too (no byte in flight either way), ends with
// finished(NoPipe), fds kept, exactly like Unsupported but possibly after
// bytes moved: flow() then tells the owner which directions already passed
// their EOF on, and the owner goes on on the copy path (without disable()).
//
// Signals: splice into a socket whose peer is gone raises SIGPIPE like
// write(2) does; the process must ignore it (lb does at start).
//
// Thread: one worker loop; not thread-safe. Not copyable or movable (the poll
// handles point at it).
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/flow_control.h"
#include "core/pipe_pool.h"
#include "core/uv_ptr.h"

namespace lb::core {

// Unsupported and NoPipe hand the connection back to the owner (see the
// contract): splice refused these sockets, or no useful pipe could be had.
enum class SpliceResult { Ok, Reset, Unsupported, NoPipe };
const char* to_string(SpliceResult r);

class SpliceRelay {
 public:
  struct Handler {
    void (*activity)(void* ctx, bool to_backend, size_t bytes);
    void (*finished)(void* ctx, SpliceResult result, bool backend_failed);
    void (*closed)(void* ctx);
    // Optional: a direction passed its EOF on (shutdown of its destination
    // done) while the other may still flow.
    void (*eof_passed)(void* ctx, bool to_backend) = nullptr;
  };

  // Bytes one direction moves per poll callback before yielding (fairness).
  static constexpr size_t kBudget = 1024 * 1024;
  // TCP_NOTSENT_LOWAT set on both sockets by start(): unsent bytes the
  // kernel holds per socket before it stops taking more. Measured on
  // loopback, iperf3 through lb (1 and 8 streams): +15-20 % against no limit.
  static constexpr size_t kNotSentLowat = 128 * 1024;

  // Takes ownership of the two connected, non-blocking TCP socket fds.
  // `handler` must outlive the relay (a static table); `pool` too.
  SpliceRelay(uv_loop_t* loop, PipePool& pool, int client_fd, int backend_fd, const Handler* handler,
              void* ctx);
  // Resets any fd it still owns. Deleting a running relay (before closed())
  // is a misuse but safe: it resets both sides, detaches its handles and no
  // callback follows.
  ~SpliceRelay();
  SpliceRelay(const SpliceRelay&) = delete;
  SpliceRelay& operator=(const SpliceRelay&) = delete;

  // Starts relaying. `preface_to_backend` is sent to the backend before any
  // client byte (it is written into the client->backend pipe, so it must fit
  // in one pipe: UV_ENOBUFS otherwise). Returns 0, or a libuv error with
  // nothing started (see the contract above).
  int start(std::string_view preface_to_backend = {});
  // Resets both sides now (idle timeout with reset, worker abort).
  void abort();
  // Closes both sides without reset (timeout): pending bytes are dropped.
  void close();
  // Stops a running relay without ending the connection (freezing a session
  // to move it): the bytes waiting in each direction's pipe are read out
  // into `to_backend` / `to_client`, the pipes go back to the pool, polling
  // stops, and both fds are handed to the caller (like take_fds()); flow()
  // keeps each direction's half-close state. No finished() follows; closed()
  // does, as always. False when the relay is not running (nothing changed),
  // or when a pipe could not be read (the relay then ended with
  // finished(Reset)).
  bool freeze(std::string* to_backend, std::string* to_client, int* client_fd, int* backend_fd);
  // After finished(Unsupported) or a failed start(): hands the fds back to
  // the caller (who then owns them). False when the relay no longer has them.
  bool take_fds(int* client_fd, int* backend_fd);

  // --- introspection (tests, stats) ---
  bool running() const { return state_ == State::Running; }
  // Bytes waiting in a direction's pipe for the destination.
  size_t in_flight(bool to_backend) const { return way(to_backend).flow.queued; }
  bool holds_pipe(bool to_backend) const { return way(to_backend).pipe.valid(); }
  // Whether the direction's source is being read (not paused, not ended).
  bool reading(bool to_backend) const {
    return way(to_backend).flow.wants_read() && !way(to_backend).no_pipe;
  }
  // A direction's state: after finished(Unsupported/NoPipe) nothing is
  // queued either way; eof/finished say what was passed on already.
  const Direction& flow(bool to_backend) const { return way(to_backend).flow; }

  // Whether new sessions should use splice (see the contract above).
  static bool supported();
  // The uncached decision behind supported(): the environment value (may be
  // null) and a fresh probe. For tests.
  static bool detect(const char* lb_splice_env);
  // Turns supported() off for the rest of the process (any thread).
  static void disable();

 private:
  enum class State { Idle, Running, Closing, Closed };
  enum Side { kClient = 0, kBackend = 1 };

  // One direction: src -> pipe -> dst.
  struct Way {
    Side src;
    Side dst;
    Direction flow;  // queued == bytes in the pipe
    Pipe pipe;
    bool dst_blocked = false;  // dst said EAGAIN with bytes still queued
    bool no_pipe = false;      // the pool had no pipe: source not read, handing back
  };

  const Way& way(bool to_backend) const { return ways_[to_backend ? 0 : 1]; }
  Way& way_from(Side src) { return ways_[src == kClient ? 0 : 1]; }
  Way& way_into(Side dst) { return ways_[dst == kBackend ? 0 : 1]; }
  bool to_backend(const Way& w) const { return w.src == kClient; }

  void on_events(Side side, int status, int events);
  // Reads the source into the pipe (and on to the destination while it
  // takes it) until EAGAIN, EOF, a full pipe or the budget. False when the
  // relay ended.
  bool pump(Way& w);
  // Empties the pipe into the destination as far as it takes. 0 or -errno.
  int flush(Way& w, bool* resumed);
  // The destination became writable.
  bool drain(Way& w);
  // The pipe is empty and the source ended: pass the EOF on.
  bool pass_eof(Way& w);
  void give_back_pipe(Way& w);
  // A direction could not get a pipe: hand back once nothing is in flight.
  // False when the relay ended.
  bool hand_back_when_empty();
  // Starts/stops each poll handle for what its fd is needed for now.
  int update_interest();
  // Ends the relay: Ok/Reset close the fds (Reset abortively), Unsupported
  // keeps them. `notify` reports finished() to the owner.
  void finish(SpliceResult r, bool reset, bool backend_failed, bool notify);
  // Stops polling (the handles close) and gives the pipes back; the fds stay.
  void stop();
  // Reads the bytes queued in `w`'s pipe into `out`. False on a read error.
  bool drain_pipe(Way& w, std::string* out);
  // An error `err` (-errno or a libuv code) on `side` while reading from it
  // or writing to it.
  void fail(Side side, bool reading, int err);
  bool report(Way& w, size_t bytes);
  void close_fd(Side side, bool reset);
  void end(bool reset);  // abort() and close()

  static void on_poll_cb(uv_poll_t* h, int status, int events);
  static void on_poll_closed(void* relay);

  uv_loop_t* loop_;
  PipePool& pool_;
  const Handler* handler_;
  void* ctx_;
  int fds_[2];
  UvPtr<uv_poll_t> polls_[2];
  int interest_[2] = {0, 0};  // events each poll handle is started with
  int open_polls_ = 0;
  Way ways_[2];  // [0] client -> backend, [1] backend -> client
  State state_ = State::Idle;
  bool moved_any_ = false;  // a byte went through splice (either way)
};

}  // namespace lb::core
