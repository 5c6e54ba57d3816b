// Real servers on 127.0.0.1 for the health probe tests.
//
// Each server runs a thread with blocking sockets and poll(); tests talk to it
// through atomics and mutex-protected records. Handlers run on the server
// thread, one connection or datagram at a time, and never use Catch2 (its
// assertions are not thread-safe). Every socket has a 2s receive/send timeout
// so a misbehaving probe cannot wedge a server thread.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "conf/config.h"
#include "health/dns.h"

namespace lb::health::testing {

// Probes and servers write to peers that may have gone; like lb itself
// (lb/server.cc), the test process ignores SIGPIPE and sees EPIPE instead.
inline const bool kSigpipeIgnored = [] {
  std::signal(SIGPIPE, SIG_IGN);
  return true;
}();

inline sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

inline conf::Endpoint loopback_endpoint(uint16_t port) {
  conf::Endpoint e;
  e.text = "127.0.0.1:" + std::to_string(port);
  sockaddr_in a = loopback(port);
  std::memcpy(&e.addr, &a, sizeof a);
  e.addr_len = sizeof a;
  return e;
}

inline uint16_t local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("getsockname failed");
  return ntohs(a.sin_port);
}

inline void set_timeouts(int fd) {
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// A socket of `type` bound to 127.0.0.1:port (0 = any), -1 on failure.
inline int bound_socket(int type, uint16_t port) {
  int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a = loopback(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// A port on 127.0.0.1 where nothing listens: bound, then closed.
inline uint16_t closed_port(int type) {
  int fd = bound_socket(type, 0);
  if (fd < 0) throw std::runtime_error("bind failed");
  uint16_t p = local_port(fd);
  close(fd);
  return p;
}

// Polls a socket and an eventfd on a thread; subclasses handle readiness.
// The eventfd carries stop requests and commands.
class PollThread {
 public:
  PollThread(const PollThread&) = delete;
  PollThread& operator=(const PollThread&) = delete;

 protected:
  PollThread() : wake_(eventfd(0, EFD_CLOEXEC)) {
    if (wake_ < 0) throw std::runtime_error("eventfd failed");
  }
  virtual ~PollThread() { close(wake_); }

  // Subclass constructors call this last; subclass destructors call join().
  void launch() {
    thread_ = std::thread([this] { loop(); });
  }
  void join() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
    }
    signal();
    thread_.join();
  }
  void signal() {
    uint64_t one = 1;
    (void)!write(wake_, &one, sizeof one);
  }

  virtual int fd() = 0;         // -1: nothing to poll but the wake fd
  virtual void on_ready() = 0;  // fd() is readable
  virtual void on_command() {}  // under mu_, after a signal()

  std::mutex mu_;
  std::condition_variable cv_;

 private:
  void loop() {
    for (;;) {
      pollfd p[2] = {{wake_, POLLIN, 0}, {fd(), POLLIN, 0}};
      nfds_t n = p[1].fd >= 0 ? 2 : 1;
      if (poll(p, n, -1) < 0) continue;
      if (p[0].revents) {
        uint64_t v;
        (void)!read(wake_, &v, sizeof v);
        std::lock_guard lk(mu_);
        if (stopping_) return;
        on_command();
        cv_.notify_all();
        continue;
      }
      if (n == 2 && p[1].revents) on_ready();
    }
  }

  int wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// Accepts TCP connections and hands each to a handler, which owns the fd.
class TcpServer : public PollThread {
 public:
  using Handler = std::function<void(int fd)>;

  explicit TcpServer(Handler h) : handler_(std::move(h)) {
    listen_fd_ = open_listener(0);
    if (listen_fd_ < 0) throw std::runtime_error("listen failed");
    port_ = local_port(listen_fd_);
    launch();
  }
  ~TcpServer() override {
    join();
    if (listen_fd_ >= 0) close(listen_fd_);
    for (int fd : held_) close(fd);
  }

  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }

  // Closes the listening socket: connections are refused from now on.
  bool close_listener() { return command(Command::Close); }
  // Listens again on the same port.
  bool reopen_listener() { return command(Command::Open); }

  // For handlers that never answer: keeps the connection open until the
  // server is destroyed. Server thread only.
  void hold(int fd) { held_.push_back(fd); }

 private:
  enum class Command { None, Close, Open };

  static int open_listener(uint16_t port) {
    int fd = bound_socket(SOCK_STREAM, port);
    if (fd >= 0 && listen(fd, 64) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }

  bool command(Command c) {
    std::unique_lock lk(mu_);
    command_ = c;
    done_ = false;
    signal();
    cv_.wait(lk, [&] { return done_; });
    return ok_;
  }

  void on_command() override {
    if (command_ == Command::Close) {
      if (listen_fd_ >= 0) close(listen_fd_);
      listen_fd_ = -1;
      ok_ = true;
    } else if (command_ == Command::Open) {
      if (listen_fd_ < 0) listen_fd_ = open_listener(port_);
      ok_ = listen_fd_ >= 0;
    }
    command_ = Command::None;
    done_ = true;
  }

  int fd() override { return listen_fd_; }

  void on_ready() override {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return;
    ++accepted_;
    set_timeouts(fd);
    handler_(fd);
  }

  Handler handler_;
  int listen_fd_ = -1;  // server thread (and the constructor/destructor)
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0};
  std::vector<int> held_;
  Command command_ = Command::None;  // under mu_
  bool done_ = false;
  bool ok_ = false;
};

// Answers datagrams; the handler returns the replies to send back, in order.
class UdpServer : public PollThread {
 public:
  using Handler = std::function<std::vector<std::string>(std::string_view)>;

  explicit UdpServer(Handler h) : handler_(std::move(h)) {
    fd_ = bound_socket(SOCK_DGRAM, 0);
    if (fd_ < 0) throw std::runtime_error("udp bind failed");
    port_ = local_port(fd_);
    launch();
  }
  ~UdpServer() override {
    join();
    close(fd_);
  }

  uint16_t port() const { return port_; }
  int received() const { return received_.load(); }

 private:
  int fd() override { return fd_; }
  void on_ready() override {
    char buf[4096];
    sockaddr_storage from{};
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(fd_, buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0) return;
    ++received_;
    for (const std::string& r : handler_(std::string_view(buf, static_cast<size_t>(n))))
      sendto(fd_, r.data(), r.size(), 0, reinterpret_cast<sockaddr*>(&from), len);
  }

  Handler handler_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<int> received_{0};
};

// Reads an HTTP request head (up to the blank line, 8 KiB at most).
inline std::string read_request_head(int fd) {
  std::string req;
  char buf[1024];
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < 8192) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    req.append(buf, static_cast<size_t>(n));
  }
  return req;
}

