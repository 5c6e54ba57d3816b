// A descriptor that libuv closes on one thread and the kernel hands to
// another thread must not look like a data race to ThreadSanitizer (see
// test/tsan/syscall_close.cc). This is what two workers do all the time: one
// closes a finished session's socket, the other accepts or dup()s and gets
// the same number. Meaningful in the ThreadSanitizer build (CI runs unit_core
// there with halt_on_error=1); elsewhere it checks the same steps work.
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

namespace {

TEST_CASE("a descriptor libuv closed on one thread is reused on another without a reported race",
          "[tsan][uv]") {
  // Relaxed on purpose: nothing orders the second thread after the first's
  // close except the kernel reusing the number, as between two workers.
  std::atomic<int> closed_fd{-1};
  // Catch's assertions are not thread-safe: each thread records, the test
  // checks after join().
  bool first_ok = false;
  std::thread first([&] {
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return;
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    char byte = 0;
    const bool used = fd >= 0 && ::recv(fd, &byte, 1, MSG_DONTWAIT) < 0;  // a use of fd ThreadSanitizer sees
    uv_tcp_t tcp;
    const bool opened = used && uv_tcp_init(&loop, &tcp) == 0 && uv_tcp_open(&tcp, fd) == 0;
    if (opened) uv_close(reinterpret_cast<uv_handle_t*>(&tcp), nullptr);  // libuv: syscall(SYS_close)
    const bool ran = uv_run(&loop, UV_RUN_DEFAULT) == 0;
    // Closing the loop closes its epoll descriptor the same way; reuse the
    // lowest number either left.
    const bool closed = uv_loop_close(&loop) == 0;
    first_ok = opened && ran && closed;
    closed_fd.store(fd, std::memory_order_relaxed);
  });

  int reused = -1;
  int seen = -1;
  bool second_ok = false;
  std::thread second([&] {
    while ((seen = closed_fd.load(std::memory_order_relaxed)) < 0) std::this_thread::yield();
    reused = ::socket(AF_INET, SOCK_STREAM, 0);  // the lowest free number: one the first thread closed
    char byte = 0;
    second_ok = reused >= 0 && ::recv(reused, &byte, 1, MSG_DONTWAIT) < 0;
  });
  first.join();
  second.join();
  CHECK(first_ok);
  CHECK(second_ok);
  // The first thread's loop (epoll) and socket were the two lowest free
  // numbers; the new socket must have one of them, or nothing was reused.
  CHECK(reused <= seen);
  if (reused >= 0) ::close(reused);
}

}  // namespace
