#include "test/support/tls_clients.h"

#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstring>
#include <regex>

#include "test/support/child_process.h"
#include "test/support/net.h"

namespace lb::test {

std::vector<std::string> openssl_client_argv(uint16_t port, const std::string& sni) {
  std::vector<std::string> argv = {
      "/usr/bin/openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(port), "-alpn",
      "h2,http/1.1"};
  if (sni.empty()) {
    argv.push_back("-noservername");
  } else {
    argv.push_back("-servername");
    argv.push_back(sni);
  }
  return argv;
}

std::vector<std::string> python_client_argv(uint16_t port, const std::string& sni) {
  // server_hostname=None sends no server_name extension.
  static const char* kScript =
      "import socket, ssl, sys\n"
      "c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
      "c.check_hostname = False\n"
      "c.verify_mode = ssl.CERT_NONE\n"
      "c.set_alpn_protocols(['h2', 'http/1.1'])\n"
      "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
      "try:\n"
      "    c.wrap_socket(s, server_hostname=sys.argv[2] or None)\n"
      "except (ssl.SSLError, OSError):\n"
      "    pass\n";
  return {"/usr/bin/python3", "-c", kScript, std::to_string(port), sni};
}

std::vector<std::string> curl_client_argv(uint16_t port, const std::string& sni) {
  // curl sends no SNI for an IP literal.
  const std::string host = sni.empty() ? "127.0.0.1" : sni;
  std::vector<std::string> argv = {"/usr/bin/curl", "-sk", "--max-time", "20", "-o", "/dev/null"};
  if (!sni.empty()) {
    argv.push_back("--resolve");
    argv.push_back(sni + ":" + std::to_string(port) + ":127.0.0.1");
  }
  argv.push_back("https://" + host + ":" + std::to_string(port) + "/");
  return argv;
}

std::string capture_first_bytes(const std::function<std::vector<std::string>(uint16_t)>& make_argv,
                                const std::function<bool(const std::string&)>& complete, Deadline deadline) {
  Socket listener = tcp_listen("127.0.0.1");
  if (!listener) return {};
  ChildProcess client(make_argv(local_port(listener)));
  if (!client.started()) return {};
  pollfd pfd{listener.fd(), POLLIN, 0};
  if (::poll(&pfd, 1, poll_timeout_ms(deadline)) != 1) return {};
  Socket conn(::accept4(listener.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!conn) return {};
  std::string got;
  while (got.size() < 16384 && !complete(got)) {
    pollfd cp{conn.fd(), POLLIN, 0};
    if (::poll(&cp, 1, poll_timeout_ms(deadline)) != 1) break;
    char buf[4096];
    const ssize_t n = ::read(conn.fd(), buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  conn.close();  // the client sees the handshake fail and exits
  if (!client.wait_exit(deadline)) client.kill();
  return got;
}

bool make_certificate(const std::string& dir, const std::string& name) {
  ChildProcess p({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-days", "2", "-subj", "/CN=" + name, "-addext", "subjectAltName=DNS:" + name,
                  "-keyout", dir + "/" + name + ".key", "-out", dir + "/" + name + ".pem"});
  return p.started() && p.wait_exit(in(seconds(30))) == 0;
}

OpensslServer::OpensslServer(const std::string& cert, const std::string& key,
                             const std::vector<std::string>& extra) {
  std::vector<std::string> argv{
      "/usr/bin/openssl", "s_server", "-www", "-accept", "127.0.0.1:0", "-cert", cert, "-key", key};
  argv.insert(argv.end(), extra.begin(), extra.end());
  server_ = std::make_unique<ChildProcess>(std::move(argv));
  if (!server_->started()) return;
  // "ACCEPT 127.0.0.1:PORT" once it listens.
  static const std::regex accept_line(R"(^ACCEPT 127\.0\.0\.1:(\d+))");
  auto line = server_->wait_for_line(accept_line, in(seconds(20)));
  std::smatch m;
  if (line && std::regex_search(*line, m, accept_line)) port_ = static_cast<uint16_t>(std::stoi(m[1]));
}

std::string run_openssl_client(uint16_t port, const std::string& sni, Deadline deadline) {
  std::vector<std::string> argv = openssl_client_argv(port, sni);
  argv.erase(argv.begin() + 4, argv.begin() + 6);  // "-alpn h2,http/1.1" becomes "-alpn h2"
  argv.push_back("-alpn");
  argv.push_back("h2");
  ChildProcess client(argv);
  if (!client.started() || !client.wait_exit(deadline)) return {};
  return client.output();
}

namespace {

const char* kPythonEcho = R"(import socket, ssl, sys
port, sni, ca, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = ssl.create_default_context(cafile=ca)
c.set_alpn_protocols(['http/1.1', 'h2'])
s = c.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=20), server_hostname=sni)
data = bytes((i * 7) % 251 for i in range(size))
s.sendall(data)
got = b''
while len(got) < size:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
assert got == data, 'echo mismatch: %d of %d bytes' % (len(got), size)
cert = s.getpeercert()
der = s.getpeercert(binary_form=True)
version, alpn = s.version(), s.selected_alpn_protocol()
s.unwrap()  # our close_notify, then the other side's (after the backend closed)
print(version, alpn, cert['notAfter'].replace(' ', '_'), len(der))
)";

const char* kPythonFetch = R"(import socket, ssl, sys
port, sni, ca, request = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
c = ssl.create_default_context(cafile=ca)
s = c.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=20), server_hostname=sni)
s.sendall(request.encode())
got = b''
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
sys.stdout.write(got.decode())
)";

}  // namespace

