#include "core/splice_relay.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace lb::core {

namespace {

std::atomic<bool> g_disabled{false};

// MOVE: let the kernel move pages instead of copying where it can (a hint).
// NONBLOCK: never sleep on the pipe; the sockets are non-blocking already.
constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

bool env_disables(const char* v) {
  if (!v) return false;
  return std::strcmp(v, "0") == 0 || strcasecmp(v, "off") == 0 || strcasecmp(v, "false") == 0 ||
         strcasecmp(v, "no") == 0;
}

// One byte through socket -> pipe -> socket on a socketpair: the same two
// splice paths the relay uses. TCP has supported both since Linux 2.6.25, so
// this mostly catches seccomp filters and exotic kernels.
bool probe() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return false;
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
    ::close(sv[0]);
    ::close(sv[1]);
    return false;
  }
  char c = 'x';
  bool ok = ::write(sv[0], &c, 1) == 1 && splice(sv[1], nullptr, p[1], nullptr, 1, kSpliceFlags) == 1 &&
            splice(p[0], nullptr, sv[0], nullptr, 1, kSpliceFlags) == 1;
  c = 0;
  ok = ok && ::read(sv[1], &c, 1) == 1 && c == 'x';
  for (int fd : {sv[0], sv[1], p[0], p[1]}) ::close(fd);
  return ok;
}

}  // namespace

const char* to_string(SpliceResult r) {
  switch (r) {
    case SpliceResult::Ok:
      return "ok";
    case SpliceResult::Reset:
      return "reset";
    case SpliceResult::Unsupported:
      return "unsupported";
    case SpliceResult::NoPipe:
      return "no_pipe";
  }
  return "?";
}

bool SpliceRelay::detect(const char* lb_splice_env) {
  if (env_disables(lb_splice_env)) return false;
  return probe();
}

bool SpliceRelay::supported() {
  // Magic static: the environment is read and the probe run once per process,
  // by whichever worker asks first.
  static const bool available = detect(std::getenv("LB_SPLICE"));
  return available && !g_disabled.load(std::memory_order_relaxed);
}

void SpliceRelay::disable() { g_disabled.store(true, std::memory_order_relaxed); }

SpliceRelay::SpliceRelay(uv_loop_t* loop, PipePool& pool, int client_fd, int backend_fd,
                         const Handler* handler, void* ctx)
    : loop_(loop), pool_(pool), handler_(handler), ctx_(ctx) {
  fds_[kClient] = client_fd;
  fds_[kBackend] = backend_fd;
  ways_[0].src = kClient;
  ways_[0].dst = kBackend;
  ways_[1].src = kBackend;
  ways_[1].dst = kClient;
}

SpliceRelay::~SpliceRelay() {
  // Deleted while running (not through close()): the polls close detached,
  // their callbacks only free them; then stop() finds none to close.
  for (UvPtr<uv_poll_t>& p : polls_) p.reset();
  if (state_ == State::Running) finish(SpliceResult::Reset, true, false, false);
  for (Way& w : ways_) give_back_pipe(w);
  close_fd(kClient, true);
  close_fd(kBackend, true);
}

