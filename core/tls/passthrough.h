// What a `tls = "passthrough"` session needs from the client's ClientHello:
// the bytes read to get it (handed to the backend first, unchanged), the pool
// its server name routes to, and the access log's TLS fields.
//
// lb reads the hello into this buffer instead of peeking it with MSG_PEEK:
// libuv reports readability only by reading, and a peek on the level-
// triggered loop would spin while half a hello waits in the kernel. To the
// backend it is the same: every byte, in order, nothing added or changed.
// Thread: one worker's session.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "conf/config.h"
#include "core/tls/client_hello.h"

namespace lb::tls {

struct Passthrough {
  // The client's first bytes, at most kMaxClientHello; released once they
  // have been handed to the backend.
  std::unique_ptr<uint8_t[]> buf{new uint8_t[kMaxClientHello]};
  size_t len = 0;

  // From the parsed hello (empty when absent):
  std::string sni;          // as sent
  std::string sni_key;      // lower-cased, without a trailing dot: routing and hash_key = "sni"
  std::string tls_version;  // highest offered: "1.3", "1.2", ...
  std::string alpn;         // offered protocols, comma separated, in order
  std::string ja4;

  // Takes what the access log and routing need from `hello`.
  void learn(const ClientHello& hello);
};

// The pool for server name `sni_key`: the first route with a matching
// pattern, else the listener's pool. Never null.
const std::string* route_pool(const conf::Listener& listener, const std::string& sni_key);

}  // namespace lb::tls