ClientRun run_client(std::vector<std::string> argv) {
  ChildProcess p(std::move(argv));
  ClientRun r;
  if (!p.started()) return r;
  r.status = p.wait_exit(in(seconds(60)));
  r.out = p.output();
  return r;
}

ClientRun python_echo(uint16_t port, const std::string& sni, const std::string& ca, size_t size) {
  return run_client(
      {"/usr/bin/python3", "-c", kPythonEcho, std::to_string(port), sni, ca, std::to_string(size)});
}

ClientRun python_fetch(uint16_t port, const std::string& sni, const std::string& ca,
                       const std::string& request) {
  return run_client({"/usr/bin/python3", "-c", kPythonFetch, std::to_string(port), sni, ca, request});
}

TlsClient::TlsClient(uint16_t port, const std::string& sni, Deadline deadline) {
  int err = 0;
  sock_ = tcp_connect("127.0.0.1", port, deadline, &err);
  if (!sock_) {
    error_ = fmt::format("connect: {}", std::strerror(err));
    return;
  }
  ctx_ = SSL_CTX_new(TLS_client_method());
  ssl_ = ctx_ ? SSL_new(ctx_) : nullptr;
  in_ = BIO_new(BIO_s_mem());
  out_ = BIO_new(BIO_s_mem());
  if (!ssl_ || !in_ || !out_) {
    error_ = "cannot set up OpenSSL";
    BIO_free(in_);
    BIO_free(out_);
    in_ = out_ = nullptr;
    return;
  }
  SSL_set_bio(ssl_, in_, out_);
  SSL_set_verify(ssl_, SSL_VERIFY_NONE, nullptr);
  // A FIN without close_notify reads as the end, as for a plain socket.
  SSL_set_options(ssl_, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (!sni.empty()) SSL_set_tlsext_host_name(ssl_, sni.c_str());
  SSL_set_connect_state(ssl_);
  ReadEnd end = ReadEnd::Complete;
  handshaken_ = drive([this] { return SSL_do_handshake(ssl_); }, deadline, &end) == 1;
}

TlsClient::~TlsClient() {
  SSL_free(ssl_);  // and both BIOs
  SSL_CTX_free(ctx_);
}

uint16_t TlsClient::local_port() const { return sock_ ? test::local_port(sock_) : 0; }

bool TlsClient::flush(Deadline deadline) {
  char buf[16384];
  while (BIO_ctrl_pending(out_) > 0) {
    const int n = BIO_read(out_, buf, sizeof buf);
    if (n <= 0) break;
    const size_t len = static_cast<size_t>(n);
    if (write_all(sock_, std::string_view(buf, len), deadline) != len) {
      error_ = fmt::format("send: {}", errno ? std::strerror(errno) : "timed out");
      return false;
    }
  }
  return true;
}

ReadEnd TlsClient::fill(Deadline deadline) {
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(sock_.fd(), buf, sizeof buf, 0);
    if (n > 0) {
      BIO_write(in_, buf, static_cast<int>(n));
      return ReadEnd::Complete;
    }
    if (n == 0) {
      BIO_set_mem_eof_return(in_, 0);  // OpenSSL now reads the end
      return ReadEnd::Eof;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      error_ = fmt::format("recv: {}", std::strerror(errno));
      return ReadEnd::Reset;
    }
    pollfd p{sock_.fd(), POLLIN, 0};
    if (::poll(&p, 1, poll_timeout_ms(deadline)) <= 0) {
      error_ = "timed out";
      return ReadEnd::Timeout;
    }
  }
}

