// One admin connection: reads into the server's shared buffer, feeds the
// parser, answers in order with backpressure, and closes (lingering after the
// last response). Ownership rules: core/admin/http_server_impl.h.
#include "core/admin/http_response.h"
#include "core/admin/http_server_impl.h"

namespace lb::admin {

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
  (void)uv_tcp_nodelay(tcp.get(), 1);  // best effort: only latency is at stake
  arm_timer(server->limits.idle_timeout_ms);
  if (!start_reading()) close();
}

void HttpServer::Impl::Connection::close() {
  if (closing) return;
  closing = true;
  reading = false;
  unlink();
  close_then(tcp, on_handle_closed, this);
  close_then(timer, on_handle_closed, this);
}

void HttpServer::Impl::Connection::on_handle_closed(void* connection) {
  auto* c = static_cast<Connection*>(connection);
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
  if (!timer) return;  // closed
  if (ms == 0) {
    (void)uv_timer_stop(timer.get());
    return;
  }
  (void)uv_timer_start(timer.get(), on_timer, ms, 0);
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

}  // namespace lb::admin
