#include "health/datagram_probe.h"

#include <utility>

namespace lb::health {

namespace {

struct SendReq {
  uv_udp_send_t req{};
  std::string data;
};

}  // namespace

void DatagramProbe::begin() {
  std::string data, error;
  if (!payload(&data, &error)) return fail_later(error);
  int err = 0;
  udp_ = make_uv<uv_udp_t>(loop_, this, &err, uv_udp_init);
  if (!udp_) return fail_later("socket: " + uv_reason(err));
  err = uv_udp_connect(udp_.get(), reinterpret_cast<const sockaddr*>(&address_.addr));
  if (err != 0) return fail_later("connect: " + uv_reason(err));
  err = uv_udp_recv_start(udp_.get(), on_alloc, on_recv);
  if (err != 0) return fail_later("recv: " + uv_reason(err));
  auto* s = new SendReq;
  s->data = std::move(data);
  uv_buf_t buf = uv_buf_init(s->data.data(), static_cast<unsigned>(s->data.size()));
  err = uv_udp_send(&s->req, udp_.get(), &buf, 1, nullptr, on_send);
  if (err != 0) {
    delete s;
    fail_later("send: " + uv_reason(err));
  }
}

void DatagramProbe::close_io() { udp_.reset(); }

void DatagramProbe::on_send(uv_udp_send_t* req, int status) {
  auto* self = static_cast<DatagramProbe*>(req->handle->data);
  delete reinterpret_cast<SendReq*>(req);
  if (!self || status == 0) return;
  self->finish(false, "send: " + uv_reason(status));
}

void DatagramProbe::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* self = static_cast<DatagramProbe*>(h->data);
  *buf = self ? uv_buf_init(self->rbuf_, sizeof self->rbuf_) : uv_buf_init(nullptr, 0);
}

void DatagramProbe::on_recv(uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const sockaddr* from,
                            unsigned flags) {
  auto* self = static_cast<DatagramProbe*>(h->data);
  if (!self) return;
  // nread == 0 without an address: nothing more to read (not an empty datagram).
  if (nread == 0 && !from) return;
  if (nread < 0) return self->finish(false, "recv: " + uv_reason(static_cast<int>(nread)));
  if (flags & UV_UDP_PARTIAL) return self->finish(false, "reply larger than 2KiB");
  self->on_datagram(buf->base, static_cast<size_t>(nread));
}

}  // namespace lb::health
