// StreamProbe: the part of the tcp, http and tls probes that deals with one
// TCP connection (connect, write, read). Derived probes react to the events.
//
// Thread rules: as Probe (loop thread only).
#pragma once

#include <string>

#include "health/probe.h"

namespace lb::health {

class StreamProbe : public Probe {
 protected:
  using Probe::Probe;

  void begin() override;     // connects to address_
  void close_io() override;  // derived probes that own more must call this too

  // Connection established; reading has not started.
  virtual void on_connected() = 0;
  // Bytes from the backend (only after start_reading()).
  virtual void on_data(const char* data, size_t len) = 0;
  // End of stream (UV_EOF) or a read error. Default: fail.
  virtual void on_read_end(int err);

  // Queues bytes for the backend; a write error fails the probe.
  void write(std::string data);
  void start_reading();

 private:
  static void on_connect(uv_connect_t* req, int status);
  static void on_write(uv_write_t* req, int status);
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);

  UvPtr<uv_tcp_t> tcp_;
  char rbuf_[4096];
};

// tcp: the connection is accepted.
class TcpProbe final : public StreamProbe {
 public:
  TcpProbe(uv_loop_t* loop, ProbeAddress address, std::chrono::milliseconds timeout, Callback cb)
      : StreamProbe(loop, std::move(address), timeout, std::move(cb)) {}

 private:
  void on_connected() override { finish(true, "tcp connect ok"); }
  void on_data(const char*, size_t) override {}
};

}  // namespace lb::health
