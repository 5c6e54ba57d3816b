// What a TLS session learns from the client's ClientHello: the pool its
// server name routes to, and the access log's TLS fields (JA4 among them),
// in both modes.
//
// passthrough: the session reads the hello straight into the bytes it will
// send the backend first (its early_ buffer, grown to what arrived, at most
// kMaxClientHello) instead of peeking it with MSG_PEEK: libuv reports
// readability only by reading, and a peek on the level-triggered loop would
// spin while half a hello waits in the kernel. To the backend it is the
// same: every byte, in order, nothing added or changed.
//
// terminate: the TLS engine consumes the client's bytes; observe() keeps a
// copy of the first ones only until the hello is whole (or known not to be a
// hello: the handshake then fails anyway), for JA4, and the session calls it
// only while the access log is on. The server name that routes is the one
// the handshake accepted (set_sni()).
//
// JA4 (a SHA-256 over the hello's lists) is computed only when asked for:
// the access log is its one consumer.
// Thread: one worker's session.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "conf/config.h"
#include "core/tls/client_hello.h"

namespace lb::tls {

struct Passthrough {
  // From the parsed hello (empty when absent):
  std::string sni;          // as sent
  std::string sni_key;      // lower-cased, without a trailing dot: routing and hash_key = "sni"
  std::string tls_version;  // highest offered: "1.3", "1.2", ...
  std::string alpn;         // offered protocols, comma separated, in order
  std::string ja4;          // empty unless learnt with_ja4

  // Takes what the access log and routing need from `hello`; the JA4 only
  // `with_ja4`.
  void learn(const ClientHello& hello, bool with_ja4);
  // The server name (and its routing key) as the handshake accepted it.
  void set_sni(std::string_view name);
  // terminate: `n` more bytes from the client. True once the hello is
  // decided (learnt, or not one); later calls then do nothing.
  bool observe(const char* data, size_t n);
  // terminate without a consumer for JA4: observe() keeps nothing.
  void skip_observe() { decided_ = true; }

 private:
  std::string observed_;  // observe(): the bytes so far
  bool decided_ = false;
};

// The pool for server name `sni_key`: the first route with a matching
// pattern, else the listener's pool. Never null.
const std::string* route_pool(const conf::Listener& listener, const std::string& sni_key);

}  // namespace lb::tls