inline void send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    data.remove_prefix(static_cast<size_t>(n));
  }
}

// HTTP/1.1 server answering every request with `status` (or `raw`, verbatim,
// when set), recording what it received and what it answered.
class HttpServer {
 public:
  HttpServer() : server_([this](int fd) { serve(fd); }) {}

  uint16_t port() const { return server_.port(); }
  TcpServer& tcp() { return server_; }

  void set_status(int s) { status_ = s; }
  void set_raw(std::string raw) {
    std::lock_guard lk(mu_);
    raw_ = std::move(raw);
  }
  std::string last_request() {
    std::lock_guard lk(mu_);
    return last_request_;
  }
  std::vector<int> served() {
    std::lock_guard lk(mu_);
    return served_;
  }

 private:
  void serve(int fd) {
    std::string req = read_request_head(fd);
    int status = status_.load();
    std::string raw;
    {
      std::lock_guard lk(mu_);
      last_request_ = req;
      raw = raw_;
      if (raw.empty()) served_.push_back(status);
    }
    if (raw.empty()) {
      raw = "HTTP/1.1 " + std::to_string(status) +
            " Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    }
    send_all(fd, raw);
    close(fd);
  }

  std::atomic<int> status_{200};
  std::mutex mu_;
  std::string raw_;
  std::string last_request_;
  std::vector<int> served_;
  TcpServer server_;  // last: its thread starts after (and stops before) the rest
};

// Accepts and never answers (and never closes until destroyed).
class SilentServer {
 public:
  SilentServer() : server_([this](int fd) { server_.hold(fd); }) {}
  uint16_t port() const { return server_.port(); }
  int accepted() const { return server_.accepted(); }

