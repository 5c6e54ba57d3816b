#include "test/support/tls_backend.h"

#include <fmt/format.h>

#include <fstream>
#include <vector>

namespace lb::test {

namespace {

// argv: cert key client_ca|- greeting|-
const char* kPythonTlsServer = R"(import socket, ssl, sys, threading
cert, key, client_ca, greeting = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if client_ca != '-':
    ctx.load_verify_locations(client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
names = {}
def on_sni(sock, name, c):
    names[id(sock)] = name
ctx.sni_callback = on_sni
lock = threading.Lock()
def say(text):
    with lock:
        print(text, flush=True)
def serve(raw):
    try:
        s = ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
    except (ssl.SSLError, OSError) as e:
        say('FAIL %s' % e)
        raw.close()
        return
    peer = s.getpeercert()
    cn = dict(x[0] for x in peer['subject']).get('commonName', '?') if peer else '-'
    say('CONN sni=%s cert=%s version=%s' % (names.pop(id(s), None) or '-', cn, s.version()))
    if greeting != '-':
        s.sendall(greeting.encode())
    n, end = 0, 'close_notify'
    while True:
        try:
            d = s.recv(65536)
        except ssl.SSLEOFError:
            end = 'ragged'
            break
        except (ssl.SSLError, OSError) as e:
            end = 'error %s' % e
            break
        if not d:
            break
        n += len(d)
        s.sendall(d)
    say('END %s bytes=%d' % (end, n))
    try:
        if end == 'close_notify':
            s.unwrap()
    except (ssl.SSLError, OSError):
        pass
    s.close()
ls = socket.socket()
ls.bind(('127.0.0.1', 0))
ls.listen(64)
say('PORT %d' % ls.getsockname()[1])
while True:
    raw, _ = ls.accept()
    threading.Thread(target=serve, args=(raw,), daemon=True).start()
)";

}  // namespace

PythonTlsServer::PythonTlsServer(const Options& o) {
  server_ = std::make_unique<ChildProcess>(std::vector<std::string>{
      "/usr/bin/python3", "-c", kPythonTlsServer, o.cert, o.key, o.client_ca.empty() ? "-" : o.client_ca,
      o.greeting.empty() ? "-" : o.greeting});
  if (!server_->started()) return;
  static const std::regex port_line(R"(^PORT (\d+))");
  auto line = server_->wait_for_line(port_line, in(seconds(20)));
  std::smatch m;
  if (line && std::regex_search(*line, m, port_line)) port_ = static_cast<uint16_t>(std::stoi(m[1]));
}

HaproxyReceiver::HaproxyReceiver(const std::string& dir, const std::string& cert_and_key) {
  // The socket is ours, bound and listening before HAProxy starts: its port
  // is known and clients queue until HAProxy accepts.
  listener_ = tcp_listen("127.0.0.1");
  if (!listener_) return;
  port_ = local_port(listener_);
  const std::string ssl = cert_and_key.empty() ? "" : " ssl crt " + cert_and_key;
  // HAProxy 2.6 reads PP2_TYPE_AUTHORITY (fc_pp_authority) and
  // PP2_TYPE_UNIQUE_ID; it has no fetch for PP2_TYPE_SSL or PP2_TYPE_ALPN.
  const std::string config = fmt::format(R"(global
    log stdout format raw local0
    maxconn 200

defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend pp
    bind fd@3 accept-proxy{}
    log-format "PP authority=%[fc_pp_authority] client=%ci:%cp"
    http-request return status 200 content-type text/plain lf-string "authority=%[fc_pp_authority]\n"
)",
                                         ssl);
  const std::string path = dir + "/haproxy.cfg";
  std::ofstream(path) << config;
  SpawnOptions options;
  options.listen_fds = {listener_.fd()};
  // Checked first: a configuration HAProxy refuses fails here, with its
  // reasons in the check's output.
  ChildProcess check({"/usr/sbin/haproxy", "-c", "-f", path}, options);
  if (!check.started() || check.wait_exit(in(seconds(30))) != 0) {
    check_output_ = check.output();
    return;
  }
  server_ = std::make_unique<ChildProcess>(std::vector<std::string>{"/usr/sbin/haproxy", "-db", "-f", path},
                                           options);
  ok_ = server_->started();
}

}  // namespace lb::test
