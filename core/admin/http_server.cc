#include "core/admin/http_server.h"

#include <netinet/in.h>
#include <unistd.h>

#include <cstring>

#include "core/admin/http_parser.h"
#include "core/admin/http_response.h"

namespace lb::admin {

const std::string* HttpRequest::header(const std::string& lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return &value;
  }
  return nullptr;
}

namespace {

// One read buffer per server, handed to whichever connection reads next: the
// loop is single-threaded and a read callback consumes the bytes (into the
// parser) before returning, so an idle connection holds no buffer.
constexpr size_t kReadBufferSize = 64 * 1024;

// A client that pipelines requests without reading the answers would make us
// queue responses without bound. Past this many unsent bytes the connection
// stops reading (and parsing); it resumes once everything queued is written.
constexpr size_t kWriteHighWater = 64 * 1024;

// After the last response we half-close and keep discarding input for at most
// this long before closing. Closing with unread input makes the kernel send a
// RST, which can destroy the response still in flight to the client (the
// "lingering close" problem: e.g. a 413 sent while the client is still
// uploading the body it was refused).
constexpr uint64_t kLingerMs = 2000;

constexpr int kListenBacklog = 128;

}  // namespace

// Ownership and lifetime.
//
// Impl is owned by HttpServer until the server is destroyed. Every open handle
// that will call back into Impl (the listener and each connection) holds a
// "pin"; when ~HttpServer runs while pins remain (handles still closing, or a
// handler destroying the server from inside a request), it closes everything,
// marks Impl orphaned and lets go: the close callback that drops the last pin
// deletes Impl. So no callback can ever see a freed Impl.
//
// A Connection embeds its tcp and timer handles and is itself heap-allocated;
// it is deleted in the close callback of whichever of the two closes last.
// Write and shutdown callbacks (including their UV_ECANCELED completions) run
// before the tcp handle's close callback, so they never see a freed Connection.
// No object is ever deleted inside a read or write callback.
struct HttpServer::Impl {
  struct Connection;

  Impl(uv_loop_t* l, Handler h, HttpLimits lim)
      : loop(l), handler(std::move(h)), limits(lim), read_buffer(new char[kReadBufferSize]) {}

  int listen(const sockaddr* addr, int fd = -1);
  void close();
  void close_listener();
  void unpin() {
    if (--pins == 0 && orphaned) delete this;
  }

  static void on_connection(uv_stream_t* listener_handle, int status);
  static void on_listener_closed(uv_handle_t* h);

  uv_loop_t* loop;
  Handler handler;
  AcceptFilter accept_filter;
  HttpLimits limits;
  std::unique_ptr<char[]> read_buffer;
  uv_tcp_t* listener = nullptr;  // heap; freed in on_listener_closed
  uint16_t bound_port = 0;
  bool closed = false;
  bool orphaned = false;            // HttpServer is gone; the last unpin() deletes *this
  size_t pins = 0;                  // listener + connections whose handles are not closed yet
  Connection* live_head = nullptr;  // connections not yet closing
  size_t live_count = 0;
};

struct HttpServer::Impl::Connection {
  explicit Connection(Impl* s) : server(s), parser(s->limits) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp); }

  void start();
  void close();
  void link();
  void unlink();
  bool start_reading();
  void stop_reading();
  void arm_timer(uint64_t ms);
  size_t consume(const char* data, size_t len);
  void respond(ParsedRequest parsed);
  void refuse_request();
  bool send(std::string bytes);
  void pause();
  void resume();
  void begin_drain();
  void finish();

  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_write(uv_write_t* req, int status);
  static void on_shutdown(uv_shutdown_t* req, int status);
  static void on_timer(uv_timer_t* t);
  static void on_handle_closed(uv_handle_t* h);

  struct WriteReq {
    uv_write_t req;
    std::string bytes;
    Connection* conn;
  };

  Impl* server;
  uv_tcp_t tcp;
  uv_timer_t timer;
  int open_handles = 0;
  Connection* prev = nullptr;
  Connection* next = nullptr;
  bool linked = false;

  HttpRequestParser parser;
  sockaddr_storage peer{};
  sockaddr_storage local{};
  std::string pending;  // received, not yet parsed: only while paused
  size_t writes_pending = 0;

  bool closing = false;  // uv_close() called
  bool reading = false;
  bool paused = false;     // reading stopped for backpressure
  bool draining = false;   // last response queued; no more requests
  bool lingering = false;  // half-closed, discarding input until EOF or timer
  bool peer_eof = false;
};

