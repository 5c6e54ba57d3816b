// Scripted TCP backends for end-to-end tests.
//
// A TestBackend listens on an ephemeral port (port 0) of 127.0.0.1 or ::1 and
// serves every accepted connection with one scripted behaviour (BackendMode).
// It runs its own thread with non-blocking sockets and poll(2); the test thread
// only reads its counters and stops it.
//
// Thread rules: construct, query and destroy from the test thread; the
// counters are safe to read at any time. The destructor stops the thread and
// closes every socket (RAII: no thread or fd outlives the object).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "test/support/deadline.h"
#include "test/support/net.h"

namespace lb::test {

enum class BackendMode {
  // Writes back every byte it receives; after the peer's EOF it flushes and
  // closes. Stops reading a connection while 1 MiB of echo is unsent, so it
  // never buffers without bound either.
  Echo,
  // Writes `greeting` (its name) as soon as it accepts, then echoes. Lets a
  // test tell which backend served a connection without sending anything.
  Name,
  // Reads until the peer's EOF, then writes reply(received) and closes.
  // For half-close tests: the answer exists only after the client's FIN.
  ReadUntilEofThenReply,
  // Writes `greeting` on accept and closes at once, reading nothing
  // (server-speaks-first, and the backend closing first).
  SendThenClose,
  // Writes `greeting`, then shuts down its sending side (FIN) but keeps
  // reading (counted in bytes_received()) until the peer's EOF, then closes.
  // For half-close in the backend-to-client direction.
  SendThenHalfClose,
  // Reads `slow_read_limit` bytes per connection, then never reads again (the
  // connection stays open), so whoever writes to it is pushed back.
  SlowReader,
};

struct BackendOptions {
  BackendMode mode = BackendMode::Echo;
  std::string host = "127.0.0.1";  // an IP literal: "127.0.0.1" or "::1"
  std::string greeting;            // Name / SendThenClose / SendThenHalfClose
  // ReadUntilEofThenReply; default answers "received <n> bytes\n".
  std::function<std::string(const std::string& received)> reply;
  size_t slow_read_limit = 64 * 1024;  // SlowReader
  int recv_buffer = 0;                 // SO_RCVBUF for accepted sockets (set on the listener); 0 = default
};

class TestBackend {
 public:
  explicit TestBackend(BackendOptions options);
  ~TestBackend();
  TestBackend(const TestBackend&) = delete;
  TestBackend& operator=(const TestBackend&) = delete;

  // Shorthands for the common cases.
  static BackendOptions echo(std::string host = "127.0.0.1");
  static BackendOptions named(std::string name, std::string host = "127.0.0.1");
  static BackendOptions read_until_eof_then_reply(std::function<std::string(const std::string&)> reply = {},
                                                  std::string host = "127.0.0.1");
  static BackendOptions send_then_close(std::string greeting, std::string host = "127.0.0.1");
  static BackendOptions send_then_half_close(std::string greeting, std::string host = "127.0.0.1");
  static BackendOptions slow_reader(size_t read_limit = 64 * 1024, int recv_buffer = 4096,
                                    std::string host = "127.0.0.1");

  // False when the listening socket could not be set up (then port() == 0).
  bool ok() const { return port_ != 0; }
  uint16_t port() const { return port_; }
  const std::string& host() const { return options_.host; }
  // "127.0.0.1:PORT" or "[::1]:PORT": what a config's backend address says.
  std::string address() const;

  uint64_t accepted() const { return accepted_.load(); }
  uint64_t active() const { return active_.load(); }
  uint64_t bytes_received() const { return bytes_received_.load(); }

  // Wait until at least `n` connections were accepted / exactly `n` are open.
  bool wait_accepted(uint64_t n, Deadline deadline) const;
  bool wait_active(uint64_t n, Deadline deadline) const;
  // Waits until bytes_received() >= n.
  bool wait_bytes_received(uint64_t n, Deadline deadline) const;

  // Closes the listener and every connection and joins the thread.
  // Idempotent; the destructor calls it.
  void stop();

 private:
  struct Conn;
  void run();
  void notify();

  BackendOptions options_;
  Socket listener_;
  int wake_fd_ = -1;  // eventfd: stop() pokes the thread out of poll()
  uint16_t port_ = 0;
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> active_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // signalled whenever a counter changes
  std::thread thread_;
};

}  // namespace lb::test
