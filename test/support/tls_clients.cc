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

OpensslServer::OpensslServer(const std::string& dir, const std::string& name) {
  server_ = std::make_unique<ChildProcess>(
      std::vector<std::string>{"/usr/bin/openssl", "s_server", "-www", "-accept", "127.0.0.1:0", "-cert",
                               dir + "/" + name + ".pem", "-key", dir + "/" + name + ".key"});
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

}  // namespace lb::test
