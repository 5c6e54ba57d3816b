// TcpSession, the splice path: moving a relaying session to a SpliceRelay
// (path_ Copy -> Splice), the relay's callbacks, and the way back
// (Splice -> Unsplicing -> Copy) when the relay hands the sockets back.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/tcp_session.h"

namespace lb::core {

// Moves a busy connection to splice(2), like HAProxy's splice-auto: the
// switch costs a few syscalls (two dups, two closes, epoll changes), more
// than a short exchange saves, so a connection starts on the copy path and
// switches once it has relayed kSpliceAfterBytes and had a read of
// kSpliceReadMin (a bulk stream, not small messages). Only at a quiet moment:
// nothing queued either way and no half-close under way, so every byte read
// so far has reached the kernel and the relay takes over a clean stream.
void TcpSession::maybe_splice() {
  if (tls_ || up_tls_ || state_ != State::Relaying || path_ != Path::Copy || !bulk_seen_ ||
      bytes_to_backend_ + bytes_to_client_ < kSpliceAfterBytes)
    return;
  const Direction& up = up_.flow;
  const Direction& down = down_.flow;
  if (up.queued || down.queued || up.eof || down.eof || up.paused || down.paused || starved_) return;
  // No useful pipe to be had for now (PipePool): stay on the copy path; the
  // pool tries again within a second and a later read retries the switch.
  if (!worker_.splice_allowed() || !SpliceRelay::supported() || !worker_.pipe_pool().can_acquire()) return;
  if (uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(client_.get())) != 0 ||
      uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(upstream_.get())) != 0)
    return;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(client_.get()));
  uv_read_stop(reinterpret_cast<uv_stream_t*>(upstream_.get()));
  if (switch_to_splice()) return;
  // Stay on the copy path.
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(client_.get()), on_alloc, on_read_cb) != 0 ||
      uv_read_start(reinterpret_cast<uv_stream_t*>(upstream_.get()), on_alloc, on_read_cb) != 0)
    finish(Result::Reset, true);
}

// Hands both sockets to a SpliceRelay: duplicates of their fds go to the
// relay, the uv_tcp_t handles close (libuv forbids polling an fd a live
// stream owns). False when that cannot happen; the copy path goes on then.
bool TcpSession::switch_to_splice() {
  uv_os_fd_t cfd, bfd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(client_.get()), &cfd) != 0 ||
      uv_fileno(reinterpret_cast<uv_handle_t*>(upstream_.get()), &bfd) != 0)
    return false;
  // dup() rather than fcntl(F_DUPFD_CLOEXEC): ThreadSanitizer follows fds
  // through dup, and a descriptor number another worker closed just before
  // would otherwise look like a race. lb never forks, so setting CLOEXEC
  // right after is as good.
  // The relay has no timeout node of its own: a backend socket whose
  // keepalive is not set yet gets it now (a bulk stream lives long anyway).
  if (keepalive_.armed()) set_backend_keepalive(bfd);
  int c = ::dup(cfd);
  if (c < 0) return false;
  int b = ::dup(bfd);
  if (b < 0) {
    ::close(c);
    return false;
  }
  ::fcntl(c, F_SETFD, FD_CLOEXEC);
  ::fcntl(b, F_SETFD, FD_CLOEXEC);
  auto* relay = new SpliceRelay(worker_.loop(), worker_.pipe_pool(), c, b, &kSpliceHandler, this);
  if (relay->start() != 0) {
    // Nothing moved yet: drop the duplicates (the originals stay open in
    // their handles) and stay on the copy path.
    int c2 = -1, b2 = -1;
    if (relay->take_fds(&c2, &b2)) {
      ::close(c2);
      ::close(b2);
    }
    delete relay;
    return false;
  }
  relay_ = relay;
  path_ = Path::Splice;
  ++refs_;
  close_handle(client_, false);
  close_handle(upstream_, false);
  return true;
}

