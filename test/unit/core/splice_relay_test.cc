// SpliceRelay on a real libuv loop with real loopback TCP connections:
//
//   client peer <-TCP-> [relay client fd | SpliceRelay | relay backend fd] <-TCP-> backend peer
//
// The peers are raw non-blocking sockets driven by uv_poll_t handles on the
// same loop, so each test is single-threaded and can stop reading, half-close
// or reset exactly when it wants. Every wait is a condition with a deadline;
// a 5 ms heartbeat timer only makes sure uv_run(UV_RUN_ONCE) comes back to
// check it.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/pipe_pool.h"
#include "core/splice_relay.h"
#include "test/support/deadline.h"
#include "test/support/net.h"

using lb::core::PipePool;
using lb::core::SpliceRelay;
using lb::core::SpliceResult;
using lb::test::Deadline;
using lb::test::in;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

int count_fds() {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  while (readdir(d)) ++n;
  closedir(d);
  return n;
}

// Open fds of the process. libuv opens a process-wide signal lock pipe on its
// first uv_loop_init, once per process and never closed: make sure that has
// happened before anyone counts.
int open_fds() {
  static const bool libuv_ready = [] {
    uv_loop_t l;
    if (uv_loop_init(&l) != 0) return false;
    return uv_loop_close(&l) == 0;
  }();
  (void)libuv_ready;
  return count_fds();
}

