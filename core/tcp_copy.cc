// TcpSession, the copy path: Relaying and HalfClosed with path_ == Copy.
// Every read lands in the worker's buffer and is written on at once; only
// what the destination's kernel refused is copied, into a WriteReq.
#include <sys/socket.h>

#include <cstdlib>
#include <cstring>

#include "core/proxy_protocol.h"
#include "core/tcp_session.h"

namespace lb::core {

// A queued write: header and the bytes that could not be written at once, in
// one allocation. Only created when the destination's socket buffer is full.
struct TcpSession::WriteReq {
  uv_write_t req;
  TcpSession* session;
  Way* way;
  uv_tcp_t* src;
  size_t len;
  WriteReq* next;  // the Way's queue, oldest first
  // The bytes follow the header in the same allocation.
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

void TcpSession::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* s = static_cast<TcpSession*>(h->data);
  if (s->state_ == State::Header) {
    // Never read past what a header may be: the rest stays in the kernel
    // until the backend is connected.
    buf->base = reinterpret_cast<char*>(s->header_.data + s->header_.len);
    buf->len = proxy::kMaxHeader - s->header_.len;
    return;
  }
  // Every read lands in the worker's buffer and is written on (or, before
  // the backend is connected, appended to early_) at once, so an idle
  // connection holds no buffer at all.
  buf->base = s->worker_.read_buffer();
  buf->len = Worker::kReadBufferSize;
  if (s->state_ == State::Hello) {
    // As for a header: never read past what a ClientHello may be, the rest
    // stays in the kernel (the parser decides before kMaxClientHello).
    buf->len = tls::kMaxClientHello - s->early_.size();
    return;
  }
  if (s->relaying() && s->worker_.shared().buffers.exhausted()) {
    // At the bound (BufferBudget): a direction whose destination is behind
    // would buffer what it reads, so it does not read (UV_ENOBUFS, then it
    // waits); one that keeps up reads in small steps, so that what its
    // destination might refuse stays small.
    if (s->way_from(reinterpret_cast<uv_tcp_t*>(h)).flow.queued > 0) {
      *buf = uv_buf_init(nullptr, 0);
      return;
    }
    buf->len = BufferBudget::kScarceRead;
  }
}

void TcpSession::on_read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* s = static_cast<TcpSession*>(stream->data);
  if (nread == 0) return;
  if (s->tls_ && stream == reinterpret_cast<uv_stream_t*>(s->client_.get()) && s->state_ != State::Closing)
    s->on_tls_read(nread, buf->base);
  else if (s->up_tls_ && stream == reinterpret_cast<uv_stream_t*>(s->upstream_.get()) &&
           s->state_ != State::Closing)
    s->on_backend_tls_read(nread, buf->base);
  else if (s->state_ == State::Header)
    s->on_header_bytes(nread);
  else if (s->state_ == State::Hello)
    s->on_hello_bytes(nread, buf->base);
  else if (s->early_reading_ && stream == reinterpret_cast<uv_stream_t*>(s->client_.get()) && !s->relaying())
    s->on_early_bytes(nread, buf->base);
  else if (s->relaying())
    s->on_relay_read(reinterpret_cast<uv_tcp_t*>(stream), nread, buf->base);
}

void TcpSession::on_relay_read(uv_tcp_t* src, ssize_t nread, const char* data) {
  if (nread > 0) {
    worker_.timeouts().touch(&timeout_);
    if (!tls_) count_bytes(src == client_.get(), static_cast<size_t>(nread));
    if (static_cast<size_t>(nread) >= kSpliceReadMin) bulk_seen_ = true;
    if (tls_) return tls_from_backend(data, static_cast<size_t>(nread));  // client bytes: on_tls_read
    // Backend bytes: on_backend_tls_read.
    if (up_tls_) return to_backend(data, static_cast<size_t>(nread));
    forward(way_from(src), src, peer_of(src), data, static_cast<size_t>(nread));
    maybe_splice();
    return;
  }
  if (nread == UV_ENOBUFS) {
    starve(src);
    return;
  }
  if (nread == UV_EOF) {
    on_eof(way_from(src), peer_of(src));
    return;
  }
  // A reset (or any other error) on one side resets the other. A backend
  // that resets counts as a failure for passive health.
  if (src == upstream_.get()) report_backend_failure();
  finish(Result::Reset, true);
}

void TcpSession::forward(Way& w, uv_tcp_t* src, uv_tcp_t* dst, const char* data, size_t n) {
  auto* dst_stream = reinterpret_cast<uv_stream_t*>(dst);
  uv_buf_t b = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(n));
  // Fast path: the kernel takes it all, nothing is copied or allocated.
  int written = uv_try_write(dst_stream, &b, 1);
  if (written == static_cast<int>(n)) return;
  if (written < 0) {
    if (written != UV_EAGAIN) {
      finish(Result::Reset, true);
      return;
    }
    written = 0;
  }
  size_t rest = n - static_cast<size_t>(written);
  auto* req = static_cast<WriteReq*>(std::malloc(sizeof(WriteReq) + rest));
  if (!req) {
    finish(Result::Reset, true);
    return;
  }
  req->session = this;
  req->way = &w;
  req->src = src;
  req->len = rest;
  req->next = nullptr;
  std::memcpy(req->data(), data + written, rest);
  BufferBudget& budget = worker_.shared().buffers;
  budget.charge(sizeof(WriteReq) + rest);
  uv_buf_t wb = uv_buf_init(req->data(), static_cast<unsigned>(rest));
  if (uv_write(&req->req, dst_stream, &wb, 1, on_write_cb) != 0) {
    std::free(req);
    budget.credit(sizeof(WriteReq) + rest);
    finish(Result::Reset, true);
    return;
  }
  if (w.queue_tail)
    w.queue_tail->next = req;
  else
    w.queue_head = req;
  w.queue_tail = req;
  if (w.flow.on_queued(rest)) uv_read_stop(reinterpret_cast<uv_stream_t*>(src));
}

