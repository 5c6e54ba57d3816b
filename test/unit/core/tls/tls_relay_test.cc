// TlsRelay on a real libuv loop: two relays (server and client mode) over a
// socketpair, as a terminated client leg and a re-encrypted backend leg.
#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <uv.h>

#include <csignal>
#include <functional>
#include <memory>
#include <string>

#include "core/tls/client_context.h"
#include "core/tls/server_context.h"
#include "core/tls/tls_relay.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_certs.h"

using lb::tls::TlsRelay;
using lb::tls::TlsStream;

namespace {

// One end of the pair: owns its handle, reads it into its relay, and lets
// the test script what to do on each event.
struct Side final : TlsRelay::Events {
  uv_tcp_t* tcp = new uv_tcp_t;
  std::unique_ptr<TlsRelay> relay;
  char scratch[16 * 1024];
  char read_buf[64 * 1024];
  lb::core::BufferBudget budget;

  std::string received;
  bool established = false, peer_done = false, clean = false, shutdown_done = false, closed = false;
  bool failed = false, failed_in_handshake = false, input_was_full = false;
  std::string why;
  int pauses = 0, drains = 0;
  std::function<void(Side&)> on_established, on_data, on_peer_done, on_drained, on_input_full, on_paused;

  Side(uv_loop_t* loop, int fd, std::unique_ptr<TlsStream> stream) {
    REQUIRE(uv_tcp_init(loop, tcp) == 0);
    REQUIRE(uv_tcp_open(tcp, fd) == 0);
    tcp->data = this;
    relay = std::make_unique<TlsRelay>(tcp, std::move(stream), *this, scratch, sizeof scratch, &budget);
  }
  ~Side() {
    if (!closed) delete tcp;  // never opened a loop
  }

  void read() {
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(tcp),
        [](uv_handle_t* h, size_t, uv_buf_t* b) {
          auto* s = static_cast<Side*>(h->data);
          *b = uv_buf_init(s->read_buf, sizeof s->read_buf);
        },
        [](uv_stream_t* st, ssize_t n, const uv_buf_t* b) {
          auto* s = static_cast<Side*>(st->data);
          if (n > 0) {
            if (!s->relay->on_ciphertext(b->base, static_cast<size_t>(n))) {
              uv_read_stop(st);
              s->input_was_full = true;
              if (s->on_input_full) s->on_input_full(*s);
            }
          } else if (n == UV_EOF) {
            uv_read_stop(st);
            s->relay->on_transport_eof();
          } else if (n < 0) {
            s->close();
          }
        });
  }
  void close() {
    if (closed) return;
    closed = true;
    relay->stop();
    uv_close(reinterpret_cast<uv_handle_t*>(tcp),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
  }
  void maybe_close() {
    if (peer_done && shutdown_done) close();
  }

  void tls_established() override {
    established = true;
    if (on_established) on_established(*this);
  }
  void tls_plaintext(const char* data, size_t n) override {
    received.append(data, n);
    if (on_data) on_data(*this);
  }
  void tls_peer_done(bool c) override {
    peer_done = true;
    clean = c;
    if (on_peer_done) on_peer_done(*this);
    maybe_close();
  }
  void tls_failed(bool in_handshake, const std::string& w) override {
    failed = true;
    failed_in_handshake = in_handshake;
    why = w;
    close();
  }
  void tls_drained() override {
    ++drains;
    if (on_drained) on_drained(*this);
  }
  void tls_shutdown_done() override {
    shutdown_done = true;
    maybe_close();
  }
};

struct Fixture {
  lb::test::TempDir dir;
  lb::test::TestCa ca;
  std::unique_ptr<lb::tls::ServerContext> server_ctx;
  std::unique_ptr<lb::tls::ClientContext> client_ctx;
  uv_loop_t loop;
  int fds[2];

  Fixture() {
    auto pem = ca.issue({"relay.example.com"}, lb::test::KeyType::ecdsa_p256);
    lb::tls::ServerSettings ss;
    ss.certificates.push_back({dir.write_file("s.pem", pem.cert), dir.write_file("s.key", pem.key)});
    std::string error;
    server_ctx = lb::tls::ServerContext::load(ss, std::make_shared<lb::tls::TicketKeyStore>(), &error);
    lb::tls::ClientSettings cs;
    cs.ca_file = dir.write_file("ca.pem", ca.cert_pem());
    client_ctx = lb::tls::ClientContext::load(cs, &error);
    INFO(error);
    REQUIRE(server_ctx);
    REQUIRE(client_ctx);
    REQUIRE(uv_loop_init(&loop) == 0);
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  }

