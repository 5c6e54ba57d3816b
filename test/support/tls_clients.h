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
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "test/support/child_process.h"
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

// A self-signed ECDSA P-256 certificate for CN=`name` (also its DNS
// subjectAltName), made by the openssl CLI as DIR/NAME.pem and DIR/NAME.key.
bool make_certificate(const std::string& dir, const std::string& name);

// `openssl s_server -www` on 127.0.0.1 (an ephemeral port) with a
// certificate and key (e.g. make_certificate(dir, name)'s DIR/NAME.pem and
// DIR/NAME.key): a real TLS backend whose certificate says which one a client
// reached. `extra` arguments are added (e.g. "-Verify", "1", "-CAfile", ca).
class OpensslServer {
 public:
  OpensslServer(const std::string& cert, const std::string& key, const std::vector<std::string>& extra = {});
  bool ok() const { return port_ != 0; }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  std::unique_ptr<ChildProcess> server_;
  uint16_t port_ = 0;
};

// Runs `openssl s_client` against 127.0.0.1:`port` naming `sni` (none when
// empty), offering ALPN h2; with stdin at EOF it ends after the handshake.
// Returns its stdout and stderr ("" when it did not finish in time).
std::string run_openssl_client(uint16_t port, const std::string& sni, Deadline deadline);

// A client program run to its end (at most 60 s): exit status (none when it
// did not start or end in time) and its output.
struct ClientRun {
  std::optional<int> status;
  std::string out;
};
ClientRun run_client(std::vector<std::string> argv);

// Python's ssl through a TLS port: verifies against `ca` (chain and `sni`),
// offers ALPN http/1.1 then h2, echoes `size` bytes through, closes with
// close_notify and waits for the other side's. Prints "version alpn
// notAfter certificate-length" on success.
ClientRun python_echo(uint16_t port, const std::string& sni, const std::string& ca, size_t size);
// Python's ssl through a TLS port, verifying against `ca`: sends `request`,
// then prints what comes back until the other side ends.
ClientRun python_fetch(uint16_t port, const std::string& sni, const std::string& ca,
                       const std::string& request = "");

}  // namespace lb::test