template <typename Op>
int TlsClient::drive(Op op, Deadline deadline, ReadEnd* end) {
  for (;;) {
    ERR_clear_error();
    const int r = op();
    const int why = SSL_get_error(ssl_, r);
    if (!flush(deadline)) {
      ended_ = true;
      *end = ReadEnd::Reset;
      return -1;
    }
    if (r > 0) return r;
    if (why == SSL_ERROR_WANT_READ) {
      if (ReadEnd e = fill(deadline); e == ReadEnd::Reset || e == ReadEnd::Timeout) {
        ended_ = ended_ || e == ReadEnd::Reset;
        *end = e;
        return -1;
      }
      continue;
    }
    ended_ = true;
    if (why == SSL_ERROR_ZERO_RETURN) {
      error_ = "the server ended the connection";
      *end = ReadEnd::Eof;
    } else {
      char text[256] = "";
      ERR_error_string_n(ERR_get_error(), text, sizeof text);
      error_ = fmt::format("OpenSSL error {}: {}", why, text);
      *end = ReadEnd::Reset;
    }
    return r;
  }
}

ReadResult TlsClient::exchange(std::string_view data, Deadline deadline) {
  ReadResult res;
  if (!handshaken_ || ended_) {
    res.end = ReadEnd::Reset;
    return res;
  }
  const int n =
      drive([&] { return SSL_write(ssl_, data.data(), static_cast<int>(data.size())); }, deadline, &res.end);
  if (n != static_cast<int>(data.size())) return res;
  char buf[16384];
  while (res.data.size() < data.size()) {
    const int got = drive([&] { return SSL_read(ssl_, buf, sizeof buf); }, deadline, &res.end);
    if (got <= 0) return res;
    res.data.append(buf, static_cast<size_t>(got));
  }
  res.end = ReadEnd::Complete;
  return res;
}

ReadEnd TlsClient::wait_closed(Deadline deadline) {
  if (!handshaken_ || ended_) return ReadEnd::Reset;
  char buf[16384];
  ReadEnd end = ReadEnd::Complete;
  return drive([&] { return SSL_read(ssl_, buf, sizeof buf); }, deadline, &end) > 0 ? ReadEnd::Complete : end;
}

bool TlsClient::key_update(bool ask_back) {
  return handshaken_ && !ended_ &&
         SSL_key_update(ssl_, ask_back ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED) == 1;
}

void TlsClient::close() {
  // Our close_notify; the server's answer is not waited for.
  if (handshaken_ && !ended_ && SSL_shutdown(ssl_) >= 0) flush(in(seconds(5)));
  ended_ = true;
  sock_.close();
}

}  // namespace lb::test