int SpliceRelay::start(std::string_view preface) {
  if (state_ != State::Idle || fds_[kClient] < 0 || fds_[kBackend] < 0) return UV_EINVAL;
  Way& up = ways_[0];
  if (!preface.empty()) {
    int rc = pool_.acquire(&up.pipe);
    if (rc < 0) return rc;
    ssize_t n;
    do {
      n = preface.size() <= up.pipe.capacity ? ::write(up.pipe.wr, preface.data(), preface.size()) : -2;
    } while (n == -1 && errno == EINTR);
    if (n != static_cast<ssize_t>(preface.size())) {
      int err = n == -1 ? -errno : UV_ENOBUFS;
      pool_.release(&up.pipe, n > 0 ? static_cast<size_t>(n) : 0);
      return err;
    }
    up.flow.on_queued(preface.size());
    // Flushed on the backend's first writable event, ahead of any client byte.
    up.dst_blocked = true;
  }
  // Keep little unsent data in the kernel: a socket's backlog beyond the
  // window is sent when the peer's ACK arrives, in the softirq of whichever
  // CPU processed that ACK (on loopback, the peer's). Bounded, lb sends it
  // from its own splice calls instead. Best effort; a smaller socket buffer
  // footprint too.
  for (int side = 0; side < 2; ++side) {
    int lowat = static_cast<int>(kNotSentLowat);
    ::setsockopt(fds_[side], IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
  }
  int rc = 0;
  for (int side = 0; side < 2 && rc == 0; ++side) {
    polls_[side] = make_uv<uv_poll_t>(loop_, this, &rc, uv_poll_init_socket, fds_[side]);
    if (polls_[side]) ++open_polls_;
  }
  if (rc == 0) {
    state_ = State::Running;
    rc = update_interest();
    if (rc != 0) state_ = State::Idle;
  }
  if (rc != 0) {
    // Undo: back to "not started, fds owned". Initialised handles close
    // detached (their callback frees them and never reaches us).
    for (UvPtr<uv_poll_t>& p : polls_) p.reset();
    open_polls_ = 0;
    interest_[0] = interest_[1] = 0;
    for (Way& w : ways_) {
      give_back_pipe(w);
      w.flow = Direction{};
      w.dst_blocked = false;
      w.no_pipe = false;
    }
    return rc;
  }
  return 0;
}

void SpliceRelay::abort() { end(true); }

void SpliceRelay::close() { end(false); }

void SpliceRelay::end(bool reset) {
  if (state_ == State::Idle) {
    close_fd(kClient, reset);
    close_fd(kBackend, reset);
    return;
  }
  finish(SpliceResult::Reset, reset, false, false);
}

bool SpliceRelay::take_fds(int* client_fd, int* backend_fd) {
  if (state_ == State::Running || fds_[kClient] < 0 || fds_[kBackend] < 0) return false;
  *client_fd = fds_[kClient];
  *backend_fd = fds_[kBackend];
  fds_[kClient] = fds_[kBackend] = -1;
  return true;
}

void SpliceRelay::on_poll_cb(uv_poll_t* h, int status, int events) {
  auto* self = static_cast<SpliceRelay*>(h->data);
  if (!self) return;
  self->on_events(h == self->polls_[kClient].get() ? kClient : kBackend, status, events);
}

void SpliceRelay::on_events(Side side, int status, int events) {
  if (state_ != State::Running) return;
  if (status < 0) {
    // The poller saw an error on the socket (libuv reports POLLERR as
    // UV_EBADF and stops the handle): a reset, attributed like a read error.
    fail(side, true, status);
    return;
  }
  // Writable first: draining towards this side may resume the other side's
  // reading, and frees pipe room before this side's own data is read.
  if ((events & UV_WRITABLE) && way_into(side).dst_blocked && !drain(way_into(side))) return;
  if (events & UV_READABLE) {
    Way& w = way_from(side);
    if (w.flow.wants_read() && !w.no_pipe && !pump(w)) return;
  }
  if (!hand_back_when_empty()) return;
  int rc = update_interest();
  if (rc != 0) finish(SpliceResult::Reset, true, false, true);
}

bool SpliceRelay::pump(Way& w) {
  size_t budget = kBudget;
  size_t moved = 0;
  for (;;) {
    if (!w.pipe.valid()) {
      int rc = pool_.acquire(&w.pipe);
      if (rc < 0) {
        // No pipe of a useful size (quota, fds): nothing of this source was
        // read, so the connection can go on on the copy path once the other
        // direction has nothing in flight (on_events checks).
        if (!report(w, moved)) return false;
        w.no_pipe = true;
        return true;
      }
    }
    const size_t limit = std::min(Direction::kHighWater, w.pipe.capacity);
    if (w.flow.queued >= limit) {
      w.flow.paused = true;
      break;
    }
    const size_t asked = std::min(limit - w.flow.queued, budget);
    ssize_t n = splice(fds_[w.src], nullptr, w.pipe.wr, nullptr, asked, kSpliceFlags);
    if (n > 0) {
      moved_any_ = true;
      moved += static_cast<size_t>(n);
      budget -= static_cast<size_t>(n);
      w.flow.on_queued(static_cast<size_t>(n));
      // Straight on to the destination unless it is known to be full (then
      // its writable event does it, and the pipe soaks up the source up to
      // the high-water mark).
      if (!w.dst_blocked) {
        bool resumed = false;
        int rc = flush(w, &resumed);
        if (rc < 0) {
          if (!report(w, moved)) return false;
          fail(w.dst, false, rc);
          return false;
        }
      }
      // A short read almost always means the socket is empty now: skip the
      // splice that would only say EAGAIN. Should more have arrived, the
      // level-triggered poll reports the source again on the next turn.
      if (!w.flow.wants_read() || budget == 0 || static_cast<size_t>(n) < asked) break;
      continue;
    }
    if (n == 0) {
      // EOF from the source. Passed on once the pipe is empty.
      if (!report(w, moved)) return false;
      w.flow.on_eof();
      if (w.flow.queued == 0) return pass_eof(w);
      return true;
    }
    int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN) {
      // With bytes queued the pipe may be the one that is full (it counts
      // buffers, not bytes, so it can fill below its capacity), and that is
      // indistinguishable from an empty source. Pause: the destination's
      // writable event drains the pipe and resumes reading, so nothing
      // stalls and nothing spins.
      if (w.flow.queued > 0) w.flow.paused = true;
      break;
    }
    if (!report(w, moved)) return false;
    fail(w.src, true, -err);
    return false;
  }
  if (!report(w, moved)) return false;
  if (w.flow.queued == 0) give_back_pipe(w);
  return true;
}

