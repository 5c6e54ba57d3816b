#include "lb/resolver.h"

#include <arpa/inet.h>
#include <uv.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "test/support/deadline.h"

using lb::app::HostResolver;

namespace {

// A resolver that never answers until released (the process may exit with
// it still blocked: the HostResolver's threads are detached).
std::mutex g_mu;
std::condition_variable g_cv;
bool g_release = false;
std::atomic<int> g_calls{0};

std::string hang_until_released(const std::string&, sockaddr_storage&, socklen_t&) {
  ++g_calls;
  std::unique_lock lk(g_mu);
  g_cv.wait(lk, [] { return g_release; });
  return "released late";
}

std::string answer_192_0_2_x(const std::string& host, sockaddr_storage& addr, socklen_t& len) {
  if (host == "bad.example") return "Name or service not known";
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  inet_pton(AF_INET, host == "a.example" ? "192.0.2.1" : "192.0.2.2", &sin.sin_addr);
  std::memcpy(&addr, &sin, sizeof sin);
  len = sizeof sin;
  return {};
}

}  // namespace

TEST_CASE("host resolver: answers every name on the loop, failures included", "[resolver]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  HostResolver::Answers got;
  int calls = 0;
  {
    HostResolver r(&loop, answer_192_0_2_x);
    r.start({"a.example", "b.example", "bad.example", "a.example"}, std::chrono::seconds(10),
            [&](HostResolver::Answers a) {
              ++calls;
              got = std::move(a);
            });
    CHECK(r.busy());
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_FALSE(r.busy());
  }
  CHECK(calls == 1);
  REQUIRE(got.size() == 3);
  CHECK(got["a.example"].error.empty());
  CHECK(got["a.example"].len == sizeof(sockaddr_in));
  CHECK(got["b.example"].error.empty());
  CHECK(got["bad.example"].error == "Name or service not known");
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("host resolver: a lookup that hangs fails at the deadline and never holds the loop", "[resolver]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  HostResolver::Answers got;
  int calls = 0;
  {
    HostResolver r(&loop, hang_until_released);
    r.start({"slow.example"}, std::chrono::milliseconds(50), [&](HostResolver::Answers a) {
      ++calls;
      got = std::move(a);
    });
    uv_run(&loop, UV_RUN_DEFAULT);  // returns once the deadline fired and the handles closed

    // Cancelled: the callback never runs, the loop is free at once.
    r.start({"other.example"}, std::chrono::seconds(60), [&](HostResolver::Answers) { ++calls; });
    r.cancel();
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  CHECK(calls == 1);
  REQUIRE(got.count("slow.example"));
  CHECK(got["slow.example"].error == "no answer within 50ms");
  CHECK(uv_loop_close(&loop) == 0);
  {
    std::lock_guard lk(g_mu);
    g_release = true;  // the abandoned lookups end; their answers are dropped
  }
  g_cv.notify_all();
  // The lookup did run (its detached thread may start late on a loaded
  // machine, even after the deadline fired).
  CHECK(lb::test::wait_until([] { return g_calls.load() >= 1; }, lb::test::in(std::chrono::seconds(30))));
}