// ---- HttpServer::Impl --------------------------------------------------------

int HttpServer::Impl::listen(const sockaddr* addr, int fd) {
  if (closed) return UV_EINVAL;
  if (listener != nullptr) return UV_EALREADY;
  if (fd < 0 && (addr == nullptr || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))) {
    return UV_EAFNOSUPPORT;
  }
  auto* h = new uv_tcp_t;
  int rc = uv_tcp_init(loop, h);
  if (rc != 0) {
    delete h;  // never initialised: nothing to close
    return rc;
  }
  h->data = this;
  listener = h;
  ++pins;
  rc = fd >= 0 ? uv_tcp_open(h, fd) : uv_tcp_bind(h, addr, 0);
  if (rc != 0 && fd >= 0) ::close(fd);  // not the handle's: uv_tcp_open failed
  // libuv may defer a bind error (EADDRINUSE) to uv_listen().
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(h), kListenBacklog, on_connection);
  if (rc == 0) {
    sockaddr_storage ss{};
    int len = sizeof(ss);
    rc = uv_tcp_getsockname(h, reinterpret_cast<sockaddr*>(&ss), &len);
    if (rc == 0) {
      bound_port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port)
                                            : ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
    }
  }
  if (rc != 0) close_listener();
  return rc;
}

void HttpServer::Impl::close_listener() {
  if (listener == nullptr) return;
  uv_close(reinterpret_cast<uv_handle_t*>(listener), on_listener_closed);
  listener = nullptr;
}

void HttpServer::Impl::close() {
  closed = true;
  close_listener();
  while (live_head != nullptr) live_head->close();  // close() unlinks
}

void HttpServer::Impl::on_listener_closed(uv_handle_t* h) {
  Impl* self = static_cast<Impl*>(h->data);
  delete reinterpret_cast<uv_tcp_t*>(h);
  self->unpin();
}

void HttpServer::Impl::on_connection(uv_stream_t* listener_handle, int status) {
  Impl* self = static_cast<Impl*>(listener_handle->data);
  // A failed accept (EMFILE, ENOBUFS...) leaves nothing to clean up; libuv
  // keeps listening.
  if (status < 0 || self->closed) return;

  auto* c = new Connection(self);
  // With AF_UNSPEC uv_tcp_init() creates no socket and cannot fail; were it
  // to, the pending connection would simply wait in libuv for the next try.
  if (uv_tcp_init(self->loop, &c->tcp) != 0) {
    delete c;
    return;
  }
  (void)uv_timer_init(self->loop, &c->timer);  // always 0
  c->tcp.data = c;
  c->timer.data = c;
  c->open_handles = 2;
  ++self->pins;

  if (uv_accept(listener_handle, c->stream()) != 0) {
    c->close();
    return;
  }
  // Over the limit: accept (so the kernel backlog does not fill with clients
  // left hanging) and close at once.
  if (self->live_count >= self->limits.max_connections) {
    c->close();
    return;
  }
  int len = sizeof(c->peer);
  if (uv_tcp_getpeername(&c->tcp, reinterpret_cast<sockaddr*>(&c->peer), &len) != 0) {
    c->close();  // the client is already gone
    return;
  }
  len = sizeof(c->local);
  (void)uv_tcp_getsockname(&c->tcp, reinterpret_cast<sockaddr*>(&c->local), &len);
  if (self->accept_filter && !self->accept_filter(reinterpret_cast<const sockaddr*>(&c->peer))) {
    c->close();
    return;
  }
  c->link();
  c->start();
}

// ---- Connection -----------------------------------------------------------------

void HttpServer::Impl::Connection::link() {
  next = server->live_head;
  if (next != nullptr) next->prev = this;
  server->live_head = this;
  linked = true;
  ++server->live_count;
}

