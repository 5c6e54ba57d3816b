// Internals of HttpServer (core/admin/http_server.h), shared by its two
// translation units: http_server.cc (listening, accepting, the server's
// lifetime) and http_connection.cc (one connection: read, parse, answer,
// close). Not for use outside core/admin.
#pragma once

#include <uv.h>

#include <memory>
#include <string>

#include "core/admin/http_parser.h"
#include "core/admin/http_server.h"
#include "core/uv_ptr.h"

namespace lb::admin {

// One read buffer per server, handed to whichever connection reads next: the
// loop is single-threaded and a read callback consumes the bytes (into the
// parser) before returning, so an idle connection holds no buffer.
inline constexpr size_t kReadBufferSize = 64 * 1024;

// A client that pipelines requests without reading the answers would make us
// queue responses without bound. Past this many unsent bytes the connection
// stops reading (and parsing); it resumes once everything queued is written.
inline constexpr size_t kWriteHighWater = 64 * 1024;

// After the last response we half-close and keep discarding input for at most
// this long before closing. Closing with unread input makes the kernel send a
// RST, which can destroy the response still in flight to the client (the
// "lingering close" problem: e.g. a 413 sent while the client is still
// uploading the body it was refused).
inline constexpr uint64_t kLingerMs = 2000;

inline constexpr int kListenBacklog = 128;

// Ownership and lifetime.
//
// Impl is owned by HttpServer until the server is destroyed. The listener is
// a UvPtr: closing it stops its callbacks at once and its memory goes with its
// own close callback, which never touches Impl. Every connection (whose close
// callbacks do call back into Impl) holds a "pin" until its handles are
// closed; when ~HttpServer runs while pins remain (handles still closing, or
// a handler destroying the server from inside a request), it closes
// everything, marks Impl orphaned and lets go: the close callback that drops
// the last pin deletes Impl. So no callback can ever see a freed Impl.
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

  // fd >= 0: listen on that bound socket (an upgrade's; owned from here on).
  int listen(const sockaddr* addr, int fd = -1);
  void close();
  void close_listener();
  void unpin() {
    if (--pins == 0 && orphaned) delete this;
  }

  static void on_connection(uv_stream_t* listener_handle, int status);

  uv_loop_t* loop;
  Handler handler;
  AcceptFilter accept_filter;
  HttpLimits limits;
  std::unique_ptr<char[]> read_buffer;
  UvPtr<uv_tcp_t> listener;
  uint16_t bound_port = 0;
  bool closed = false;
  bool orphaned = false;            // HttpServer is gone; the last unpin() deletes *this
  size_t pins = 0;                  // connections whose handles are not closed yet
  Connection* live_head = nullptr;  // connections not yet closing
  size_t live_count = 0;
};

struct HttpServer::Impl::Connection {
  explicit Connection(Impl* s) : server(s), parser(s->limits) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(tcp.get()); }

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
  static void on_handle_closed(void* connection);

  struct WriteReq {
    uv_write_t req;
    std::string bytes;
    Connection* conn;
  };

  Impl* server;
  // Null once close() is called; the object is deleted after both close
  // callbacks (open_handles).
  UvPtr<uv_tcp_t> tcp;
  UvPtr<uv_timer_t> timer;
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

}  // namespace lb::admin