  std::unique_ptr<Side> server() {
    std::string error;
    return std::make_unique<Side>(&loop, fds[0], TlsStream::server(server_ctx->ctx(), &error));
  }
  std::unique_ptr<Side> client(const std::string& name) {
    std::string error;
    return std::make_unique<Side>(&loop, fds[1], TlsStream::client(client_ctx->ctx(), name, true, &error));
  }

  // Runs until both sides are closed (every test makes them close).
  bool run(Side& a, Side& b) {
    for (int i = 0; i < 100000 && !(a.closed && b.closed); ++i) uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT);
    return a.closed && b.closed && uv_loop_close(&loop) == 0;
  }
};

// The client writes `total` bytes as fast as backpressure allows, then
// closes its direction once everything came back.
void stream_payload(Side& c, size_t total, std::string* sent) {
  auto pump = [sent, total](Side& s) {
    while (sent->size() < total) {
      std::string chunk(std::min<size_t>(16 * 1024, total - sent->size()), '\0');
      for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<char>('a' + (sent->size() + i) % 26);
      sent->append(chunk);
      if (s.relay->write(chunk.data(), chunk.size())) return;  // wait for drained
    }
  };
  c.on_established = [pump](Side& s) {
    s.relay->deliver(true);
    pump(s);
  };
  c.on_drained = pump;
  c.on_data = [total](Side& s) {
    if (s.received.size() == total) s.relay->shutdown();
  };
}

// The server echoes what it gets, holding reads of its socket while its
// writes are above the high-water mark, and closes after the client did.
void echo(Side& s) {
  s.on_established = [](Side& x) { x.relay->deliver(true); };
  s.on_data = [](Side& x) {
    std::string data;
    data.swap(x.received);
    if (x.relay->write(data.data(), data.size())) {
      ++x.pauses;
      uv_read_stop(reinterpret_cast<uv_stream_t*>(x.tcp));
      if (x.on_paused) x.on_paused(x);
    }
  };
  s.on_drained = [](Side& x) { x.read(); };
  s.on_peer_done = [](Side& x) { x.relay->shutdown(); };
}

}  // namespace

TEST_CASE("TlsRelay: a megabyte each way with backpressure, then close_notify both ways", "[tls][relay]") {
  Fixture f;
  auto server = f.server();
  auto client = f.client("relay.example.com");
  echo(*server);
  std::string sent;
  const size_t total = 1 << 20;
  stream_payload(*client, total, &sent);
  // The client reads nothing after its handshake until the server's queue
  // has reached the high-water mark and the server stopped reading.
  auto client_start = client->on_established;
  client->on_established = [client_start](Side& x) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(x.tcp));
    client_start(x);
  };
  Side* c = client.get();
  server->on_paused = [c](Side& x) {
    CHECK(x.relay->queued() >= TlsRelay::kHighWater);
    c->read();
  };
  server->read();
  client->read();
  client->relay->start();
  REQUIRE(f.run(*server, *client));
  CHECK(server->established);
  CHECK(client->established);
  CHECK_FALSE(server->failed);
  CHECK_FALSE(client->failed);
  CHECK(client->received == sent);
  CHECK(server->pauses >= 1);
  CHECK(server->drains == server->pauses);
  CHECK(server->peer_done);
  CHECK(server->clean);
  CHECK(client->peer_done);
  CHECK(client->clean);
  CHECK(server->budget.used == 0);
  CHECK(client->budget.used == 0);
}

