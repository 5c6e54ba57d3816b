// What a TLS session learns from the client's ClientHello: the pool its
// server name routes to, and the access log's TLS fields (JA4 among them),
// in both modes.
//
// passthrough: lb reads the hello into `buf` instead of peeking it with
// MSG_PEEK: libuv reports readability only by reading, and a peek on the
// level-triggered loop would spin while half a hello waits in the kernel. To
// the backend it is the same: every byte, in order, nothing added or changed
// (the session allocates `buf` and hands its bytes on).
//
// terminate: the TLS engine consumes the client's bytes; observe() keeps a
// copy of the first ones only until the hello is whole (or known not to be a
// hello: the handshake then fails anyway), for JA4. The server name that
// routes is the one the handshake accepted (set_sni()).
// Thread: one worker's session.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "conf/config.h"
#include "core/tls/client_hello.h"

namespace lb::tls {

struct Passthrough {
  // passthrough: the client's first bytes, at most kMaxClientHello;
  // released once they have been handed to the backend.
  std::unique_ptr<uint8_t[]> buf;
  size_t len = 0;

  // From the parsed hello (empty when absent):
  std::string sni;          // as sent
  std::string sni_key;      // lower-cased, without a trailing dot: routing and hash_key = "sni"
  std::string tls_version;  // highest offered: "1.3", "1.2", ...
  std::string alpn;         // offered protocols, comma separated, in order
  std::string ja4;

  // Takes what the access log and routing need from `hello`.
  void learn(const ClientHello& hello);
  // The server name (and its routing key) as the handshake accepted it.
  void set_sni(std::string_view name);
  // terminate: `n` more bytes from the client. True once the hello is
  // decided (learnt, or not one); later calls then do nothing.
  bool observe(const char* data, size_t n);

 private:
  std::string observed_;  // observe(): the bytes so far
  bool decided_ = false;
};

// The pool for server name `sni_key`: the first route with a matching
// pattern, else the listener's pool. Never null.
const std::string* route_pool(const conf::Listener& listener, const std::string& sni_key);

}  // namespace lb::tls
