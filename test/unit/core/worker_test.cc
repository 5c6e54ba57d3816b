// Worker on its own thread, driven only through its thread-safe inbox.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <memory>
#include <thread>

#include <uv.h>

#include "core/stats.h"
#include "core/worker.h"

using lb::core::ListenerRuntime;
using lb::core::ListenerStats;
using lb::core::SharedState;
using lb::core::Worker;
using lb::core::WorkerBind;
using lb::core::WorkerMessage;

namespace {

bool fd_open(int fd) { return fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

}  // namespace

TEST_CASE("a listening socket the worker cannot adopt is closed, not leaked", "[worker]") {
  // The worker owns every fd of a Listeners message. uv_tcp_open refuses an
  // O_PATH descriptor (libuv's FIONBIO ioctl fails with EBADF on it), a real
  // failure of the kind a bad or foreign fd causes: the fd must still be
  // closed.
  int fd = ::open("/", O_PATH | O_CLOEXEC);
  REQUIRE(fd >= 0);
  SharedState shared;
  {
    Worker w(0, shared);
    w.start();
    auto rt = std::make_shared<ListenerRuntime>();
    rt->cfg.name = "web";
    rt->stats = std::make_shared<ListenerStats>(1);
    WorkerMessage m{WorkerMessage::Kind::Listeners, {}};
    m.binds.push_back(WorkerBind{"tcp|127.0.0.1:1", fd, rt});
    w.post(std::move(m));
    w.post(WorkerMessage{WorkerMessage::Kind::Abort, {}});
    w.join();
  }
  // Nothing else in this process opens files meanwhile, so the number cannot
  // have been reused.
  CHECK_FALSE(fd_open(fd));
  if (fd_open(fd)) ::close(fd);
}

TEST_CASE("a worker is drained only once it has handled its Drain, not merely with no session open",
          "[worker]") {
  // Until the worker has handled Drain it may still accept a connection; a
  // stop or upgrade that took "no session open" for drained aborted such a
  // connection (see the [drain] upgrade e2e test).
  SharedState shared;
  Worker w(0, shared);
  w.post(WorkerMessage{WorkerMessage::Kind::Drain, {}});
  CHECK(w.open_sessions() == 0);
  CHECK_FALSE(w.drained());  // queued, not handled: the thread has not run
  w.start();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!w.drained() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(w.drained());
  w.post(WorkerMessage{WorkerMessage::Kind::Abort, {}});
  w.join();
}

TEST_CASE("a worker loop that ends with a handle still open reports the leak", "[worker]") {
  // Server::run turns this into lb's exit status 1, which every e2e test's
  // `terminate() == 0` checks.
  SharedState shared;
  SECTION("a handle left open") {
    Worker w(0, shared);
    uv_timer_t forgotten;  // initialised on the worker's loop, never closed
    REQUIRE(uv_timer_init(w.loop(), &forgotten) == 0);
    w.start();
    w.post(WorkerMessage{WorkerMessage::Kind::Abort, {}});
    w.join();
    CHECK(w.leaked_handles());
    // Close it now, so that the loop itself can be freed.
    uv_close(reinterpret_cast<uv_handle_t*>(&forgotten), nullptr);
    uv_run(w.loop(), UV_RUN_DEFAULT);
    CHECK(uv_loop_close(w.loop()) == 0);
  }
  SECTION("every handle closed") {
    Worker w(0, shared);
    w.start();
    w.post(WorkerMessage{WorkerMessage::Kind::Abort, {}});
    w.join();
    CHECK_FALSE(w.leaked_handles());
  }
}