TEST_CASE("TlsRelay: plaintext waits, bounded, until delivery is turned on", "[tls][relay]") {
  Fixture f;
  auto server = f.server();
  auto client = f.client("relay.example.com");
  echo(*server);
  // The backend is "connecting": nothing is delivered and the socket stops
  // being read once the input holds kInputLimit; then it connects.
  server->on_established = [](Side&) {};
  server->on_input_full = [](Side& x) {
    CHECK(x.relay->stream().input_pending() >= TlsRelay::kInputLimit);
    CHECK(x.received.empty());
    if (x.relay->deliver(true)) x.read();
  };
  std::string sent;
  const size_t total = 512 * 1024;
  stream_payload(*client, total, &sent);
  server->read();
  client->read();
  client->relay->start();
  REQUIRE(f.run(*server, *client));
  CHECK(server->input_was_full);
  CHECK(client->received == sent);
  CHECK(server->clean);
}

TEST_CASE("TlsRelay: a failed verification fails both handshakes", "[tls][relay]") {
  Fixture f;
  auto server = f.server();
  auto client = f.client("wrong.example.com");
  server->on_established = [](Side& x) { x.relay->deliver(true); };
  server->read();
  client->read();
  client->relay->start();
  // The client's alert ends the server's handshake; the client closes at once.
  REQUIRE(f.run(*server, *client));
  CHECK(client->failed);
  CHECK(client->failed_in_handshake);
  CHECK(client->why.find("certificate verify failed") != std::string::npos);
  CHECK(server->failed);
  CHECK(server->failed_in_handshake);
}

TEST_CASE("TlsRelay: a transport EOF without close_notify is a truncated end", "[tls][relay]") {
  Fixture f;
  auto server = f.server();
  auto client = f.client("relay.example.com");
  server->on_established = [](Side& x) { x.relay->deliver(true); };
  server->on_peer_done = [](Side& x) { x.close(); };
  client->on_established = [](Side& x) {
    x.relay->write("bye", 3);
    // FIN without close_notify.
    uv_os_fd_t fd;
    uv_fileno(reinterpret_cast<uv_handle_t*>(x.tcp), &fd);
    ::shutdown(fd, SHUT_WR);
  };
  client->on_data = [](Side&) {};
  server->read();
  client->read();
  client->relay->start();
  // The client closes once the server is gone.
  for (int i = 0; i < 100000 && !server->closed; ++i) uv_run(&f.loop, UV_RUN_ONCE);
  client->close();
  REQUIRE(f.run(*server, *client));
  CHECK(server->received == "bye");
  CHECK(server->peer_done);
  CHECK_FALSE(server->clean);
}

TEST_CASE("TlsRelay: a preface goes first, in the clear, then the ClientHello", "[tls][relay]") {
  // The alert after the other end closed meets EPIPE, as in lb (which ignores
  // SIGPIPE: lb/server.cc).
  std::signal(SIGPIPE, SIG_IGN);
  Fixture f;
  auto client = f.client("relay.example.com");
  // The other end reads raw bytes (a PROXY v2 receiver sees this).
  struct Raw {
    uv_tcp_t tcp;
    std::string got;
    char buf[4096];
    bool closed = false;
  } raw;
  REQUIRE(uv_tcp_init(&f.loop, &raw.tcp) == 0);
  REQUIRE(uv_tcp_open(&raw.tcp, f.fds[0]) == 0);
  raw.tcp.data = &raw;
  const std::string preface("\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x00", 16);
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&raw.tcp),
      [](uv_handle_t* h, size_t, uv_buf_t* b) {
        auto* r = static_cast<Raw*>(h->data);
        *b = uv_buf_init(r->buf, sizeof r->buf);
      },
      [](uv_stream_t* st, ssize_t n, const uv_buf_t* b) {
        auto* r = static_cast<Raw*>(st->data);
        if (n > 0) r->got.append(b->base, static_cast<size_t>(n));
        // The preface and a record header: enough; the client then sees
        // the connection end during its handshake.
        if ((n < 0 || r->got.size() >= 16 + 5) && !r->closed) {
          r->closed = true;
          uv_close(reinterpret_cast<uv_handle_t*>(st), nullptr);
        }
      });
  client->read();
  client->relay->start(preface);
  for (int i = 0; i < 100000 && !(raw.closed && client->closed); ++i) uv_run(&f.loop, UV_RUN_ONCE);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&f.loop) == 0);
  REQUIRE(raw.got.size() >= 16 + 5);
  CHECK(raw.got.substr(0, 16) == preface);
  CHECK(raw.got[16] == 0x16);  // a handshake record: the ClientHello
  CHECK(client->failed);
  CHECK(client->failed_in_handshake);
}