int SpliceRelay::flush(Way& w, bool* resumed) {
  while (w.flow.queued > 0) {
    ssize_t n = splice(w.pipe.rd, nullptr, fds_[w.dst], nullptr, w.flow.queued, kSpliceFlags);
    if (n > 0) {
      moved_any_ = true;
      if (w.flow.on_drained(static_cast<size_t>(n))) *resumed = true;
      continue;
    }
    if (n == 0) return -EPIPE;  // cannot happen with bytes in the pipe; do not spin
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      w.dst_blocked = true;
      return 0;
    }
    return -errno;
  }
  w.dst_blocked = false;
  return 0;
}

bool SpliceRelay::drain(Way& w) {
  bool resumed = false;
  int rc = flush(w, &resumed);
  if (rc < 0) {
    fail(w.dst, false, rc);
    return false;
  }
  if (w.flow.queued == 0 && w.flow.eof) return pass_eof(w);
  // The source was paused on our account and surely has bytes waiting: read
  // now rather than one loop iteration later.
  if (resumed) return pump(w);
  if (w.flow.queued == 0) give_back_pipe(w);
  return true;
}

bool SpliceRelay::pass_eof(Way& w) {
  if (w.flow.finished) return true;
  give_back_pipe(w);
  if (::shutdown(fds_[w.dst], SHUT_WR) != 0) {
    fail(w.dst, false, -errno);
    return false;
  }
  w.flow.on_shutdown_done();
  if (relay_finished(ways_[0].flow, ways_[1].flow)) {
    finish(SpliceResult::Ok, false, false, true);
    return false;
  }
  if (handler_->eof_passed) handler_->eof_passed(ctx_, to_backend(w));
  return state_ == State::Running;  // the owner may have ended us
}