void set_buffers(int fd, int bytes) {
  if (bytes <= 0) return;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

int sockopt_int(int fd, int opt) {
  int v = 0;
  socklen_t len = sizeof v;
  getsockopt(fd, SOL_SOCKET, opt, &v, &len);
  return v;
}

// A connected loopback TCP pair through a listener on 127.0.0.1:0. Both ends
// non-blocking and close-on-exec. `bufsize` > 0 pins SO_SNDBUF/SO_RCVBUF
// (which also turns off autotuning, so buffer bounds are predictable).
bool tcp_pair(int* outer, int* inner, int bufsize = 0) {
  *outer = *inner = -1;
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  set_buffers(l, bufsize);  // inherited by the accepted socket
  bool ok = bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && listen(l, 4) == 0 &&
            getsockname(l, reinterpret_cast<sockaddr*>(&a), &alen) == 0;
  int c = ok ? socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
  if (c >= 0) {
    set_buffers(c, bufsize);
    ok = connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  int s = ok ? accept4(l, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC) : -1;
  ::close(l);
  if (s < 0) {
    if (c >= 0) ::close(c);
    return false;
  }
  fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
  *outer = c;
  *inner = s;
  return true;
}

// One end of a test connection, on the test loop.
struct Peer {
  int fd = -1;
  uv_poll_t* poll = nullptr;
  int interest = 0;
  // Sending: `out` goes out in order; optionally FIN after the last byte.
  std::string out;
  size_t sent = 0;
  bool shut_after_send = false;
  bool shut = false;
  // Receiving.
  bool reading = true;
  bool keep = true;  // store what arrives (else only count it)
  std::string in;
  size_t received = 0;
  bool eof = false;
  int error = 0;

  void open(uv_loop_t* loop, int f) {
    fd = f;
    poll = new uv_poll_t;
    REQUIRE(uv_poll_init_socket(loop, poll, fd) == 0);
    poll->data = this;
    update();
  }
  void send(const std::string& data, bool then_shutdown = false) {
    out += data;
    shut_after_send = then_shutdown;
    update();
  }
  void set_reading(bool on) {
    reading = on;
    update();
  }
  bool done_sending() const { return sent == out.size() && (!shut_after_send || shut); }
  bool ended() const { return eof || error != 0; }

  void update() {
    if (!poll) return;
    int want = 0;
    if (reading && !ended()) want |= UV_READABLE;
    if (error == 0 && !done_sending()) want |= UV_WRITABLE;
    if (want == interest) return;
    interest = want;
    if (want) {
      uv_poll_start(poll, want, on_poll);
    } else {
      uv_poll_stop(poll);
    }
  }
  static void on_poll(uv_poll_t* h, int status, int events) {
    auto* p = static_cast<Peer*>(h->data);
    if (status < 0) {
      // libuv reports POLLERR this way and stops the handle.
      int e = sockopt_int(p->fd, SO_ERROR);
      p->error = e != 0 ? e : ECONNRESET;
      p->interest = 0;
      return;
    }
    if (events & UV_WRITABLE) p->write_some();
    if (events & UV_READABLE) p->read_some();
    p->update();
  }
  void write_some() {
    while (sent < out.size()) {
      ssize_t n = ::send(fd, out.data() + sent, std::min<size_t>(out.size() - sent, 1 << 20), MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (errno == EINTR) {
        continue;
      } else {
        if (errno != EAGAIN) error = errno;
        return;
      }
    }
    if (shut_after_send && !shut) {
      ::shutdown(fd, SHUT_WR);
      shut = true;
    }
  }
  void read_some() {
    static char buf[256 * 1024];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        received += static_cast<size_t>(n);
        if (keep) in.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        eof = true;
        return;
      } else if (errno == EINTR) {
        continue;
      } else {
        if (errno != EAGAIN) error = errno;
        return;
      }
    }
  }
  void close(bool reset = false) {
    if (poll) {
      poll->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(poll),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll = nullptr;
    }
    if (fd >= 0) {
      if (reset) {
        linger l{1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
      }
      ::close(fd);
      fd = -1;
    }
  }
};

// Loop + pool + two peers + the relay between them, with the owner callbacks
// recorded.
struct Rig {
  uv_loop_t loop;
  PipePool pool;
  uv_timer_t* tick = nullptr;
  Peer client;   // the remote client
  Peer backend;  // the remote backend
  int relay_client_fd = -1;
  int relay_backend_fd = -1;
  SpliceRelay* relay = nullptr;
  bool started = false;
  bool loop_closed = false;
  // Owner callbacks.
  int finished_calls = 0;
  SpliceResult result = SpliceResult::Ok;
  bool backend_failed = false;
  bool closed = false;
  uint64_t to_backend = 0;
  uint64_t to_client = 0;

  static const SpliceRelay::Handler kHandler;

  explicit Rig(size_t pipe_size = PipePool::kDefaultPipeSize) : pool(pipe_size) {
    std::signal(SIGPIPE, SIG_IGN);  // as lb does: splice raises it like write(2)
    REQUIRE(uv_loop_init(&loop) == 0);
    tick = new uv_timer_t;
    uv_timer_init(&loop, tick);
    uv_timer_start(
        tick, [](uv_timer_t*) {}, 5, 5);
  }
  ~Rig() {
    if (!loop_closed) teardown();
  }

  // Both connections; `bufsize` pins every socket buffer on the path.
  void connect(int bufsize = 0) {
    int c_outer, c_inner, b_outer, b_inner;
    REQUIRE(tcp_pair(&c_outer, &c_inner, bufsize));
    REQUIRE(tcp_pair(&b_inner, &b_outer, bufsize));
    client.open(&loop, c_outer);
    backend.open(&loop, b_outer);
    relay_client_fd = c_inner;
    relay_backend_fd = b_inner;
  }
  int start(std::string_view preface = {}) {
    relay = new SpliceRelay(&loop, pool, relay_client_fd, relay_backend_fd, &kHandler, this);
    int rc = relay->start(preface);
    started = rc == 0;
    return rc;
  }
  bool run_until(const std::function<bool()>& pred, Deadline deadline = in(seconds(20))) {
    while (!pred()) {
      if (lb::test::expired(deadline)) return false;
      uv_run(&loop, UV_RUN_ONCE);
    }
    return true;
  }
  // Runs until `value()` has not changed for `quiet` of loop time.
  bool run_until_stable(const std::function<size_t()>& value, milliseconds quiet,
                        Deadline deadline = in(seconds(20))) {
    size_t last = value();
    auto since = lb::test::Clock::now();
    while (!lb::test::expired(deadline)) {
      uv_run(&loop, UV_RUN_ONCE);
      size_t v = value();
      if (v != last) {
        last = v;
        since = lb::test::Clock::now();
      } else if (lb::test::Clock::now() - since >= quiet) {
        return true;
      }
    }
    return false;
  }
  // Closes everything; returns uv_loop_close().
  int teardown() {
    client.close();
    backend.close();
    if (relay) {
      if (started && !closed) {
        relay->abort();
        run_until([&] { return closed; }, in(seconds(5)));
      }
      delete relay;
      relay = nullptr;
    }
    if (tick) {
      uv_close(reinterpret_cast<uv_handle_t*>(tick),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      tick = nullptr;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    loop_closed = true;
    return uv_loop_close(&loop);
  }
};

const SpliceRelay::Handler Rig::kHandler = {
    [](void* ctx, bool to_backend, size_t n) {
      auto* r = static_cast<Rig*>(ctx);
      (to_backend ? r->to_backend : r->to_client) += n;
    },
    [](void* ctx, SpliceResult res, bool backend_failed) {
      auto* r = static_cast<Rig*>(ctx);
      ++r->finished_calls;
      r->result = res;
      r->backend_failed = backend_failed;
    },
    [](void* ctx) { static_cast<Rig*>(ctx)->closed = true; },
};

std::string payload(size_t n, uint64_t seed) { return lb::test::random_bytes(n, seed); }

}  // namespace

TEST_CASE("splice relay moves 10 MB each way byte-exact and finishes ok", "[splice]") {
  REQUIRE(SpliceRelay::supported());
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    CHECK(rig.relay->running());
    // Both sockets keep little unsent data in the kernel (the fds are the
    // test's, the relay's duplicates share the sockets).
    for (int fd : {rig.relay_client_fd, rig.relay_backend_fd}) {
      int lowat = 0;
      socklen_t len = sizeof lowat;
      REQUIRE(getsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, &len) == 0);
      CHECK(lowat == static_cast<int>(SpliceRelay::kNotSentLowat));
    }
    const std::string up = payload(10 << 20, 1), down = payload(10 << 20, 2);
    rig.client.send(up, true);
    rig.backend.send(down, true);
    REQUIRE(rig.run_until([&] { return rig.client.ended() && rig.backend.ended() && rig.closed; }));
    CHECK(rig.client.error == 0);
    CHECK(rig.backend.error == 0);
    CHECK(rig.backend.eof);
    CHECK(rig.client.eof);
    CHECK(lb::test::mismatch_offset(rig.backend.in, up) == std::string::npos);
    CHECK(lb::test::mismatch_offset(rig.client.in, down) == std::string::npos);
    CHECK(rig.finished_calls == 1);
    CHECK(rig.result == SpliceResult::Ok);
    CHECK_FALSE(rig.backend_failed);
    CHECK(rig.to_backend == up.size());
    CHECK(rig.to_client == down.size());
    // Every pipe went back to the pool empty, and was reused rather than
    // re-created for each chunk.
    CHECK(rig.pool.in_use() == 0);
    CHECK(rig.pool.created() <= 2);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay half-close: the client stops sending, the backend keeps talking", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    const std::string request = payload(300 * 1024, 3);
    rig.client.send(request, true);  // request, then FIN
    REQUIRE(rig.run_until([&] { return rig.backend.eof; }));
    CHECK(rig.backend.in == request);
    // Only one direction is done: the relay goes on.
    CHECK(rig.relay->running());
    CHECK(rig.finished_calls == 0);
    CHECK_FALSE(rig.client.ended());
    // The backend answers after the client's EOF (and reads nothing more).
    const std::string reply = payload(2 << 20, 4);
    rig.backend.send(reply, true);
    REQUIRE(rig.run_until([&] { return rig.client.eof && rig.closed; }));
    CHECK(rig.client.error == 0);
    CHECK(lb::test::mismatch_offset(rig.client.in, reply) == std::string::npos);
    CHECK(rig.finished_calls == 1);
    CHECK(rig.result == SpliceResult::Ok);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay half-close: the backend stops sending, the client keeps talking", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    const std::string greeting = "220 hello\r\n";
    rig.backend.send(greeting, true);  // server speaks first, then FIN
    REQUIRE(rig.run_until([&] { return rig.client.eof; }));
    CHECK(rig.client.in == greeting);
    CHECK(rig.relay->running());
    const std::string upload = payload(3 << 20, 5);
    rig.client.send(upload, false);
    REQUIRE(rig.run_until([&] { return rig.backend.received == upload.size(); }));
    CHECK(lb::test::mismatch_offset(rig.backend.in, upload) == std::string::npos);
    CHECK(rig.relay->running());
    // The client's FIN completes the relay.
    rig.client.send("", true);
    REQUIRE(rig.run_until([&] { return rig.backend.eof && rig.closed; }));
    CHECK(rig.result == SpliceResult::Ok);
    CHECK(rig.finished_calls == 1);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay propagates a client reset to the backend", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    rig.client.send("some bytes");
    REQUIRE(rig.run_until([&] { return rig.backend.received == 10; }));
    rig.client.close(/*reset=*/true);
    REQUIRE(rig.run_until([&] { return rig.backend.ended() && rig.closed; }));
    CHECK(rig.backend.error == ECONNRESET);
    CHECK(rig.finished_calls == 1);
    CHECK(rig.result == SpliceResult::Reset);
    CHECK_FALSE(rig.backend_failed);
    CHECK(rig.pool.in_use() == 0);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay propagates a backend reset to the client and blames the backend", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    rig.backend.send("hello");
    REQUIRE(rig.run_until([&] { return rig.client.received == 5; }));
    // The relay is reading the backend when it resets: a backend failure
    // (as on the copy path, where the upstream read sees the reset).
    rig.backend.close(/*reset=*/true);
    REQUIRE(rig.run_until([&] { return rig.client.ended() && rig.closed; }));
    CHECK(rig.client.error == ECONNRESET);
    CHECK(rig.finished_calls == 1);
    CHECK(rig.result == SpliceResult::Reset);
    CHECK(rig.backend_failed);
    CHECK(rig.pool.in_use() == 0);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay resets the client when the backend resets mid-transfer", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    rig.client.send(payload(8 << 20, 6));
    REQUIRE(rig.run_until([&] { return rig.backend.received > 0; }));
    rig.backend.close(/*reset=*/true);
    REQUIRE(rig.run_until([&] { return rig.client.ended() && rig.closed; }));
    // Whether the relay noticed while writing to the backend or reading from
    // it is a race, so backend_failed is not asserted here.
    CHECK(rig.client.error == ECONNRESET);
    CHECK(rig.finished_calls == 1);
    CHECK(rig.result == SpliceResult::Reset);
    CHECK(rig.pool.in_use() == 0);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay backpressure: a destination that does not read stops the source", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    const int kBuf = 64 * 1024;
    rig.connect(kBuf);
    REQUIRE(rig.start() == 0);
    // What can sit between the sender and a non-reading receiver: the four
    // socket buffers on the path (as the kernel reports them, already
    // doubled) plus the relay's pipe (high-water mark).
    const size_t buffers = static_cast<size_t>(sockopt_int(rig.client.fd, SO_SNDBUF)) +
                           static_cast<size_t>(sockopt_int(rig.relay_client_fd, SO_RCVBUF)) +
                           static_cast<size_t>(sockopt_int(rig.relay_backend_fd, SO_SNDBUF)) +
                           static_cast<size_t>(sockopt_int(rig.backend.fd, SO_RCVBUF));
    const size_t bound = buffers + lb::core::Direction::kHighWater;
    const std::string data = payload(16 << 20, 7);
    REQUIRE(data.size() > 4 * bound);
    rig.backend.set_reading(false);
    rig.client.send(data);
    // The sender is pushed back: what it gets accepted stops growing...
    REQUIRE(rig.run_until_stable([&] { return rig.client.sent; }, milliseconds(300)));
    INFO("accepted " << rig.client.sent << " bound " << bound);
    CHECK(rig.client.sent > 0);
    CHECK(rig.client.sent <= bound);
    // ...because the relay stopped reading, with at most one pipe in flight.
    CHECK_FALSE(rig.relay->reading(true));
    CHECK(rig.relay->in_flight(true) > 0);
    CHECK(rig.relay->in_flight(true) <= lb::core::Direction::kHighWater);
    CHECK(rig.relay->running());
    CHECK(rig.to_backend <= bound);
    // The other direction is unaffected.
    CHECK(rig.relay->reading(false));
    // The destination reads again: everything arrives, in order.
    rig.backend.set_reading(true);
    REQUIRE(rig.run_until([&] { return rig.backend.received == data.size(); }));
    CHECK(rig.client.sent == data.size());
    CHECK(lb::test::mismatch_offset(rig.backend.in, data) == std::string::npos);
    CHECK(rig.relay->reading(true));
    CHECK(rig.relay->in_flight(true) == 0);
    REQUIRE(rig.run_until([&] { return rig.pool.in_use() == 0; }, in(seconds(2))));
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay: an idle relay holds no pipe and pipes are reused", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    // Started, nothing sent: no pipe taken.
    for (int i = 0; i < 3; ++i) uv_run(&rig.loop, UV_RUN_NOWAIT);
    CHECK(rig.pool.in_use() == 0);
    CHECK(rig.pool.created() == 0);
    // Ping-pong: each burst borrows a pipe and gives it back.
    for (int round = 1; round <= 50; ++round) {
      rig.client.send("ping");
      REQUIRE(rig.run_until([&] { return rig.backend.received == 4u * round; }));
      rig.backend.send("pong!");
      REQUIRE(rig.run_until([&] { return rig.client.received == 5u * round; }));
    }
    // Idle again: nothing held, the pool kept what was made for reuse.
    CHECK(rig.pool.in_use() == 0);
    CHECK_FALSE(rig.relay->holds_pipe(true));
    CHECK_FALSE(rig.relay->holds_pipe(false));
    CHECK(rig.pool.created() <= 2);
    CHECK(rig.pool.idle() == rig.pool.created());
    CHECK(rig.to_backend == 4u * 50);
    CHECK(rig.to_client == 5u * 50);
    CHECK(rig.relay->running());
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relays on one pool share its pipes", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    // A second relay on the same loop and pool.
    int c_outer, c_inner, b_outer, b_inner;
    REQUIRE(tcp_pair(&c_outer, &c_inner));
    REQUIRE(tcp_pair(&b_inner, &b_outer));
    Peer c2, b2;
    c2.open(&rig.loop, c_outer);
    b2.open(&rig.loop, b_outer);
    bool closed2 = false;
    static const SpliceRelay::Handler h2 = {[](void*, bool, size_t) {}, [](void*, SpliceResult, bool) {},
                                            [](void* ctx) { *static_cast<bool*>(ctx) = true; }};
    auto* relay2 = new SpliceRelay(&rig.loop, rig.pool, c_inner, b_inner, &h2, &closed2);
    REQUIRE(relay2->start() == 0);
    const std::string a = payload(1 << 20, 8), b = payload(1 << 20, 9);
    rig.client.send(a);
    REQUIRE(rig.run_until([&] { return rig.backend.received == a.size(); }));
    c2.send(b);
    REQUIRE(rig.run_until([&] { return b2.received == b.size(); }));
    CHECK(b2.in == b);
    CHECK(rig.backend.in == a);
    // Sequential bursts on two connections needed one pipe between them.
    CHECK(rig.pool.created() == 1);
    CHECK(rig.pool.in_use() == 0);
    relay2->close();  // the timeout path: no reset
    REQUIRE(rig.run_until([&] { return closed2 && c2.ended() && b2.ended(); }));
    CHECK(c2.eof);
    CHECK(b2.eof);
    delete relay2;
    c2.close();
    b2.close();
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay abort resets both sides without a finished callback", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    rig.client.send("x");
    REQUIRE(rig.run_until([&] { return rig.backend.received == 1; }));
    rig.relay->abort();
    rig.relay->abort();  // idempotent
    CHECK_FALSE(rig.relay->running());
    REQUIRE(rig.run_until([&] { return rig.closed && rig.client.ended() && rig.backend.ended(); }));
    CHECK(rig.client.error == ECONNRESET);
    CHECK(rig.backend.error == ECONNRESET);
    CHECK(rig.finished_calls == 0);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay sends the preface before any client byte", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    const std::string preface = "PROXY TCP4 192.0.2.1 198.51.100.1 5555 80\r\n";
    const std::string body = payload(512 * 1024, 10);
    rig.client.send(body, true);  // already queued before the relay starts
    REQUIRE(rig.start(preface) == 0);
    rig.backend.send("", true);
    REQUIRE(rig.run_until([&] { return rig.backend.eof && rig.closed; }));
    CHECK(rig.backend.in.size() == preface.size() + body.size());
    CHECK(rig.backend.in.compare(0, preface.size(), preface) == 0);
    CHECK(rig.backend.in.compare(preface.size(), std::string::npos, body) == 0);
    CHECK(rig.to_backend == body.size());  // the preface is not client traffic
    CHECK(rig.result == SpliceResult::Ok);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay start failure leaves the fds with the caller's choice", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig(4096);  // a one-page pipe cannot hold this preface
    rig.connect();
    CHECK(rig.start(std::string(16 * 1024, 'p')) == UV_ENOBUFS);
    CHECK_FALSE(rig.relay->running());
    CHECK(rig.pool.in_use() == 0);
    int c = -1, b = -1;
    REQUIRE(rig.relay->take_fds(&c, &b));
    CHECK(c == rig.relay_client_fd);
    CHECK(b == rig.relay_backend_fd);
    CHECK_FALSE(rig.relay->take_fds(&c, &b));
    // Nothing was sent or consumed: the sockets still work.
    REQUIRE(::send(b, "ok", 2, MSG_NOSIGNAL) == 2);
    REQUIRE(rig.run_until([&] { return rig.backend.received == 2; }));
    ::close(c);
    ::close(b);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice relay reports Unsupported and hands the fds back untouched", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    // An eventfd cannot be spliced from (EINVAL): stands in for a socket
    // type without splice support. It is readable at once.
    int efd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
    REQUIRE(efd >= 0);
    ::close(rig.relay_client_fd);
    rig.relay_client_fd = efd;
    REQUIRE(rig.start() == 0);
    REQUIRE(rig.run_until([&] { return rig.closed; }));
    CHECK(rig.finished_calls == 1);
    CHECK(rig.result == SpliceResult::Unsupported);
    CHECK(rig.pool.in_use() == 0);
    int c = -1, b = -1;
    REQUIRE(rig.relay->take_fds(&c, &b));
    CHECK(c == efd);
    CHECK(b == rig.relay_backend_fd);
    // The backend connection was neither closed nor reset and still works
    // both ways, ready for the copy path.
    rig.backend.send("from backend");
    REQUIRE(::send(b, "to backend", 10, MSG_NOSIGNAL) == 10);
    REQUIRE(rig.run_until([&] { return rig.backend.received == 10; }));
    CHECK(rig.backend.in == "to backend");
    std::string got;
    REQUIRE(rig.run_until(
        [&] {
          char buf[64];
          ssize_t n = ::recv(b, buf, sizeof buf, 0);
          if (n > 0) got.append(buf, static_cast<size_t>(n));
          return got.size() >= 12;
        },
        in(seconds(5))));
    CHECK(got == "from backend");
    CHECK_FALSE(rig.backend.ended());
    ::close(c);
    ::close(b);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

// While alive, no new fd can be opened in this process (RLIMIT_NOFILE at the
// lowest free descriptor): pipe2() fails with EMFILE, as when lb runs out of
// fds or pipes. Single-threaded tests only.
struct NoNewFds {
  rlimit saved{};
  NoNewFds() {
    REQUIRE(getrlimit(RLIMIT_NOFILE, &saved) == 0);
    int lowest = ::dup(0);
    REQUIRE(lowest >= 0);
    ::close(lowest);
    rlimit r = saved;
    r.rlim_cur = static_cast<rlim_t>(lowest);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &r) == 0);
  }
  ~NoNewFds() { setrlimit(RLIMIT_NOFILE, &saved); }
};

TEST_CASE("splice relay without a pipe hands the connection back, even after bytes moved", "[splice]") {
  const int fds_before = open_fds();
  {
    Rig rig;
    rig.connect();
    REQUIRE(rig.start() == 0);
    // First a transfer through the relay...
    const std::string first = payload(300 * 1024, 21);
    rig.client.send(first);
    REQUIRE(rig.run_until([&] { return rig.backend.received == first.size(); }));
    CHECK(rig.backend.in == first);
    // ...then no pipe can be had (the pooled ones closed, no fds left) when
    // the client sends again: the relay must not read it, and hands both
    // sockets back instead of resetting them.
    REQUIRE(rig.run_until([&] { return rig.pool.in_use() == 0; }));
    rig.pool.trim();
    const std::string second = payload(100 * 1024, 22);
    {
      NoNewFds limit;
      rig.client.send(second);
      REQUIRE(rig.run_until([&] { return rig.closed; }));
    }
    CHECK(rig.finished_calls == 1);
    CHECK(rig.result == SpliceResult::NoPipe);
    CHECK(rig.pool.in_use() == 0);
    CHECK_FALSE(rig.relay->flow(true).eof);
    CHECK_FALSE(rig.relay->flow(false).eof);
    CHECK(rig.relay->flow(true).queued == 0);
    int c = -1, b = -1;
    REQUIRE(rig.relay->take_fds(&c, &b));
    // The second message is still unread on the relay's client socket, and
    // the backend connection is open: a copy path can carry on exactly.
    std::string got;
    REQUIRE(rig.run_until(
        [&] {
          char buf[64 * 1024];
          ssize_t n = ::recv(c, buf, sizeof buf, 0);
          if (n > 0) got.append(buf, static_cast<size_t>(n));
          return got.size() >= second.size();
        },
        in(seconds(5))));
    CHECK(got == second);
    REQUIRE(::send(b, "more", 4, MSG_NOSIGNAL) == 4);
    REQUIRE(rig.run_until([&] { return rig.backend.received == first.size() + 4; }));
    CHECK_FALSE(rig.backend.ended());
    ::close(c);
    ::close(b);
    CHECK(rig.teardown() == 0);
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("splice support: LB_SPLICE=0 disables, the probe works on this kernel", "[splice]") {
  CHECK_FALSE(SpliceRelay::detect("0"));
  CHECK_FALSE(SpliceRelay::detect("off"));
  CHECK_FALSE(SpliceRelay::detect("false"));
  CHECK_FALSE(SpliceRelay::detect("no"));
  CHECK(SpliceRelay::detect(nullptr));
  CHECK(SpliceRelay::detect("1"));
  CHECK(SpliceRelay::detect(""));
  // The cached answer is the one for this process's environment.
  CHECK(SpliceRelay::supported() == SpliceRelay::detect(std::getenv("LB_SPLICE")));
}

// ---- micro benchmark (not run by default): splice vs a read/write loop ----

namespace {

// The copy path's shape on raw fds: read into a 64 KiB buffer, write it on,
// stop reading while the destination is full. One direction, src -> dst.
struct CopyRelay {
  int src, dst;
  uv_poll_t* psrc = nullptr;
  uv_poll_t* pdst = nullptr;
  std::vector<char> buf = std::vector<char>(64 * 1024);
  size_t off = 0, len = 0;
  bool done = false;

  void start(uv_loop_t* loop) {
    psrc = new uv_poll_t;
    pdst = new uv_poll_t;
    uv_poll_init_socket(loop, psrc, src);
    uv_poll_init_socket(loop, pdst, dst);
    psrc->data = pdst->data = this;
    uv_poll_start(psrc, UV_READABLE, on_poll);
  }
  static void on_poll(uv_poll_t* h, int, int) {
    auto* r = static_cast<CopyRelay*>(h->data);
    r->run();
  }
  void run() {
    for (;;) {
      while (off < len) {
        ssize_t n = ::write(dst, buf.data() + off, len - off);
        if (n < 0) {
          uv_poll_stop(psrc);
          uv_poll_start(pdst, UV_WRITABLE, on_poll);
          return;
        }
        off += static_cast<size_t>(n);
      }
      uv_poll_stop(pdst);
      ssize_t n = ::read(src, buf.data(), buf.size());
      if (n == 0) {
        ::shutdown(dst, SHUT_WR);
        uv_poll_stop(psrc);
        done = true;
        return;
      }
      if (n < 0) {
        uv_poll_start(psrc, UV_READABLE, on_poll);
        return;
      }
      off = 0;
      len = static_cast<size_t>(n);
    }
  }
  void close() {
    for (uv_poll_t* p : {psrc, pdst})
      uv_close(reinterpret_cast<uv_handle_t*>(p),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    ::close(src);
    ::close(dst);
  }
};

// Sends `total` bytes into `out` and counts what arrives at `in`, each on its
// own thread with blocking sockets; the relay runs on the calling thread.
struct Figures {
  double bytes_per_s = 0;
  double relay_cpu_s = 0;  // CPU time of the relaying thread (user + system)
};

double thread_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

Figures measure(bool use_splice, size_t total) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  PipePool pool;
  int c_outer, c_inner, b_outer, b_inner;
  if (!tcp_pair(&c_outer, &c_inner) || !tcp_pair(&b_inner, &b_outer)) return {};
  for (int fd : {c_outer, b_outer}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  std::atomic<size_t> received{0};
  std::thread sender([&] {
    std::vector<char> chunk(256 * 1024, 'b');
    size_t left = total;
    while (left > 0) {
      ssize_t n = ::send(c_outer, chunk.data(), std::min(left, chunk.size()), MSG_NOSIGNAL);
      if (n <= 0) break;
      left -= static_cast<size_t>(n);
    }
    ::shutdown(c_outer, SHUT_WR);
  });
  std::thread receiver([&] {
    std::vector<char> chunk(256 * 1024);
    for (;;) {
      ssize_t n = ::recv(b_outer, chunk.data(), chunk.size(), 0);
      if (n <= 0) break;
      received += static_cast<size_t>(n);
    }
  });
  struct Done {
    bool finished = false;
    bool closed = false;
  } state;
  static const SpliceRelay::Handler h = {
      [](void*, bool, size_t) {},
      [](void* ctx, SpliceResult, bool) { static_cast<Done*>(ctx)->finished = true; },
      [](void* ctx) { static_cast<Done*>(ctx)->closed = true; }};
  // Heartbeat: the last bytes are counted on another thread, so the loop
  // must come back to look even when it has no more events.
  auto* tick = new uv_timer_t;
  uv_timer_init(&loop, tick);
  uv_timer_start(
      tick, [](uv_timer_t*) {}, 1, 1);
  auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = thread_cpu_seconds();
  SpliceRelay* relay = nullptr;
  CopyRelay copy{c_inner, b_inner};
  if (use_splice) {
    relay = new SpliceRelay(&loop, pool, c_inner, b_inner, &h, &state);
    relay->start();
    // Half-closed by the sender; the backend side never sends, so the relay
    // finishes only when the receiver's side closes too: stop at the count.
    while (received.load() < total) uv_run(&loop, UV_RUN_ONCE);
  } else {
    copy.start(&loop);
    while (!copy.done) uv_run(&loop, UV_RUN_ONCE);
    while (received.load() < total) std::this_thread::yield();
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = thread_cpu_seconds() - cpu0;
  if (use_splice) {
    relay->abort();
    while (!state.closed) uv_run(&loop, UV_RUN_ONCE);
    delete relay;
  } else {
    copy.close();
  }
  uv_close(reinterpret_cast<uv_handle_t*>(tick),
           [](uv_handle_t* t) { delete reinterpret_cast<uv_timer_t*>(t); });
  sender.join();
  ::shutdown(b_outer, SHUT_RDWR);
  receiver.join();
  ::close(c_outer);
  ::close(b_outer);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return {static_cast<double>(total) / secs, cpu};
}

}  // namespace

TEST_CASE("splice vs copy throughput (200 MB, one direction)", "[.][splice-bench]") {
  std::signal(SIGPIPE, SIG_IGN);
  const size_t total = 200u << 20;
  const Figures copy = measure(false, total);
  const Figures splice = measure(true, total);
  std::printf(
      "relay 200 MB over loopback: copy loop %.0f MB/s (relay CPU %.2f s), "
      "splice %.0f MB/s (relay CPU %.2f s): x%.2f throughput\n",
      copy.bytes_per_s / 1e6, copy.relay_cpu_s, splice.bytes_per_s / 1e6, splice.relay_cpu_s,
      copy.bytes_per_s > 0 ? splice.bytes_per_s / copy.bytes_per_s : 0.0);
  CHECK(copy.bytes_per_s > 0);
  CHECK(splice.bytes_per_s > 0);
}