const SpliceRelay::Handler TcpSession::kSpliceHandler = {
    &TcpSession::on_splice_activity,
    &TcpSession::on_splice_finished,
    &TcpSession::on_splice_closed,
    &TcpSession::on_splice_eof_passed,
};

void TcpSession::on_splice_activity(void* ctx, bool to_backend, size_t bytes) {
  auto* s = static_cast<TcpSession*>(ctx);
  s->worker_.timeouts().touch(&s->timeout_);
  s->count_bytes(to_backend, bytes);
}

void TcpSession::on_splice_eof_passed(void* ctx, bool) {
  auto* s = static_cast<TcpSession*>(ctx);
  if (s->state_ == State::Relaying) s->state_ = State::HalfClosed;
}

void TcpSession::on_splice_finished(void* ctx, SpliceResult result, bool backend_failed) {
  auto* s = static_cast<TcpSession*>(ctx);
  if (!s->relaying()) return;
  if (backend_failed) s->report_backend_failure();
  // Unsupported although the start-up probe passed (an exotic socket): this
  // connection goes back to the copy path, and later ones copy from the
  // start. NoPipe: only this connection, for now (the pool retries later).
  // Either way nothing is in flight: the sockets come back in closed().
  if (result == SpliceResult::Unsupported || result == SpliceResult::NoPipe) {
    if (result == SpliceResult::Unsupported) SpliceRelay::disable();
    s->path_ = Path::Unsplicing;
    return;
  }
  s->state_ = State::Closing;
  s->result_ = result == SpliceResult::Ok ? Result::Ok : Result::Reset;
  s->worker_.timeouts().disarm(&s->timeout_);
}

void TcpSession::on_splice_closed(void* ctx) {
  auto* s = static_cast<TcpSession*>(ctx);
  SpliceRelay* relay = s->relay_;
  s->relay_ = nullptr;
  if (s->path_ == Path::Unsplicing && s->relaying()) s->back_to_copy_path(*relay);
  delete relay;  // resets any fd it still owns
  s->unref();
}

void TcpSession::back_to_copy_path(SpliceRelay& relay) {
  path_ = Path::Copy;
  up_.flow = relay.flow(true);
  down_.flow = relay.flow(false);
  up_.flow.queued = down_.flow.queued = 0;  // nothing was in flight: the relay's promise
  up_.flow.paused = down_.flow.paused = false;
  int fds[2] = {-1, -1};
  if (!relay.take_fds(&fds[0], &fds[1])) {
    adopt_fds(-1, -1);  // empty handles, so that finish() has something to close
    finish(Result::Reset, true);
    return;
  }
  if (!adopt_fds(fds[0], fds[1])) return;
  if (up_.flow.wants_read() && !resume_read(client_.get())) return;
  if (down_.flow.wants_read()) resume_read(upstream_.get());
}

bool TcpSession::adopt_fds(int client_fd, int backend_fd) {
  client_ = make_uv<uv_tcp_t>(worker_.loop(), this, nullptr, uv_tcp_init);
  upstream_ = make_uv<uv_tcp_t>(worker_.loop(), this, nullptr, uv_tcp_init);
  upstream_reading_ = false;
  refs_ += 2;
  if (client_fd < 0) return false;
  bool ok = true;
  int fds[2] = {client_fd, backend_fd};
  uv_tcp_t* handles[2] = {client_.get(), upstream_.get()};
  for (int i = 0; i < 2; ++i) {
    // The relay's unsent-data limit is for splicing; the copy path queues
    // in lb what the kernel refuses, so leave the kernel its default (0).
    int lowat = 0;
    ::setsockopt(fds[i], IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
    if (uv_tcp_open(handles[i], fds[i]) != 0) {
      linger l{1, 0};  // reset, as any failure of a relayed connection
      ::setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &l, sizeof l);
      ::close(fds[i]);
      ok = false;
    }
  }
  if (!ok) finish(Result::Reset, true);
  return ok;
}

}  // namespace lb::core
