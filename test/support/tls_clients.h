// Real TLS clients for tests: the first bytes `openssl s_client`, Python's
// `ssl` module and curl (all from Debian, linked against the system OpenSSL)
// send, captured on a listener of our own; and command lines that run them
// against a given port.
//
// Thread rules: free functions, no shared state; safe from any thread, but
// spawn children (and so call these) from the test's main thread (see
// child_process.h on PR_SET_PDEATHSIG).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "test/support/deadline.h"

namespace lb::test {

// Argument vectors of real clients that connect to 127.0.0.1:`port`, send a
// ClientHello naming `sni` (none when empty) and offering ALPN h2 then
// http/1.1, and give up once the peer closes. None verifies the server's
// certificate.
std::vector<std::string> openssl_client_argv(uint16_t port, const std::string& sni);
std::vector<std::string> python_client_argv(uint16_t port, const std::string& sni);
std::vector<std::string> curl_client_argv(uint16_t port, const std::string& sni);

// Listens on 127.0.0.1:0, runs make_argv(port), accepts its connection and
// reads until complete(bytes so far) says so, the client closes, 16 KiB have
// arrived or the deadline passes; then closes the connection and reaps the
// client. Returns the bytes (empty when the client never connected).
std::string capture_first_bytes(const std::function<std::vector<std::string>(uint16_t)>& make_argv,
                                const std::function<bool(const std::string&)>& complete, Deadline deadline);

}  // namespace lb::test