 private:
  TcpServer server_;
};

// A self-signed certificate made in memory: EC P-256, CN=lb-health-test.
class SelfSignedTlsServerContext {
 public:
  SelfSignedTlsServerContext() {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* cert = X509_new();
    if (!key || !cert) throw std::runtime_error("openssl: key or cert allocation");
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("lb-health-test"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    if (X509_sign(cert, key, EVP_sha256()) <= 0) throw std::runtime_error("openssl: X509_sign");
    ctx_ = SSL_CTX_new(TLS_server_method());
    if (!ctx_ || SSL_CTX_use_certificate(ctx_, cert) != 1 || SSL_CTX_use_PrivateKey(ctx_, key) != 1 ||
        SSL_CTX_check_private_key(ctx_) != 1)
      throw std::runtime_error("openssl: server context");
    X509_free(cert);
    EVP_PKEY_free(key);
  }
  ~SelfSignedTlsServerContext() { SSL_CTX_free(ctx_); }
  SelfSignedTlsServerContext(const SelfSignedTlsServerContext&) = delete;
  SelfSignedTlsServerContext& operator=(const SelfSignedTlsServerContext&) = delete;
  SSL_CTX* get() const { return ctx_; }

 private:
  SSL_CTX* ctx_ = nullptr;
};

// TLS server: completes handshakes and records the SNI name it was sent.
class TlsServer {
 public:
  TlsServer() {
    // Configure the context before the server thread exists.
    SSL_CTX_set_tlsext_servername_callback(ctx_.get(), on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx_.get(), this);
    server_ = std::make_unique<TcpServer>([this](int fd) { serve(fd); });
  }
  uint16_t port() const { return server_->port(); }
  int handshakes() const { return handshakes_.load(); }
  std::string last_sni() {
    std::lock_guard lk(mu_);
    return sni_;
  }

 private:
  static int on_servername(SSL* ssl, int*, void* arg) {
    auto* self = static_cast<TlsServer*>(arg);
    const char* n = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    std::lock_guard lk(self->mu_);
    self->sni_ = n ? n : "";
    return SSL_TLSEXT_ERR_OK;
  }

  void serve(int fd) {
    {
      std::lock_guard lk(mu_);
      sni_ = "(none)";
    }
    SSL* ssl = SSL_new(ctx_.get());
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) ++handshakes_;
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
  }

  SelfSignedTlsServerContext ctx_;
  std::atomic<int> handshakes_{0};
  std::mutex mu_;
  std::string sni_;
  std::unique_ptr<TcpServer> server_;  // last
};

// Speaks plain text at whoever connects: not TLS.
class PlainTextServer {
 public:
  PlainTextServer()
      : server_([](int fd) {
          char buf[512];
          (void)!recv(fd, buf, sizeof buf, 0);
          send_all(fd, "SSH-2.0-definitely-not-tls\r\n");
          close(fd);
        }) {}
  uint16_t port() const { return server_.port(); }

 private:
  TcpServer server_;
};

enum class DnsMode {
  NoError,
  NxDomain,
  ServFail,
  WrongId,             // only a reply with another ID
  WrongIdThenNoError,  // a stray reply first, then the real one
  Silent,
};

// A DNS responder answering from the query itself (no records).
class DnsServer {
 public:
  DnsServer() : server_([this](std::string_view q) { return answer(q); }) {}
  uint16_t port() const { return server_.port(); }
  void set_mode(DnsMode m) { mode_ = m; }
  std::string last_query() {
    std::lock_guard lk(mu_);
    return last_query_;
  }

 private:
  std::vector<std::string> answer(std::string_view q) {
    {
      std::lock_guard lk(mu_);
      last_query_ = std::string(q);
    }
    if (q.size() < 12) return {};
    auto reply = [&](uint8_t rcode, bool other_id) {
      std::string r(q);
      r[2] = static_cast<char>(r[2] | 0x80);
      r[3] = static_cast<char>(0x80 | rcode);
      if (other_id) r[1] = static_cast<char>(r[1] ^ 0x5a);
      return r;
    };
    switch (mode_.load()) {
      case DnsMode::NoError:
        return {reply(0, false)};
      case DnsMode::NxDomain:
        return {reply(3, false)};
      case DnsMode::ServFail:
        return {reply(2, false)};
      case DnsMode::WrongId:
        return {reply(0, true)};
      case DnsMode::WrongIdThenNoError:
        return {reply(0, true), reply(0, false)};
      case DnsMode::Silent:
        return {};
    }
    return {};
  }

  std::atomic<DnsMode> mode_{DnsMode::NoError};
  std::mutex mu_;
  std::string last_query_;
  UdpServer server_;  // last
};

// Echoes "echo:" + the datagram.
class UdpEchoServer {
 public:
  UdpEchoServer()
      : server_([](std::string_view q) { return std::vector<std::string>{"echo:" + std::string(q)}; }) {}
  uint16_t port() const { return server_.port(); }
  int received() const { return server_.received(); }

 private:
  UdpServer server_;
};

}  // namespace lb::health::testing
