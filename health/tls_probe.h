// tls probe: TCP connect, then a full TLS handshake.
//
// OpenSSL never touches the socket: it works on two memory BIOs that the
// probe feeds from libuv reads and drains into libuv writes, so the handshake
// runs on the loop like any other I/O. The peer certificate is not verified
// (a health check asks "does it speak TLS", not "do we trust it"), unless the
// pool has [pool.tls]: its context then verifies the chain, and `verify_name`
// the name, as the pool's traffic would be.
//
// Thread rules: as Probe (loop thread only). The SSL_CTX may be shared by
// every probe of the loop; each SSL takes its own reference to it.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "health/stream_probe.h"

namespace lb::health {

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

// A client context for probes: no verification, OpenSSL's default versions.
// Null when OpenSSL cannot create one.
SslCtxPtr make_probe_tls_context();

class TlsProbe final : public StreamProbe {
 public:
  // `name`: sent (and verified with `verify_name`) when check.tls_sni is empty.
  TlsProbe(uv_loop_t* loop, SSL_CTX* ctx, ProbeAddress address, const conf::HealthCheck& check, Callback cb,
           std::string name = {}, bool verify_name = false);
  ~TlsProbe() override;

 private:
  void begin() override;
  void close_io() override;
  void on_connected() override;
  void on_data(const char* data, size_t len) override;
  void on_read_end(int err) override;

  // Runs the handshake as far as the bytes received allow.
  void drive();
  // Sends what OpenSSL wrote into the outgoing BIO.
  void flush();

  SSL_CTX* ctx_;
  std::string sni_;
  bool verify_name_;
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;   // owned by ssl_: bytes from the backend
  BIO* out_ = nullptr;  // owned by ssl_: bytes for the backend
};

}  // namespace lb::health
