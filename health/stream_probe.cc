#include "health/stream_probe.h"

#include <utility>

namespace lb::health {

namespace {

// A write owns its bytes until libuv is done with them.
struct WriteReq {
  uv_write_t req{};
  std::string data;
};

}  // namespace

void StreamProbe::begin() {
  int err = 0;
  tcp_ = make_uv<uv_tcp_t>(loop_, this, &err, uv_tcp_init);
  if (!tcp_) return fail_later("socket: " + uv_reason(err));
  // Probes are tiny; Nagle would only add latency to the request write.
  uv_tcp_nodelay(tcp_.get(), 1);
  auto* req = new uv_connect_t{};
  err = uv_tcp_connect(req, tcp_.get(), reinterpret_cast<const sockaddr*>(&address_.addr), on_connect);
  if (err != 0) {
    delete req;
    fail_later("connect: " + uv_reason(err));
  }
}

void StreamProbe::close_io() { tcp_.reset(); }

void StreamProbe::on_read_end(int err) {
  finish(false, err == UV_EOF ? std::string("connection closed by backend") : "read: " + uv_reason(err));
}

void StreamProbe::write(std::string data) {
  if (!tcp_) return;
  auto* w = new WriteReq;
  w->data = std::move(data);
  uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int err = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(tcp_.get()), &buf, 1, on_write);
  if (err != 0) {
    delete w;
    fail_later("write: " + uv_reason(err));
  }
}

void StreamProbe::start_reading() {
  if (!tcp_) return;
  int err = uv_read_start(reinterpret_cast<uv_stream_t*>(tcp_.get()), on_alloc, on_read);
  if (err != 0) fail_later("read: " + uv_reason(err));
}

void StreamProbe::on_connect(uv_connect_t* req, int status) {
  auto* self = static_cast<StreamProbe*>(req->handle->data);
  delete req;
  if (!self) return;  // closed: status is UV_ECANCELED
  if (status != 0) return self->finish(false, "connect: " + uv_reason(status));
  self->on_connected();
}

void StreamProbe::on_write(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  auto* self = static_cast<StreamProbe*>(req->handle->data);
  delete w;
  if (!self || status == 0) return;
  self->finish(false, "write: " + uv_reason(status));
}

void StreamProbe::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* self = static_cast<StreamProbe*>(h->data);
  // A zero-length buffer makes libuv report UV_ENOBUFS, which is harmless here.
  *buf = self ? uv_buf_init(self->rbuf_, sizeof self->rbuf_) : uv_buf_init(nullptr, 0);
}

void StreamProbe::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<StreamProbe*>(s->data);
  if (!self || nread == 0) return;
  if (nread < 0) return self->on_read_end(static_cast<int>(nread));
  self->on_data(buf->base, static_cast<size_t>(nread));
}

}  // namespace lb::health