void HttpServer::Impl::Connection::unlink() {
  if (!linked) return;
  if (prev != nullptr)
    prev->next = next;
  else
    server->live_head = next;
  if (next != nullptr) next->prev = prev;
  prev = next = nullptr;
  linked = false;
  --server->live_count;
}

void HttpServer::Impl::Connection::start() {
  // Pipelined responses are separate writes: do not let Nagle hold the second
  // one back waiting for the client's (delayed) ACK of the first.
  (void)uv_tcp_nodelay(&tcp, 1);  // best effort: only latency is at stake
  arm_timer(server->limits.idle_timeout_ms);
  if (!start_reading()) close();
}

void HttpServer::Impl::Connection::close() {
  if (closing) return;
  closing = true;
  reading = false;
  unlink();
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp), on_handle_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_handle_closed);
}

void HttpServer::Impl::Connection::on_handle_closed(uv_handle_t* h) {
  auto* c = static_cast<Connection*>(h->data);
  if (--c->open_handles > 0) return;
  Impl* server = c->server;
  delete c;
  server->unpin();
}

bool HttpServer::Impl::Connection::start_reading() {
  if (reading) return true;
  if (uv_read_start(stream(), on_alloc, on_read) != 0) return false;
  reading = true;
  return true;
}

void HttpServer::Impl::Connection::stop_reading() {
  if (!reading) return;
  (void)uv_read_stop(stream());  // always 0
  reading = false;
}

void HttpServer::Impl::Connection::arm_timer(uint64_t ms) {
  if (ms == 0) {
    (void)uv_timer_stop(&timer);
    return;
  }
  (void)uv_timer_start(&timer, on_timer, ms, 0);  // fails only on a closing handle
}

void HttpServer::Impl::Connection::on_timer(uv_timer_t* t) {
  // Idle (no complete request in time: slowloris, or a keep-alive client gone
  // quiet) or the end of the lingering close. Either way: close, no answer; an
  // unsolicited 408 could be taken as the answer to the client's next request.
  static_cast<Connection*>(t->data)->close();
}

void HttpServer::Impl::Connection::on_alloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(h->data);
  *buf = uv_buf_init(c->server->read_buffer.get(), kReadBufferSize);
}

void HttpServer::Impl::Connection::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(s->data);
  if (nread == 0) return;  // EAGAIN
  if (nread < 0) {
    c->stop_reading();
    if (c->lingering || nread != UV_EOF) {
      c->close();
      return;
    }
    // The client half-closed: answer what it already sent, then close. A
    // partial request is dropped with the connection.
    c->peer_eof = true;
    if (c->writes_pending == 0) {
      c->close();
    } else {
      c->draining = true;
    }
    return;
  }
  if (c->lingering) return;  // input after the last response is discarded

  const auto n = static_cast<size_t>(nread);
  size_t used = c->consume(buf->base, n);
  // The shared read buffer is reused by the next read: keep what a paused
  // connection has not parsed yet (at most one buffer, since reading stopped).
  if (c->paused && !c->closing && !c->draining && used < n) {
    c->pending.append(buf->base + used, n - used);
  }
}

// Feeds bytes to the parser and answers every complete request, in order.
// Stops early (returning the bytes used) when the connection closes, has sent
// its last response, or pauses for backpressure.
size_t HttpServer::Impl::Connection::consume(const char* data, size_t len) {
  size_t off = 0;
  while (!closing && !draining && !paused) {
    off += parser.feed(data + off, len - off);
    switch (parser.state()) {
      case HttpRequestParser::State::kIncomplete:
        if (parser.take_continue_request()) send("HTTP/1.1 100 Continue\r\n\r\n");
        return off;
      case HttpRequestParser::State::kComplete:
        respond(parser.take());
        break;
      case HttpRequestParser::State::kError:
        refuse_request();
        break;
    }
  }
  return off;
}

