// Real TLS clients for tests: the first bytes `openssl s_client`, Python's
// `ssl` module and curl (all from Debian, linked against the system OpenSSL)
// send, captured on a listener of our own; command lines that run them
// against a given port; and TlsClient, the system OpenSSL in this process on
// one connection a test drives step by step.
//
// Thread rules: free functions, no shared state; safe from any thread, but
// spawn children (and so call these) from the test's main thread (see
// child_process.h on PR_SET_PDEATHSIG). A TlsClient is used by one thread.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "test/support/child_process.h"
#include "test/support/deadline.h"
#include "test/support/net.h"

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

// One TLS connection to 127.0.0.1:`port` (the system OpenSSL, in this
// process) that stays open between the test's steps, e.g. across an upgrade,
// where the command-line clients above run to their end. It names `sni`
// (none when empty) and does not verify the certificate. OpenSSL works on
// memory buffers and this object moves the bytes (send with MSG_NOSIGNAL: a
// peer that reset the connection fails a call, it does not kill the test).
// Every call waits at most until its deadline.
class TlsClient {
 public:
  // Connects and completes the handshake; ok() says whether it did.
  TlsClient(uint16_t port, const std::string& sni, Deadline deadline);
  ~TlsClient();
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  bool ok() const { return handshaken_; }
  // Why the last call failed (OpenSSL's error queue, or the socket's errno).
  const std::string& error() const { return error_; }
  // The client's end of the TCP connection.
  uint16_t local_port() const;

  // Sends `data` and reads as many bytes back (an echo backend): Complete
  // with the bytes, or how the connection ended first.
  ReadResult exchange(std::string_view data, Deadline deadline);
  // Waits for the server to end the connection: Eof (close_notify or FIN),
  // Reset, Timeout while it stays open, or Complete when data arrived.
  ReadEnd wait_closed(Deadline deadline);
  // A TLS 1.3 KeyUpdate, sent with the next exchange(); `ask_back` asks the
  // server to update its keys too. False when OpenSSL refuses (TLS 1.2).
  bool key_update(bool ask_back);
  // close_notify (unless the server already ended the connection), then
  // the socket closes.
  void close();

 private:
  // Runs `op` (an SSL_* call) until it succeeds, feeding it the socket's
  // bytes and sending what it wrote; its result, or <= 0 with error_ set
  // and *end saying how.
  template <typename Op>
  int drive(Op op, Deadline deadline, ReadEnd* end);
  bool flush(Deadline deadline);
  ReadEnd fill(Deadline deadline);

  Socket sock_;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;   // bytes from the server, for OpenSSL to read (owned by ssl_)
  BIO* out_ = nullptr;  // bytes OpenSSL wrote, to send (owned by ssl_)
  bool handshaken_ = false;
  bool ended_ = false;  // the server ended the connection (or it failed)
  std::string error_;
};

}  // namespace lb::test
