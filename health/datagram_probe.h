// DatagramProbe: the part of the dns and udp probes that deals with one
// connected UDP socket. Connecting makes the kernel drop datagrams from other
// sources and report an ICMP port-unreachable as ECONNREFUSED, so a closed
// port fails at once instead of at the timeout.
//
// Thread rules: as Probe (loop thread only).
#pragma once

#include <string>

#include "health/probe.h"

namespace lb::health {

class DatagramProbe : public Probe {
 protected:
  using Probe::Probe;

  // Opens, connects and sends the payload, then waits for datagrams.
  void begin() override;
  void close_io() override;

  // The datagram to send, or false with *error set to fail the probe.
  virtual bool payload(std::string* out, std::string* error) = 0;
  virtual void on_datagram(const char* data, size_t len) = 0;

 private:
  static void on_send(uv_udp_send_t* req, int status);
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_recv(uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const sockaddr* from, unsigned flags);

  UvPtr<uv_udp_t> udp_;
  char rbuf_[2048];
};

}  // namespace lb::health
