// TLS backends for re-encryption tests ([pool.tls]), real peers that say
// what they saw:
//
// PythonTlsServer: Python's `ssl` (the system OpenSSL) on 127.0.0.1:0,
// optionally requiring a client certificate, optionally speaking first; it
// echoes every byte and answers the client's close_notify with its own. One
// stdout line per event:
//   CONN sni=NAME|- cert=CN|- version=TLSv1.3   handshake done
//   END close_notify bytes=N | END ragged bytes=N  the client's end, bytes echoed
//   FAIL <reason>                                a failed handshake
//
// HaproxyReceiver: HAProxy (Debian's 2.6) in HTTP mode on a socket the test
// binds, `accept-proxy`, optionally `ssl crt`: it logs (and answers with) the
// PROXY v2 TLVs 2.6 can read, `authority=%[fc_pp_authority]`.
//
// Thread rules: spawn and use from the test's main thread (child_process.h).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <regex>
#include <string>

#include "test/support/child_process.h"
#include "test/support/deadline.h"
#include "test/support/net.h"

namespace lb::test {

class PythonTlsServer {
 public:
  struct Options {
    std::string cert, key;  // PEM files: leaf (then chain) and key
    std::string client_ca;  // when set, a client certificate this CA verifies is required
    std::string greeting;   // when set, sent right after the handshake (server speaks first)
  };
  explicit PythonTlsServer(const Options& options);
  bool ok() const { return port_ != 0; }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  ChildProcess& process() { return *server_; }
  std::optional<std::string> wait_for_line(const std::string& regex, Deadline deadline, size_t from = 0) {
    return server_->wait_for_line(std::regex(regex), deadline, from);
  }

 private:
  std::unique_ptr<ChildProcess> server_;
  uint16_t port_ = 0;
};

class HaproxyReceiver {
 public:
  // `cert_and_key`: a PEM file holding both (HAProxy's `crt`); empty: plain.
  explicit HaproxyReceiver(const std::string& dir, const std::string& cert_and_key = "");
  bool ok() const { return ok_; }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  ChildProcess& process() { return *server_; }
  // Why HAProxy refused the configuration (when !ok()).
  const std::string& check_output() const { return check_output_; }

 private:
  Socket listener_;
  std::string check_output_;  // handed to HAProxy as fd 3
  std::unique_ptr<ChildProcess> server_;
  uint16_t port_ = 0;
  bool ok_ = false;
};

}  // namespace lb::test