bool SpliceRelay::freeze(std::string* to_backend, std::string* to_client, int* client_fd, int* backend_fd) {
  if (state_ != State::Running) return false;
  if (!drain_pipe(ways_[0], to_backend) || !drain_pipe(ways_[1], to_client)) {
    // Bytes were taken out of a pipe and cannot all be had: the stream is
    // broken, reset it.
    finish(SpliceResult::Reset, true, false, true);
    return false;
  }
  stop();
  *client_fd = fds_[kClient];
  *backend_fd = fds_[kBackend];
  fds_[kClient] = fds_[kBackend] = -1;
  return true;
}

bool SpliceRelay::drain_pipe(Way& w, std::string* out) {
  out->clear();
  if (w.flow.queued == 0) return true;
  out->resize(w.flow.queued);
  size_t got = 0;
  while (got < out->size()) {
    ssize_t n = ::read(w.pipe.rd, out->data() + got, out->size() - got);
    if (n > 0) {
      got += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return false;  // EOF or EAGAIN with bytes counted as queued: cannot happen
  }
  w.flow.on_drained(got);
  w.flow.paused = false;
  return true;
}

bool SpliceRelay::hand_back_when_empty() {
  if (!ways_[0].no_pipe && !ways_[1].no_pipe) return true;
  if (ways_[0].flow.queued > 0 || ways_[1].flow.queued > 0) return true;  // wait for the other pipe to drain
  finish(SpliceResult::NoPipe, false, false, true);
  return false;
}

void SpliceRelay::give_back_pipe(Way& w) {
  // A pipe with bytes left is closed by the pool, never reused.
  pool_.release(&w.pipe, w.flow.queued);
}

int SpliceRelay::update_interest() {
  for (int s = 0; s < 2; ++s) {
    Side side = static_cast<Side>(s);
    int want = 0;
    if (way_from(side).flow.wants_read() && !way_from(side).no_pipe) want |= UV_READABLE;
    if (way_into(side).dst_blocked) want |= UV_WRITABLE;
    if (want == interest_[s]) continue;
    int rc = want ? uv_poll_start(polls_[s].get(), want, on_poll_cb) : uv_poll_stop(polls_[s].get());
    if (rc != 0) return rc;
    interest_[s] = want;
  }
  return 0;
}

bool SpliceRelay::report(Way& w, size_t bytes) {
  if (bytes > 0) handler_->activity(ctx_, to_backend(w), bytes);
  return state_ == State::Running;  // the owner may have ended us
}

void SpliceRelay::fail(Side side, bool reading, int err) {
  // EINVAL before anything moved: splice does not work on these sockets.
  // Nothing was consumed or sent, so the owner can still fall back.
  if (err == -EINVAL && !moved_any_) {
    finish(SpliceResult::Unsupported, false, false, true);
    return;
  }
  finish(SpliceResult::Reset, true, side == kBackend && reading, true);
}

void SpliceRelay::stop() {
  state_ = State::Closing;
  // uv_close stops polling synchronously (the fd leaves the epoll set), so
  // the fds may be closed right after.
  for (UvPtr<uv_poll_t>& p : polls_) close_then(p, on_poll_closed, this);
  for (Way& w : ways_) give_back_pipe(w);
}

void SpliceRelay::finish(SpliceResult r, bool reset, bool backend_failed, bool notify) {
  if (state_ != State::Running) return;
  stop();
  if (r != SpliceResult::Unsupported && r != SpliceResult::NoPipe) {
    close_fd(kClient, reset);
    close_fd(kBackend, reset);
  }
  if (notify) handler_->finished(ctx_, r, backend_failed);
}

void SpliceRelay::close_fd(Side side, bool reset) {
  int fd = fds_[side];
  if (fd < 0) return;
  fds_[side] = -1;
  if (reset) {
    // Abortive close: the peer gets RST, not FIN (what uv_tcp_close_reset does).
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  ::close(fd);
}

void SpliceRelay::on_poll_closed(void* relay) {
  auto* self = static_cast<SpliceRelay*>(relay);
  if (--self->open_polls_ > 0) return;
  self->state_ = State::Closed;
  self->handler_->closed(self->ctx_);  // may delete the relay: nothing after this
}

}  // namespace lb::core
