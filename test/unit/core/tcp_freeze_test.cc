// TcpSession::freeze() / resume(): a relaying session moves from one worker
// loop to a fresh one with every byte, in order, and its half-close state.
//
// The test drives two Workers' loops on its own thread (run_until_stopped()
// instead of start()), and plays client and backend with plain non-blocking
// sockets. The session is created on worker A by resume() from a record with
// nothing pending (a session fresh from its connect), so no listener socket
// or backend table is needed.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "core/frozen_session.h"
#include "core/splice_relay.h"
#include "core/stats.h"
#include "core/tcp_session.h"
#include "core/worker.h"
#include "test/support/deadline.h"

using lb::core::Backend;
using lb::core::BackendPtr;
using lb::core::FrozenSession;
using lb::core::ListenerRuntime;
using lb::core::ListenerStats;
using lb::core::SharedState;
using lb::core::TcpSession;
using lb::core::Worker;
using lb::core::WorkerMessage;
using lb::test::Deadline;
using lb::test::expired;
using lb::test::in;
using lb::test::seconds;

namespace {

// A connected loopback TCP pair, both ends non-blocking, with small socket
// buffers (`buf` bytes each way) so that lb's own queues fill soon.
void tcp_pair(int* a, int* b, int buf) {
  int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(l >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(l, 1) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(l, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  *a = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(*a >= 0);
  for (int fd : {*a, l}) {
    int size = buf;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  }
  REQUIRE(::connect(*a, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  *b = ::accept4(l, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  REQUIRE(*b >= 0);
  ::fcntl(*a, F_SETFL, ::fcntl(*a, F_GETFL) | O_NONBLOCK);
  ::close(l);
}

char pattern(int dir, uint64_t i) { return static_cast<char>((i * 131 + i / 4093 + dir * 7) & 0xff); }

// One direction of the test's traffic: written at one socket, checked at the other.
struct Stream {
  int dir;
  int from;
  int to;
  uint64_t sent = 0;
  uint64_t received = 0;
  bool eof = false;  // `to` read EOF
  bool corrupt = false;

  // Writes up to `chunk` bytes (fewer when the socket is full); how many.
  size_t write_some(size_t chunk, uint64_t limit = UINT64_MAX) {
    if (sent >= limit) return 0;
    if (chunk > limit - sent) chunk = static_cast<size_t>(limit - sent);
    std::string buf(chunk, '\0');
    for (size_t i = 0; i < chunk; ++i) buf[i] = pattern(dir, sent + i);
    ssize_t n = ::write(from, buf.data(), buf.size());
    if (n <= 0) return 0;
    sent += static_cast<uint64_t>(n);
    return static_cast<size_t>(n);
  }
  // Reads what is there and checks it against the pattern; how many bytes.
  size_t read_some() {
    char buf[65536];
    size_t total = 0;
    for (;;) {
      ssize_t n = ::read(to, buf, sizeof buf);
      if (n == 0) eof = true;
      if (n <= 0) return total;
      for (ssize_t i = 0; i < n; ++i)
        if (buf[i] != pattern(dir, received + static_cast<uint64_t>(i))) corrupt = true;
      received += static_cast<uint64_t>(n);
      total += static_cast<size_t>(n);
    }
  }
};

struct Rig {
  SharedState shared;
  std::shared_ptr<ListenerRuntime> listener = std::make_shared<ListenerRuntime>();
  BackendPtr backend;
  int client = -1, lb_client = -1, lb_backend = -1, backend_end = -1;
  Stream up{0, -1, -1};
  Stream down{1, -1, -1};

  // backend_buf: the socket buffers between lb and the backend.
  explicit Rig(int backend_buf = 64 * 1024) {
    listener->cfg.name = "web";
    listener->cfg.pool = "app";
    listener->cfg.max_connections_per_source = 100;
    listener->stats = std::make_shared<ListenerStats>(1);
    lb::conf::Backend c;
    c.id = "b1";
    backend = std::make_shared<Backend>("app", c);
    tcp_pair(&client, &lb_client, 64 * 1024);
    tcp_pair(&lb_backend, &backend_end, backend_buf);
    up = Stream{0, client, backend_end};
    down = Stream{1, backend_end, client};
  }
  ~Rig() {
    for (int fd : {client, backend_end})
      if (fd >= 0) ::close(fd);
  }

  // A session on `w` as if it had just connected: nothing pending.
  void start_on(Worker& w) {
    // The admission counts accept would have taken (resume() takes them).
    FrozenSession f;
    f.client_fd = lb_client;
    f.backend_fd = lb_backend;
    f.listener = "web";
    f.pool = "app";
    f.backend = "b1";
    socklen_t len = sizeof f.client;
    ::getpeername(lb_client, reinterpret_cast<sockaddr*>(&f.client), &len);
    f.started_ms = uv_now(w.loop());
    TcpSession::resume(w, listener, backend, std::move(f));
  }
};

// Steps `w`'s loop, writing `chunk` bytes a step each way where asked, until
// neither side can write any more (lb's queues and every socket buffer on the
// way are full) for 50 steps in a row.
void fill(Worker& w, Stream* a, Stream* b, size_t chunk) {
  Deadline deadline = in(seconds(30));
  int idle = 0;
  while (idle < 50 && !expired(deadline)) {
    size_t n = 0;
    if (a) n += a->write_some(chunk);
    if (b) n += b->write_some(chunk);
    uv_run(w.loop(), UV_RUN_NOWAIT);
    idle = n ? 0 : idle + 1;
  }
  REQUIRE(idle >= 50);
}

// Steps the loop until `done` holds, reading `a` and `b` (if given) as it goes.
template <typename F>
bool step_until(Worker& w, Stream* a, Stream* b, F done) {
  Deadline deadline = in(seconds(30));
  while (!done()) {
    if (expired(deadline)) return false;
    uv_run(w.loop(), UV_RUN_NOWAIT);
    if (a) a->read_some();
    if (b) b->read_some();
  }
  return true;
}
template <typename F>
bool step_until(Worker& w, Rig& r, F done) {
  return step_until(w, &r.up, &r.down, done);
}

// Freezes the one session on `a`, lets its handles close and stops `a`:
// nothing of it may stay open.
FrozenSession freeze_and_stop(Worker& a) {
  std::vector<FrozenSession> frozen = a.freeze_sessions().frozen;
  REQUIRE(frozen.size() == 1);
  Deadline deadline = in(seconds(10));
  while (a.open_sessions() != 0 && !expired(deadline)) uv_run(a.loop(), UV_RUN_NOWAIT);
  CHECK(a.open_sessions() == 0);
  a.post(WorkerMessage{WorkerMessage::Kind::Abort, {}});
  CHECK(a.run_until_stopped() == 0);
  return std::move(frozen[0]);
}

void stop(Worker& w) {
  w.post(WorkerMessage{WorkerMessage::Kind::Abort, {}});
  CHECK(w.run_until_stopped() == 0);
}

// Resumes on `b`, then reads everything both ways and checks it.
void resume_and_drain(Worker& b, Rig& r, FrozenSession&& f) {
  TcpSession::resume(b, r.listener, r.backend, std::move(f));
  // Counted once, as before the freeze (the frozen session gave its counts back).
  CHECK(r.shared.active_connections.load() == 1);
  CHECK(r.listener->stats->open.load() == 1);
  CHECK(r.backend->active.load() == 1);
  REQUIRE(step_until(b, r, [&] { return r.up.received == r.up.sent && r.down.received == r.down.sent; }));
  CHECK_FALSE(r.up.corrupt);
  CHECK_FALSE(r.down.corrupt);
}

}  // namespace

TEST_CASE("a session frozen on the copy path with bytes queued both ways resumes on a fresh loop",
          "[tcp_session][freeze]") {
  Rig r;
  {
    Worker a(0, r.shared);
    a.set_splice_allowed(false);  // the copy path, which queues what the full destination refuses
    r.start_on(a);
    fill(a, &r.up, &r.down, 8 * 1024);
    FrozenSession f = freeze_and_stop(a);
    CHECK(f.path == FrozenSession::Path::Copy);
    CHECK(f.to_backend.pending.size() > 0);
    CHECK(f.to_client.pending.size() > 0);
    CHECK_FALSE(f.to_backend.eof);
    CHECK(f.listener == "web");
    CHECK(f.pool == "app");
    CHECK(f.backend == "b1");
    // Counted when read: what is pending was read, what the kernel still holds was not.
    CHECK(f.bytes_to_backend >= f.to_backend.pending.size());
    CHECK(f.bytes_to_backend <= r.up.sent);
    CHECK(r.shared.active_connections.load() == 0);
    CHECK(r.backend->active.load() == 0);

    Worker b(0, r.shared);
    resume_and_drain(b, r, std::move(f));
    // Still a full relay: more both ways, then a clean close from each side.
    r.up.write_some(1000);
    r.down.write_some(1000);
    ::shutdown(r.client, SHUT_WR);
    ::shutdown(r.backend_end, SHUT_WR);
    REQUIRE(step_until(b, r, [&] { return r.up.eof && r.down.eof; }));
    CHECK(r.up.received == r.up.sent);
    CHECK(r.down.received == r.down.sent);
    REQUIRE(step_until(b, r, [&] { return b.open_sessions() == 0; }));
    stop(b);
  }
  CHECK(r.shared.active_connections.load() == 0);
  CHECK(r.listener->stats->open.load() == 0);
  CHECK(r.backend->active.load() == 0);
}

TEST_CASE("a half-closed session keeps its half-close across a freeze", "[tcp_session][freeze]") {
  Rig r(4096);  // the backend leg's kernel buffers hold little: lb queues the rest
  {
    Worker a(0, r.shared);
    a.set_splice_allowed(false);
    r.start_on(a);
    // The client sends 192 KiB and its FIN while the backend reads nothing:
    // lb reads it all (below its high-water mark), so the FIN waits in lb
    // behind the bytes the backend has not taken.
    const uint64_t total = 192 * 1024;
    Deadline deadline = in(seconds(30));
    while (r.up.sent < total && !expired(deadline)) {
      r.up.write_some(8 * 1024, total);
      uv_run(a.loop(), UV_RUN_NOWAIT);
    }
    REQUIRE(r.up.sent == total);
    ::shutdown(r.client, SHUT_WR);
    for (int i = 0; i < 50; ++i) uv_run(a.loop(), UV_RUN_NOWAIT);
    // The other way: a few bytes, which the client takes at once.
    r.down.write_some(500);
    REQUIRE(step_until(a, nullptr, &r.down, [&] { return r.down.received == r.down.sent; }));
    FrozenSession f = freeze_and_stop(a);
    CHECK(f.path == FrozenSession::Path::Copy);
    CHECK(f.to_backend.eof);
    CHECK_FALSE(f.to_backend.shutdown_done);
    CHECK(f.to_backend.pending.size() > 0);
    CHECK_FALSE(f.to_client.eof);

    Worker b(0, r.shared);
    resume_and_drain(b, r, std::move(f));
    // The backend gets the client's FIN after the last byte...
    REQUIRE(step_until(b, r, [&] { return r.up.eof; }));
    CHECK(r.up.received == total);
    // ...and can still answer, until it closes its side too.
    r.down.write_some(4000);
    ::shutdown(r.backend_end, SHUT_WR);
    REQUIRE(step_until(b, r, [&] { return r.down.eof; }));
    CHECK(r.down.received == r.down.sent);
    CHECK_FALSE(r.down.corrupt);
    REQUIRE(step_until(b, r, [&] { return b.open_sessions() == 0; }));
    stop(b);
  }
  CHECK(r.shared.active_connections.load() == 0);
  CHECK(r.backend->active.load() == 0);
}

TEST_CASE("a half-close already passed on survives a freeze", "[tcp_session][freeze]") {
  Rig r;
  {
    Worker a(0, r.shared);
    a.set_splice_allowed(false);
    r.start_on(a);
    r.up.write_some(1000);
    ::shutdown(r.client, SHUT_WR);
    REQUIRE(step_until(a, r, [&] { return r.up.eof; }));  // lb passed the FIN on
    // The backend -> client way carries on, with bytes queued in lb.
    fill(a, nullptr, &r.down, 8 * 1024);
    FrozenSession f = freeze_and_stop(a);
    CHECK(f.path == FrozenSession::Path::Copy);
    CHECK(f.to_backend.eof);
    CHECK(f.to_backend.shutdown_done);
    CHECK(f.to_backend.pending.empty());
    CHECK(f.to_client.pending.size() > 0);

    Worker b(0, r.shared);
    resume_and_drain(b, r, std::move(f));
    ::shutdown(r.backend_end, SHUT_WR);
    REQUIRE(step_until(b, r, [&] { return r.down.eof; }));
    CHECK(r.down.received == r.down.sent);
    CHECK(r.up.received == 1000);
    REQUIRE(step_until(b, r, [&] { return b.open_sessions() == 0; }));
    stop(b);
  }
  CHECK(r.shared.active_connections.load() == 0);
}

TEST_CASE("a session frozen on the splice path hands over what its pipes held", "[tcp_session][freeze]") {
  REQUIRE(lb::core::SpliceRelay::supported());
  Rig r;
  {
    Worker a(0, r.shared);
    r.start_on(a);
    // A bulk stream the backend reads as it comes: big reads move the
    // session to splice, and the relay takes pipes.
    Deadline deadline = in(seconds(30));
    while (a.pipe_pool().acquires() == 0 && !expired(deadline)) {
      r.up.write_some(64 * 1024);
      uv_run(a.loop(), UV_RUN_NOWAIT);
      r.up.read_some();
    }
    REQUIRE(a.pipe_pool().acquires() > 0);
    // Now nobody reads: the pipes fill both ways.
    fill(a, &r.up, &r.down, 64 * 1024);
    FrozenSession f = freeze_and_stop(a);
    CHECK(f.path == FrozenSession::Path::Splice);
    CHECK(f.to_backend.pending.size() > 0);
    CHECK(f.to_client.pending.size() > 0);

    Worker b(0, r.shared);
    resume_and_drain(b, r, std::move(f));
    ::shutdown(r.client, SHUT_WR);
    ::shutdown(r.backend_end, SHUT_WR);
    REQUIRE(step_until(b, r, [&] { return r.up.eof && r.down.eof; }));
    REQUIRE(step_until(b, r, [&] { return b.open_sessions() == 0; }));
    stop(b);
  }
  CHECK(r.shared.active_connections.load() == 0);
  CHECK(r.backend->active.load() == 0);
}
