#include <netinet/in.h>
#include <unistd.h>

#include "core/admin/http_server_impl.h"

namespace lb::admin {

const std::string* HttpRequest::header(const std::string& lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return &value;
  }
  return nullptr;
}

// ---- HttpServer::Impl --------------------------------------------------------

int HttpServer::Impl::listen(const sockaddr* addr, int fd) {
  // Every early return closes `fd`: the server owns it from the call on.
  auto fail = [fd](int rc) {
    if (fd >= 0) ::close(fd);
    return rc;
  };
  if (closed) return fail(UV_EINVAL);
  if (listener != nullptr) return fail(UV_EALREADY);
  if (fd < 0 && (addr == nullptr || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))) {
    return UV_EAFNOSUPPORT;
  }
  int rc = 0;
  listener = make_uv<uv_tcp_t>(loop, this, &rc, uv_tcp_init);
  if (!listener) return fail(rc);
  uv_tcp_t* h = listener.get();
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

void HttpServer::Impl::close_listener() { listener.reset(); }

void HttpServer::Impl::close() {
  closed = true;
  close_listener();
  while (live_head != nullptr) live_head->close();  // close() unlinks
}

void HttpServer::Impl::on_connection(uv_stream_t* listener_handle, int status) {
  Impl* self = static_cast<Impl*>(listener_handle->data);
  // A failed accept (EMFILE, ENOBUFS...) leaves nothing to clean up; libuv
  // keeps listening.
  if (status < 0 || self->closed) return;

  auto* c = new Connection(self);
  // With AF_UNSPEC uv_tcp_init() creates no socket and cannot fail; were it
  // to, the pending connection would simply wait in libuv for the next try.
  c->tcp = make_uv<uv_tcp_t>(self->loop, c, nullptr, uv_tcp_init);
  if (!c->tcp) {
    delete c;
    return;
  }
  c->timer = make_uv<uv_timer_t>(self->loop, c, nullptr, uv_timer_init);  // never fails
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
  if (uv_tcp_getpeername(c->tcp.get(), reinterpret_cast<sockaddr*>(&c->peer), &len) != 0) {
    c->close();  // the client is already gone
    return;
  }
  len = sizeof(c->local);
  (void)uv_tcp_getsockname(c->tcp.get(), reinterpret_cast<sockaddr*>(&c->local), &len);
  if (self->accept_filter && !self->accept_filter(reinterpret_cast<const sockaddr*>(&c->peer))) {
    c->close();
    return;
  }
  c->link();
  c->start();
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
  if (impl_->listener == nullptr ||
      uv_fileno(reinterpret_cast<uv_handle_t*>(impl_->listener.get()), &fd) != 0)
    return -1;
  return fd;
}

uint16_t HttpServer::port() const { return impl_->bound_port; }

void HttpServer::close() { impl_->close(); }

void HttpServer::set_accept_filter(AcceptFilter filter) { impl_->accept_filter = std::move(filter); }

}  // namespace lb::admin
