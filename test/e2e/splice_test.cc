// End-to-end: which TCP sessions move to splice(2). A bulk stream does (lb
// holds pipes while it flows); request/response traffic of small messages
// stays on the copy path however many bytes it relays. Seen from outside
// through the pipes among lb's open files. With LB_SPLICE=0 in the
// environment (ctest's e2e_copy_path run) no session may ever use a pipe.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

// Samples pipes_of(pid) every millisecond until destroyed; max() is the most seen.
class PipeWatch {
 public:
  explicit PipeWatch(pid_t pid) : pid_(pid), thread_([this] { run(); }) {}
  ~PipeWatch() {
    stop_ = true;
    thread_.join();
  }
  int max() const { return max_.load(); }

 private:
  void run() {
    while (!stop_) {
      int n = pipes_of(pid_);
      int m = max_.load();
      while (n > m && !max_.compare_exchange_weak(m, n)) {
      }
      std::this_thread::sleep_for(milliseconds(1));
    }
  }
  pid_t pid_;
  std::atomic<bool> stop_{false};
  std::atomic<int> max_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("a bulk stream moves to splice(2): lb holds pipes while it flows", "[e2e][splice]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(web_config(backend.address()));
  REQUIRE(lb.wait_started());
  const int before = pipes_of(lb.pid());
  REQUIRE(before >= 0);
  Socket client = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
  REQUIRE(client);
  const std::string payload = random_bytes(8 << 20);
  int most = 0;
  {
    PipeWatch watch(lb.pid());
    ReadResult got = exchange(client, payload, payload.size(), in(seconds(60)));
    REQUIRE(got.data.size() == payload.size());
    CHECK(mismatch_offset(got.data, payload) == std::string::npos);
    most = watch.max();
  }
  INFO("pipes before " << before << ", most seen during the transfer " << most);
  if (lb_splice_enabled()) {
    CHECK(most > before);
  } else {
    CHECK(most == before);
  }
  client.close();
  CHECK(backend.wait_active(0, in(seconds(5))));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("small request/response traffic stays on the copy path however much it relays", "[e2e][splice]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(web_config(backend.address()));
  REQUIRE(lb.wait_started());
  const int before = pipes_of(lb.pid());
  REQUIRE(before >= 0);
  Socket client = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
  REQUIRE(client);
  // 1,500 exchanges of 100 bytes: 300 KB through lb, far past the bytes after
  // which a bulk stream would switch, in reads no bigger than a message.
  int most = 0;
  {
    PipeWatch watch(lb.pid());
    for (int i = 0; i < 1500; ++i) {
      std::string msg = fmt::format("{:05d}", i) + std::string(95, static_cast<char>('a' + i % 26));
      REQUIRE(write_all(client, msg, in(seconds(5))) == msg.size());
      ReadResult r = read_exact(client, msg.size(), in(seconds(5)));
      REQUIRE(r.data == msg);
    }
    most = watch.max();
  }
  INFO("pipes before " << before << ", most seen during the exchanges " << most);
  CHECK(most == before);
  client.close();
  CHECK(backend.wait_active(0, in(seconds(5))));
  CHECK(lb.terminate() == 0);
}

TEST_CASE("when splice(2) turns out unsupported, the connection goes on on the copy path", "[e2e][splice]") {
  // A shim makes splice fail with EINVAL on TCP sockets (and only there, so
  // lb's start-up probe passes): the first bulk stream switches to the
  // splice relay, which reports Unsupported before moving a byte. That
  // connection must carry on, byte-exact, on the copy path; later ones never
  // try splice again.
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(web_config(backend.address()), LbOptions{{}, preload_env(LB_SPLICE_REFUSES_TCP_SHIM)});
  REQUIRE(lb.wait_started());
  const std::string payload = random_bytes(8 << 20, 3);
  for (int round = 0; round < 2; ++round) {
    INFO("connection " << round);
    Socket client = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
    REQUIRE(client);
    ReadResult got = exchange(client, payload, payload.size(), in(seconds(60)));
    INFO("read ended " << static_cast<int>(got.end) << " errno " << got.error);
    REQUIRE(got.data.size() == payload.size());
    CHECK(mismatch_offset(got.data, payload) == std::string::npos);
    // Still open both ways: a half-close goes through, then the backend's EOF.
    ::shutdown(client.fd(), SHUT_WR);
    CHECK(read_until_eof(client, in(seconds(10))).end == ReadEnd::Eof);
  }
  CHECK(backend.wait_active(0, in(seconds(5))));
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
