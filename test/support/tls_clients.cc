#include "test/support/tls_clients.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
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

}  // namespace lb::test