void TcpSession::on_write_cb(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  w->session->on_write_done(w, status);
}

void TcpSession::on_write_done(WriteReq* req, int status) {
  Way& w = *req->way;
  uv_tcp_t* src = req->src;
  size_t len = req->len;
  // A stream completes its writes in order: this is the queue's head.
  WriteReq** link = &w.queue_head;
  WriteReq* before = nullptr;
  while (*link != req) {
    before = *link;
    link = &(*link)->next;
  }
  *link = req->next;
  if (w.queue_tail == req) w.queue_tail = before;
  std::free(req);
  worker_.shared().buffers.credit(sizeof(WriteReq) + len);
  worker_.wake_budget_waiters();  // nothing to do unless someone waits
  if (status == UV_ECANCELED || !relaying()) return;
  if (status < 0) {
    finish(Result::Reset, true);
    return;
  }
  bool resume = w.flow.on_drained(len);
  // A source stopped for budget reads again once its own queue is empty: its
  // destination keeps up, and it then reads in small steps at the bound, so
  // no session waits on budget that others hold.
  if ((starved_ & starved_bit(src)) && w.flow.queued == 0 && w.flow.wants_read()) resume = true;
  if (resume) resume_read(src);
}

void TcpSession::starve(uv_tcp_t* src) {
  uv_read_stop(reinterpret_cast<uv_stream_t*>(src));
  starved_ |= starved_bit(src);
  worker_.wait_for_budget(this);
}

bool TcpSession::resume_read(uv_tcp_t* src) {
  if (starved_ & starved_bit(src)) {
    starved_ &= static_cast<uint8_t>(~starved_bit(src));
    if (!starved_) worker_.cancel_budget_wait(this);
  }
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(src), on_alloc, on_read_cb) != 0) {
    finish(Result::Reset, true);
    return false;
  }
  return true;
}

void TcpSession::budget_returned() {
  for (uv_tcp_t* src : {client_.get(), upstream_.get()}) {
    if (!relaying() || path_ != Path::Copy) return;
    if (!(starved_ & starved_bit(src))) continue;
    if (way_from(src).flow.wants_read()) {
      if (!resume_read(src)) return;
    } else {
      starved_ &= static_cast<uint8_t>(~starved_bit(src));  // backpressure or EOF resumes it, if ever
    }
  }
}

// The source of `w` ended: pass the EOF on to `dst` once what is queued there
// is written.
void TcpSession::on_eof(Way& w, uv_tcp_t* dst) {
  if (!w.flow.on_eof()) return;
  state_ = State::HalfClosed;
  if (tls_ && dst == client_.get()) {
    // close_notify, then FIN, once the records before it are written; the
    // relay reports shutdown_done.
    tls_->shutdown();
    return;
  }
  if (up_tls_ && dst == upstream_.get()) {
    up_tls_->shutdown();
    return;
  }
  auto* dst_stream = reinterpret_cast<uv_stream_t*>(dst);
  if (w.flow.queued == 0 && uv_stream_get_write_queue_size(dst_stream) == 0) {
    // Nothing left to flush. If the other way is done too, the session ends
    // here: closing both sockets sends this FIN just as shutdown would (both
    // receive queues are empty, each side having sent its FIN). Otherwise
    // shut down now, without uv_shutdown's round trip through the write
    // watcher (two epoll_ctl calls and a loop iteration).
    Way& other = &w == &up_ ? down_ : up_;
    if (other.flow.finished) {
      w.flow.on_shutdown_done();
      finish(Result::Ok, false);
      return;
    }
    uv_os_fd_t fd;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(dst), &fd) == 0) {
      if (::shutdown(fd, SHUT_WR) != 0) {
        finish(Result::Reset, true);
        return;
      }
      w.flow.on_shutdown_done();
      return;
    }
  }
  // libuv performs the shutdown once the queued writes are flushed.
  w.shutdown = std::make_unique<uv_shutdown_t>();
  w.shutdown->data = this;
  if (uv_shutdown(w.shutdown.get(), dst_stream, on_shutdown_cb) != 0) finish(Result::Reset, true);
}

void TcpSession::on_shutdown_cb(uv_shutdown_t* req, int status) {
  auto* s = static_cast<TcpSession*>(req->data);
  if (status == UV_ECANCELED || !s->relaying()) return;
  s->on_shutdown_done(req == s->up_.shutdown.get() ? s->up_ : s->down_, status);
}

void TcpSession::on_shutdown_done(Way& w, int status) {
  if (status < 0) {
    finish(Result::Reset, true);
    return;
  }
  w.flow.on_shutdown_done();
  if (relay_finished(up_.flow, down_.flow)) finish(Result::Ok, false);
}

std::string TcpSession::unwritten(const Way& w, uv_tcp_t* dst) const {
  // libuv counts the bytes of its write queue that are not written yet; only
  // the oldest write can be partly written, so they are the last `left`
  // bytes of the queued writes together.
  size_t left = uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(dst));
  size_t total = 0;
  for (WriteReq* r = w.queue_head; r; r = r->next) total += r->len;
  size_t skip = total > left ? total - left : 0;
  std::string out;
  out.reserve(total - skip);
  for (WriteReq* r = w.queue_head; r; r = r->next) {
    size_t from = skip < r->len ? skip : r->len;
    skip -= from;
    out.append(r->data() + from, r->len - from);
  }
  return out;
}

}  // namespace lb::core