void HttpServer::Impl::Connection::respond(ParsedRequest parsed) {
  // The idle clock measures the wait for a complete request.
  arm_timer(server->limits.idle_timeout_ms);

  parsed.request.peer = peer;
  parsed.request.local = local;
  HttpResponse response;
  // The handler is our own code, but a bug in it must cost one 500, not the
  // process.
  try {
    response = server->handler(parsed.request);
  } catch (...) {
    response = error_response(500, "request handler failed");
  }
  // The handler may have closed (or destroyed) the server, which closed this
  // connection too; nothing is left to answer on.
  if (closing) return;

  ResponseFraming framing;
  framing.head = parsed.request.method == "HEAD";
  framing.close = !parsed.keep_alive;
  framing.version_minor = parsed.version_minor;
  if (!send(serialize_response(response, framing))) return;
  if (framing.close) {
    begin_drain();
  } else if (uv_stream_get_write_queue_size(stream()) > kWriteHighWater) {
    pause();
  }
}

void HttpServer::Impl::Connection::refuse_request() {
  ResponseFraming framing;
  framing.close = true;
  if (!send(serialize_response(error_response(parser.error_status(), parser.error_detail()), framing))) {
    return;
  }
  begin_drain();
}

bool HttpServer::Impl::Connection::send(std::string bytes) {
  auto* w = new WriteReq;
  w->bytes = std::move(bytes);
  w->conn = this;
  w->req.data = w;
  uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned int>(w->bytes.size()));
  if (uv_write(&w->req, stream(), &buf, 1, on_write) != 0) {
    delete w;
    close();
    return false;
  }
  ++writes_pending;
  return true;
}

void HttpServer::Impl::Connection::on_write(uv_write_t* req, int status) {
  auto* w = static_cast<WriteReq*>(req->data);
  Connection* c = w->conn;
  delete w;
  --c->writes_pending;
  if (c->closing) return;  // includes UV_ECANCELED after close()
  if (status < 0) {
    c->close();
    return;
  }
  if (c->writes_pending > 0) return;
  if (c->draining) {
    c->finish();
  } else if (c->paused) {
    c->resume();
  }
}

void HttpServer::Impl::Connection::pause() {
  paused = true;
  stop_reading();
}

void HttpServer::Impl::Connection::resume() {
  paused = false;
  std::string buf;
  buf.swap(pending);
  size_t used = consume(buf.data(), buf.size());
  if (closing || draining) return;
  if (paused) {
    pending.assign(buf, used, std::string::npos);
    return;
  }
  if (!start_reading()) close();
}

void HttpServer::Impl::Connection::begin_drain() {
  draining = true;
  stop_reading();
  pending.clear();
  if (writes_pending == 0) finish();
}

// The last response is fully written.
void HttpServer::Impl::Connection::finish() {
  if (peer_eof) {
    close();
    return;
  }
  lingering = true;
  auto* req = new uv_shutdown_t;
  req->data = this;
  if (uv_shutdown(req, stream(), on_shutdown) != 0) {
    delete req;
    close();
    return;
  }
  const uint64_t idle = server->limits.idle_timeout_ms;
  arm_timer(idle != 0 && idle < kLingerMs ? idle : kLingerMs);
  if (!start_reading()) close();
}

void HttpServer::Impl::Connection::on_shutdown(uv_shutdown_t* req, int status) {
  auto* c = static_cast<Connection*>(req->data);
  delete req;
  if (status < 0 && !c->closing) c->close();
}

// ---- HttpServer ---------------------------------------------------------------

HttpServer::HttpServer(uv_loop_t* loop, Handler handler, HttpLimits limits)
    : impl_(std::make_unique<Impl>(loop, std::move(handler), limits)) {}

HttpServer::~HttpServer() {
  if (!impl_) return;
  impl_->close();
  if (impl_->pins > 0) {
    // Handles are still closing: their callbacks own Impl from now on.
    impl_->orphaned = true;
    (void)impl_.release();
  }
}

int HttpServer::listen(const sockaddr* addr) { return impl_->listen(addr); }

int HttpServer::listen_fd(int fd) { return impl_->listen(nullptr, fd); }

int HttpServer::listener_fd() const {
  uv_os_fd_t fd = -1;
  if (impl_->listener == nullptr || uv_fileno(reinterpret_cast<uv_handle_t*>(impl_->listener), &fd) != 0)
    return -1;
  return fd;
}

uint16_t HttpServer::port() const { return impl_->bound_port; }

void HttpServer::close() { impl_->close(); }

void HttpServer::set_accept_filter(AcceptFilter filter) { impl_->accept_filter = std::move(filter); }

}  // namespace lb::admin
