#include "health/probe.h"

#include <arpa/inet.h>

#include <cstring>
#include <utility>

#include "health/dns_probe.h"
#include "health/http_probe.h"
#include "health/tcp_probe.h"
#include "health/tls_probe.h"
#include "health/udp_probe.h"

namespace lb::health {

ProbeAddress probe_address(const conf::Endpoint& backend, uint16_t port_override) {
  ProbeAddress a;
  a.addr = backend.addr;
  a.addr_len = backend.addr_len;
  a.host = backend.text;
  if (port_override != 0) {
    if (a.addr.ss_family == AF_INET)
      reinterpret_cast<sockaddr_in*>(&a.addr)->sin_port = htons(port_override);
    else if (a.addr.ss_family == AF_INET6)
      reinterpret_cast<sockaddr_in6*>(&a.addr)->sin6_port = htons(port_override);
  }
  if (a.addr_len == 0) {
    a.addr_len = a.addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  }
  return a;
}

std::string format_sockaddr(const sockaddr* sa) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "unknown address family";
}

std::string uv_reason(int err) {
  switch (err) {
    case UV_ECONNREFUSED:
      return "connection refused";
    case UV_ECONNRESET:
      return "connection reset";
    case UV_EOF:
      return "connection closed";
    case UV_ETIMEDOUT:
      return "timed out";
    case UV_ENETUNREACH:
      return "network unreachable";
    case UV_EHOSTUNREACH:
      return "host unreachable";
    default:
      return uv_strerror(err);
  }
}

Probe::Probe(uv_loop_t* loop, ProbeAddress address, std::chrono::milliseconds timeout, Callback cb)
    : loop_(loop),
      address_(std::move(address)),
      timeout_(timeout.count() > 0 ? timeout : std::chrono::milliseconds(1)),
      cb_(std::move(cb)) {}

void Probe::start() {
  if (state_ != State::Idle) return;
  state_ = State::Running;
  int err = 0;
  timer_ = make_uv<uv_timer_t>(loop_, this, &err, uv_timer_init);
  if (!timer_) {
    // uv_timer_init cannot fail in libuv 1.x; if it ever did, nothing could
    // bound the probe, so report at once rather than never.
    state_ = State::Done;
    if (auto cb = std::move(cb_)) cb(false, "timer init: " + uv_reason(err));
    return;
  }
  // The loop's cached time may be as old as the current iteration; measure
  // the timeout from now, not from then.
  uv_update_time(loop_);
  uv_timer_start(timer_.get(), on_timer, static_cast<uint64_t>(timeout_.count()), 0);
  begin();
}

void Probe::cancel() {
  if (state_ == State::Done) return;
  state_ = State::Done;
  cb_ = nullptr;
  timer_.reset();
  close_io();
}

void Probe::finish(bool pass, std::string reason) {
  if (state_ != State::Running) return;
  state_ = State::Done;
  timer_.reset();
  close_io();
  // Moved out so that the owner may reuse this probe from inside the callback
  // without destroying the function that is running.
  Callback cb = std::move(cb_);
  cb_ = nullptr;
  if (cb) cb(pass, std::move(reason));
}

void Probe::fail_later(std::string reason) {
  if (state_ != State::Running || deferred_) return;
  deferred_ = true;
  deferred_reason_ = std::move(reason);
  close_io();
  uv_timer_start(timer_.get(), on_timer, 0, 0);
}

void Probe::on_timer(uv_timer_t* t) {
  auto* self = static_cast<Probe*>(t->data);
  if (!self) return;
  if (self->deferred_) {
    self->finish(false, std::move(self->deferred_reason_));
    return;
  }
  // libuv runs an iteration's expired timers before it reads the sockets.
  // When the loop was held up past the timeout (a sink waiting for the
  // control plane's lock, a thread the scheduler set aside on a busy
  // machine), the answer may have come in time and still be unread: one
  // more turn of the loop reads it first (its poll waits 1 ms at most; a
  // 0 ms timer would run again in this very pass of the timers).
  if (!self->last_look_) {
    self->last_look_ = true;
    uv_timer_start(t, on_timer, 1, 0);
    return;
  }
  self->finish(false, "timeout after " + std::to_string(self->timeout_.count()) + "ms");
}

std::unique_ptr<Probe> make_probe(const ProbeEnv& env, const conf::HealthCheck& check,
                                  const ProbeAddress& address, Probe::Callback cb) {
  std::unique_ptr<Probe> p;
  switch (check.type) {
    case conf::HealthType::Tcp:
      p = std::make_unique<TcpProbe>(env.loop, address, check.timeout, std::move(cb));
      break;
    case conf::HealthType::Http:
      p = std::make_unique<HttpProbe>(env.loop, address, check, std::move(cb));
      break;
    case conf::HealthType::Tls:
      p = std::make_unique<TlsProbe>(env.loop, env.tls, address, check, std::move(cb),
                                     env.tls_name ? *env.tls_name : std::string(), env.tls_verify);
      break;
    case conf::HealthType::Dns:
      p = std::make_unique<DnsProbe>(env.loop, address, check, std::move(cb));
      break;
    case conf::HealthType::Udp:
      p = std::make_unique<UdpProbe>(env.loop, address, check, std::move(cb));
      break;
    case conf::HealthType::None:
      return nullptr;
  }
  if (p) p->start();
  return p;
}

}  // namespace lb::health
