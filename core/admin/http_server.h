// A small HTTP/1.1 server on a libuv loop, for the admin API and /metrics.
//
// Runs on the main thread's loop; every callback happens there. Requests are
// parsed incrementally with hard limits so a hostile or broken client can
// never disturb the process: a malformed request gets 400, headers larger than
// the limit 431, a body larger than the limit 413, and the connection closes.
// Keep-alive is honoured; idle or slow connections are cut after a timeout.
// The handler runs synchronously on the loop thread, one request at a time,
// and may call close(); an exception from it becomes a 500. The process must
// ignore SIGPIPE (libuv writes with write(2)).
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lb::admin {

struct HttpRequest {
  std::string method;                                        // "GET", "POST", ...
  std::string target;                                        // as sent: "/api/v1/status?x=1"
  std::string path;                                          // percent-decoded path without the query
  std::string query;                                         // raw, without '?'
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  // The connection's addresses (set by the server, not the parser): the
  // client's, and the local one it reached us on (with 0.0.0.0 / [::]
  // listeners, the address the client actually used).
  sockaddr_storage peer{};
  sockaddr_storage local{};
  // First header with this (lower-case) name, or nullptr.
  const std::string* header(const std::string& lower_name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  // Further header lines ("WWW-Authenticate", ...), sent as given after the
  // framing headers. A name or value with a control byte (CR/LF would split
  // the response) makes the answer a 500.
  std::vector<std::pair<std::string, std::string>> headers;
};

struct HttpLimits {
  size_t max_header_bytes = 8192;    // request line + headers -> 431 beyond
  size_t max_body_bytes = 65536;     // -> 413 beyond
  uint64_t idle_timeout_ms = 10000;  // no complete request within this -> close (0: never)
  size_t max_connections = 256;      // further connections are closed at once
  size_t max_headers = 100;          // more header lines -> 400
};

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  // Asked once per accepted connection with the client's address: false
  // closes it at once, before a byte is read or written (an ACL: the client
  // learns nothing but that the connection closed).
  using AcceptFilter = std::function<bool(const sockaddr* peer)>;

  HttpServer(uv_loop_t* loop, Handler handler, HttpLimits limits = {});
  // Normally close() has run and the loop turned for the close callbacks.
  // Destroying it earlier (even from inside the handler) is safe: it closes
  // what is open, and the handles still closing keep the internals alive
  // until their close callbacks run on the next turn of the loop.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens; returns 0 or a libuv error code. Port 0 picks a port.
  // UV_EALREADY when already listening, UV_EINVAL after close().
  int listen(const sockaddr* addr);
  // Listens on an already bound socket (an upgrade hands it over); the
  // server owns `fd` from then on, even when this fails.
  int listen_fd(int fd);
  // The listening socket's descriptor (still owned here), -1 when none.
  int listener_fd() const;
  // Actual bound port (after listen), host order.
  uint16_t port() const;
  // Closes the listener and every connection; idempotent.
  void close();
  // Installs (or, with an empty function, removes) the accept filter; it
  // applies to connections accepted from now on.
  void set_accept_filter(AcceptFilter filter);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lb::admin
